"""`make demo` at the smallest sizes: every stage runs through its real entry point, so a broken
hand-off between stages (checkpoint -> evaluate, checkpoint -> convert -> fine-tune -> compare)
fails here. A second run must reuse every finished stage."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from als_det.pipeline import ARMS


@pytest.mark.slow
def test_demo_pipeline_smoke_and_resume(tmp_path, repo_root):
    out = tmp_path / "demo"
    cmd = [sys.executable, str(repo_root / "tools" / "demo.py"), "--smoke", "--out", str(out)]
    first = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    # every stage left its output, and they fit together
    for arm in ARMS:
        ckpt = out / "pretrain" / arm / "last.pth"
        assert ckpt.is_file()
        assert (out / "pretrained" / f"{arm}.pkl").is_file()
        results = json.loads((out / "detection" / arm / "results.json").read_text())
        assert results["backbone"]["label_strategy"]["name"] == arm
        assert results["backbone"]["path"] == str(out / "pretrained" / f"{arm}.pkl")
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert sorted(metrics["models"]) == sorted(ARMS)
    assert all(m["label_strategy"]["name"] == name for name, m in metrics["models"].items())
    comparison = json.loads((out / "compare" / "comparison.json").read_text())
    assert comparison  # written by tools/compare.py from the three results.json

    report = (out / "report.md").read_text()
    for section in ("## Pretraining", "## Classification, calibration and context reliance",
                    "## Detection transfer", "evaluation/report.md"):
        assert section in report
    for line in report.splitlines():  # every figure the page links exists
        if line.startswith("![") and "](" in line:
            assert (out / line.split("](", 1)[1].rstrip(")")).is_file(), line
    assert "Classification / calibration / context" in first.stdout
    assert "Detection AP" in first.stdout
    assert str(out / "report.md") in first.stdout

    # a second run reuses every stage
    second = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    reused = [ln for ln in second.stdout.splitlines() if "done earlier, reused" in ln]
    assert len(reused) == 3 + 1 + 3 + 3 + 1, second.stdout[-3000:]
    assert "pretrain.py --config" not in second.stdout
