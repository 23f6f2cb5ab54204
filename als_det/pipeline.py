"""The `make demo` stage graph: generate -> pretrain x arms x seeds -> evaluate -> convert -> fine-tune
-> compare -> one report.

Each stage runs the user-facing entry point in `tools/` as its own process, exactly as a user would
type it, so the demo proves the hand-offs between stages. A stage that finished is recorded in
`OUT/.stages/<name>.json` with a fingerprint of its command and input files; a second run skips it
while the fingerprint still matches and its outputs exist, and resumes an interrupted training stage.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from als_det.io import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
ARMS = ("hard", "ls", "als")


class StageFailed(RuntimeError):
    pass


@dataclass
class DemoPlan:
    """What `make demo` runs. `smoke` shrinks every stage to a few iterations (for the CI test)."""

    out: Path = Path("demo_output")
    seeds: Sequence[int] = (0,)
    arms: Sequence[str] = ARMS
    pretrain_config: str = "configs/pretrain/demo_{arm}.yaml"
    detection_config: str = "configs/detection/faster_rcnn_R_18_FPN_demo.yaml"
    data_root: Path | None = None  # default: OUT/data
    pretrain_opts: list[str] = field(default_factory=list)
    detection_opts: list[str] = field(default_factory=list)
    eval_args: list[str] = field(default_factory=list)

    def run_name(self, arm: str, seed: int) -> str:
        return arm if len(self.seeds) == 1 else f"{arm}_s{seed}"

    @property
    def data(self) -> Path:
        return self.data_root or self.out / "data"


# Sizes for the end-to-end test: every stage runs, each for a few iterations.
SMOKE_PRETRAIN_OPTS = [
    "SOLVER.EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.BATCH_SIZE", "8",
    "DATA.NUM_WORKERS", "0", "TRAIN.MAX_ITERS_PER_EPOCH", "2",
    "DATA.GEN.TRAIN_PER_CLASS", "4", "DATA.GEN.VAL_PER_CLASS", "2",
    "DATA.GEN.DETECTION_TRAIN", "6", "DATA.GEN.DETECTION_VAL", "4",
]
SMOKE_DETECTION_OPTS = [
    "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0",
]
SMOKE_EVAL_ARGS = ["--max-images", "20", "--grid-images", "2", "--workers", "0"]


def _fingerprint(cmd: Sequence[str], inputs: Sequence[Path]) -> str:
    h = hashlib.sha256(json.dumps([str(c) for c in cmd]).encode())
    for path in inputs:
        h.update(str(path).encode())
        h.update(sha256_file(path).encode() if path.is_file() else b"<missing>")
    return h.hexdigest()


class Stages:
    """Runs stages once: a finished stage is skipped while its command, inputs and outputs stand."""

    def __init__(self, out: Path):
        self.dir = out / ".stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}

    def _marker(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def done(self, name: str, cmd: Sequence[str], inputs: Sequence[Path], outputs: Sequence[Path]) -> bool:
        marker = self._marker(name)
        if not marker.is_file() or not all(p.exists() for p in outputs):
            return False
        return json.loads(marker.read_text()).get("fingerprint") == _fingerprint(cmd, inputs)

    def run(self, name: str, cmd: list[str], inputs: Sequence[Path] = (), outputs: Sequence[Path] = (),
            resume_flag: Sequence[str] = (), can_resume: bool = False, log_file: Path | None = None) -> bool:
        """Run `cmd` unless done; returns True when it ran. `resume_flag` is added when resuming."""
        if self.done(name, cmd, inputs, outputs):
            print(f"[demo] {name}: done earlier, reused", flush=True)
            self.timings[name] = float(json.loads(self._marker(name).read_text()).get("seconds", 0.0))
            return False
        full = cmd + (list(resume_flag) if can_resume else [])
        print(f"[demo] {name}: {shlex.join(full)}" + ("  (resuming)" if can_resume else ""), flush=True)
        start = time.perf_counter()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # Bytes, not lines: progress bars redraw with "\r" and must reach the terminal as they are.
        with open(log_file, "ab") if log_file else open(os.devnull, "wb") as tee:
            proc = subprocess.Popen(full, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert proc.stdout is not None
            while chunk := proc.stdout.read1(65536):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                tee.write(chunk)
            rc = proc.wait()
        elapsed = time.perf_counter() - start
        self.timings[name] = elapsed
        if rc != 0:
            raise StageFailed(f"stage {name} failed (exit {rc}); see {log_file or 'the output above'}. "
                              "Run `make demo` again to resume from the stages that finished.")
        missing = [str(p) for p in outputs if not p.exists()]
        if missing:
            raise StageFailed(f"stage {name} exited 0 but did not write {missing}")
        atomic_write_json(self._marker(name), {"fingerprint": _fingerprint(cmd, inputs), "command": cmd,
                                                "seconds": round(elapsed, 1), "finished": time.time()})
        print(f"[demo] {name}: finished in {elapsed:.0f} s", flush=True)
        return True


def _tool(name: str) -> list[str]:
    return [sys.executable, str(REPO / "tools" / name)]


def _abs(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else (REPO / path)


def run_demo(plan: DemoPlan) -> Path:
    """Run every stage of the demo; returns the path of the combined report."""
    from als_det.config import load_config
    from als_det.data.generated import ensure_generated
    from als_det.report.demo import write_demo_report

    start = time.perf_counter()
    out = _abs(plan.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _abs(plan.data)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    stages = Stages(out)

    # 1. Data: the generated context-bias set, from the demo configs' DATA.GEN (shared by the arms).
    t0 = time.perf_counter()
    gen_cfg = load_config(str(_abs(plan.pretrain_config.format(arm=plan.arms[0]))),
                          plan.pretrain_opts + ["DATA.ROOT", str(data)])
    ensure_generated(data, gen_cfg.DATA.GEN)
    stages.timings["data"] = time.perf_counter() - t0

    # 2. Pretraining: every arm and seed.
    ckpts: dict[str, Path] = {}
    seeds: dict[str, int] = {}
    for seed in plan.seeds:
        for arm in plan.arms:
            name = plan.run_name(arm, seed)
            run_dir = out / "pretrain" / name
            config = _abs(plan.pretrain_config.format(arm=arm))
            cmd = _tool("pretrain.py") + ["--config", str(config), "--opts", "OUTPUT_DIR", str(run_dir),
                                          "SEED", str(seed), "DATA.ROOT", str(data), "DATA.GENERATE", "True",
                                          *plan.pretrain_opts]
            last = run_dir / "last.pth"
            stages.run(f"pretrain_{name}", cmd, inputs=[config], outputs=[last, run_dir / "metrics.jsonl"],
                       resume_flag=["--resume", "last"], can_resume=last.is_file(),
                       log_file=logs / f"pretrain_{name}.log")
            ckpts[name], seeds[name] = last, seed

    # 3. Evaluation: one report over all models.
    eval_dir = out / "evaluation"
    cmd = _tool("evaluate.py") + [a for name, p in ckpts.items() for a in ("--checkpoint", str(p), "--name", name)]
    cmd += ["--data", str(data), "--out", str(eval_dir), "--baseline", plan.run_name("hard", plan.seeds[0])]
    cmd += plan.eval_args
    stages.run("evaluate", cmd, inputs=list(ckpts.values()), outputs=[eval_dir / "metrics.json"],
               log_file=logs / "evaluate.log")

    # 4. Conversion, proven equivalent; 5. fine-tuning from each converted backbone.
    det_root = data / "detection"
    datasets = ["--dataset", f"demo_det_train={det_root}/annotations/instances_train2017.json:{det_root}/train2017",
                "--dataset", f"demo_det_val={det_root}/annotations/instances_val2017.json:{det_root}/val2017",
                "--train-dataset", "demo_det_train", "--test-dataset", "demo_det_val"]
    det_dirs = []
    for name, ckpt in ckpts.items():
        pkl = out / "pretrained" / f"{name}.pkl"
        cmd = _tool("convert_to_d2.py") + [str(ckpt), str(pkl), "--verify", "--force"]
        stages.run(f"convert_{name}", cmd, inputs=[ckpt], outputs=[pkl], log_file=logs / f"convert_{name}.log")

        det_dir = out / "detection" / name
        cmd = _tool("finetune_coco.py") + ["--config-file", str(_abs(plan.detection_config)), *datasets,
                                           "MODEL.WEIGHTS", str(pkl), "OUTPUT_DIR", str(det_dir), "SEED", str(seeds[name]),
                                           *plan.detection_opts]
        stages.run(f"finetune_{name}", cmd, inputs=[pkl, _abs(plan.detection_config)],
                   outputs=[det_dir / "results.json"], resume_flag=["--resume"],
                   can_resume=(det_dir / "last_checkpoint").is_file(), log_file=logs / f"finetune_{name}.log")
        det_dirs.append(det_dir)

    # 6. Comparison of the detectors.
    compare_dir = out / "compare"
    cmd = _tool("compare.py") + [str(d) for d in det_dirs] + ["--baseline", "hard", "--out", str(compare_dir)]
    stages.run("compare", cmd, inputs=[d / "results.json" for d in det_dirs], outputs=[compare_dir],
               log_file=logs / "compare.log")

    # 7. One page. Reused stages report the time they took when they ran.
    stages.timings["total (this run)"] = time.perf_counter() - start
    report, tables = write_demo_report(out, plan, ckpts, eval_dir, det_dirs, compare_dir, stages.timings)
    print("\n" + tables, flush=True)
    print(f"[demo] finished in {stages.timings['total (this run)'] / 60:.1f} min; report: {report}", flush=True)
    return report
