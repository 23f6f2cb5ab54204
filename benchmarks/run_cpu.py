"""Run every CPU benchmark in turn and print one table (`make bench`).

Each benchmark is a script that prints its figure on its last line; this runs them one after the
other (never in parallel: the machine's cores are shared), with the machine's description and
load before and after, and writes benchmarks/out/cpu_benchmarks.json. A missing or failing
benchmark is a row marked as such and makes the exit status non-zero.

Usage: python benchmarks/run_cpu.py [--only NAME,...] [--timeout S] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # als_det.io when run outside the project's venv

from als_det.io import atomic_write_json  # noqa: E402

# name -> (script, what it measures); each prints its figure last.
BENCHMARKS = {
    "data_pipeline": (
        "benchmarks/bench_data_pipeline.py",
        "ALS crop + coverage + target vs plain torchvision crop, same JPEGs (ratio)",
    ),
    "decode": (
        "benchmarks/bench_decode.py",
        "decode + crop + resize per core: workers, device (CPU), prepared, packed copy (coco-mini)",
    ),
    "train_step": (
        "benchmarks/bench_train_step.py",
        "trainer step on CPU, ALS vs hard targets (ratio)",
    ),
    "convert": (
        "benchmarks/bench_convert.py",
        "ResNet-50 conversion to detectron2 + verification time",
    ),
    "metrics": ("benchmarks/bench_metrics.py", "calibration metrics on 50,000 x 1,000 logits"),
    "compile": (
        "benchmarks/bench_compile_cpu.py",
        "TRAIN.COMPILE True (inductor) vs eager trainer, "
        "bf16 + channels_last (compile s, img/s ratio)",
    ),
}


def machine() -> dict[str, object]:
    """nproc, CPU model, RAM, date and load: what a reader needs to compare figures."""
    model = ""
    try:
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in subprocess.run(
                    ["lscpu"], capture_output=True, text=True
                ).stdout.splitlines()
                if line.startswith("Model name")
            ),
            "",
        )
    except FileNotFoundError:
        model = platform.processor()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gib": round(ram, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
    }


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def run_one(script: str, timeout: float) -> dict[str, object]:
    path = REPO / script
    if not path.is_file():
        return {"status": "missing", "figure": f"{script} does not exist", "seconds": 0.0}
    load_before = load()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(path)], cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {
            "status": "timeout",
            "figure": f"no result within {timeout:.0f} s",
            "seconds": round(time.perf_counter() - t0, 1),
            "load_before": load_before,
        }
    seconds = round(time.perf_counter() - t0, 1)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {
            "status": f"failed (exit {proc.returncode})",
            "figure": tail,
            "seconds": seconds,
            "load_before": load_before,
            "stdout": proc.stdout,
            "stderr": proc.stderr[-4000:],
        }
    return {
        "status": "ok",
        "figure": lines[-1].strip(),
        "seconds": seconds,
        "load_before": load_before,
        "load_after": load(),
        "stdout": proc.stdout,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help="comma-separated subset of " + ",".join(BENCHMARKS)
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per benchmark")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "cpu_benchmarks.json"))
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")
    report = {"machine": machine(), "load_at_start": load(), "benchmarks": {}}
    print(
        f"{report['machine']['nproc']} cores, {report['machine']['cpu']}, "
        f"{report['machine']['ram_gib']} GiB, {report['machine']['date']}; load average "
        f"{report['load_at_start']}",
        flush=True,
    )
    for name in names:
        script, what = BENCHMARKS[name]
        print(f"== {name}: {what}", flush=True)
        result = run_one(script, args.timeout)
        report["benchmarks"][name] = {"script": script, "measures": what, **result}
        print(f"   {result['status']}: {result['figure']} ({result['seconds']} s)", flush=True)
        atomic_write_json(args.out, report)
    report["load_at_end"] = load()
    atomic_write_json(args.out, report)
    from tabulate import tabulate

    rows = [
        (n, r["status"], r["figure"], r["seconds"], r.get("load_before", ""))
        for n, r in report["benchmarks"].items()
    ]
    print(
        tabulate(
            rows,
            headers=["benchmark", "status", "figure (last line)", "s", "load before"],
            tablefmt="github",
        )
    )
    print(f"written {args.out}")
    failed = [n for n, r in report["benchmarks"].items() if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"benchmarks not ok: {failed}")


if __name__ == "__main__":
    main()
