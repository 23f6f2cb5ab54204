#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying `tools/run_experiment.py --launcher slurm`
# without a real cluster (Debian/Ubuntu, as root). Installs Debian's slurm-wlm and munge, writes a
# minimal /etc/slurm/slurm.conf for this host (all its CPUs and 90% of its memory, partition
# `debug`, no accounting database), and starts munged, slurmctld and slurmd.
#   bash scripts/slurm_one_node.sh     (as root; it ends by printing sinfo)
# Stop it again: kill $(cat /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid)
set -euo pipefail

DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null

mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
[ -S /run/munge/munge.socket.2 ] || runuser -u munge -- /usr/sbin/munged

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=${host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
NodeName=${host} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -F /run/slurmctld.pid >/dev/null 2>&1 || slurmctld
pgrep -F /run/slurmd.pid >/dev/null 2>&1 || slurmd
for _ in $(seq 30); do
    sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
    sleep 1
done
sinfo
