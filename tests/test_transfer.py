"""The transfer benchmark: the probe, k-NN, class separation and paired bootstrap on known inputs,
and tools/transfer.py end to end on two tiny pretrained checkpoints and the real downstream
fixture."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import tiny_data_overrides, tool_module

from als_det.analysis.models import LoadedModel
from als_det.analysis.transfer import Cache, DownstreamData, seen_classes
from als_det.experiment.commands import transfer_command
from als_det.metrics.transfer import (
    class_separation,
    fit_logistic,
    knn_predict,
    linear_probe,
    paired_bootstrap,
    stratified_holdout,
)
from als_det.report.transfer import render_transfer_report

REPO = Path(__file__).resolve().parents[1]


def _clusters(k: int, per_class: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features in `k` tight, well-separated clusters (linearly separable), labels 0..k-1."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g, dtype=torch.float64) * 10
    labels = torch.arange(k).repeat_interleave(per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=g, dtype=torch.float64), labels


# ------------------------------------------------------------------------------------------
# linear probe


def test_probe_reaches_100_percent_on_separable_features():
    tx, ty = _clusters(10, 40, 8, seed=0)
    vx, vy = _clusters(10, 20, 8, seed=0)  # the same centres, fresh noise
    vx = vx + 0.1 * torch.randn(
        vx.shape, generator=torch.Generator().manual_seed(1), dtype=vx.dtype
    )
    res = linear_probe(tx, ty, vx, vy, 10, seed=0)
    assert res["top1"] == 1.0 and bool(res["correct"].all())
    assert res["n_fit"] + res["n_holdout"] == 400 and res["n_holdout"] == 80
    assert res["converged"]
    # the val labels choose nothing: with them scrambled, the same C from the same held-out scores
    scrambled = linear_probe(tx, ty, vx, (vy + 1) % 10, 10, seed=0)
    assert scrambled["chosen_c"] == res["chosen_c"]
    assert scrambled["holdout_top1"] == res["holdout_top1"] and scrambled["top1"] == 0.0


def test_probe_on_shuffled_labels_is_at_chance():
    """Labels independent of the features: val top-1 within 0.04 of chance 0.1 (1000 val images:
    the binomial standard deviation is 0.0095, so this is more than 4 of them)."""
    g = torch.Generator().manual_seed(0)
    tx, ty = _clusters(10, 30, 8, seed=0)
    vx, vy = _clusters(10, 100, 8, seed=0)
    ty = ty[torch.randperm(len(ty), generator=g)]
    vy = vy[torch.randperm(len(vy), generator=g)]
    res = linear_probe(tx, ty, vx, vy, 10, seed=0)
    assert abs(res["top1"] - 0.1) < 0.04


def test_logistic_fit_is_the_optimum_of_the_stated_objective():
    """Reference: the hand-derived gradient of 0.5 ||W||^2 / (C N) + mean CE (numpy, not autograd)
    vanishes at the fitted weights, so the fit is the objective's global minimum (convex)."""
    x, y = _clusters(3, 30, 5, seed=2)
    x = x + 5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    c = 0.05
    fit = fit_logistic(x, y, 3, c)
    w, b, xn = fit["weight"].numpy(), fit["bias"].numpy(), x.numpy()
    z = xn @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(3)[y.numpy()]
    n = len(xn)
    grad_w = (p - onehot).T @ xn / n + w / (c * n)
    grad_b = (p - onehot).mean(0)
    assert np.abs(grad_w).max() < 1e-5 and np.abs(grad_b).max() < 1e-5
    assert np.abs(w).max() > 1e-3  # not the trivial zero solution
    # a weaker penalty (larger C) gives larger weights
    assert np.linalg.norm(fit_logistic(x, y, 3, 10 * c)["weight"].numpy()) > np.linalg.norm(w)


def test_holdout_split_is_stratified_seeded_and_disjoint():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    fit, held = stratified_holdout(labels, 0.2, seed=3)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(16))
    assert labels[held].tolist() == [0, 0, 1]  # 2 of 10, 1 of 5, none of a single sample
    again = stratified_holdout(labels, 0.2, seed=3)
    assert torch.equal(again[1], held)
    assert not torch.equal(stratified_holdout(labels, 0.2, seed=4)[1], held)


# ------------------------------------------------------------------------------------------
# k-NN, class separation, paired bootstrap


def _unit(angle_deg: float) -> list[float]:
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


def test_knn_weighted_vote_on_a_hand_made_case():
    """Query at 0 degrees. Neighbours: class 0 at 5 degrees (cosine 0.996), class 1 at 35 and
    -35 degrees (0.819 each), class 2 at 90 degrees (0). With k = 3 the class-2 point does not
    vote; a plain count says class 1 (two votes to one), DINO's weights exp(cos / 0.07) say class
    0 (exp(14.23) > 2 exp(11.70)); with a near-uniform temperature the count wins again. A query
    at 88 degrees has one neighbour of each class among its three: the closest (class 2) wins."""
    bank = torch.tensor([_unit(5), _unit(35), _unit(-35), _unit(90)], dtype=torch.float64)
    bank[1] *= 3.0  # cosine similarity: lengths do not matter
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([_unit(0), _unit(88)], dtype=torch.float64)
    assert knn_predict(bank, labels, query, 3, k=3).tolist() == [0, 2]
    assert knn_predict(bank, labels, query, 3, k=3, temperature=100.0).tolist() == [1, 2]
    assert knn_predict(bank, labels, query, 3, k=1).tolist() == [0, 2]
    # k larger than the bank: every point votes
    assert knn_predict(bank, labels, query[:1], 3, k=50, temperature=100.0).tolist() == [1]


def test_class_separation_known_values():
    eye = torch.eye(4, dtype=torch.float64)
    collapsed = eye.repeat_interleave(5, 0) * 7.0  # each class one direction, orthogonal classes
    labels = torch.arange(4).repeat_interleave(5)
    assert class_separation(collapsed, labels) == pytest.approx(1.0)
    # two classes, half of each class on either of two directions: no separation at all
    mixed = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]], dtype=torch.float64)
    assert class_separation(mixed, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.0)
    assert class_separation(torch.ones(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])) is None


def test_paired_bootstrap_known_cases():
    n = 200
    all_right, all_wrong = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    r = paired_bootstrap(all_right, all_wrong, n_boot=200, seed=0)
    assert r["delta"] == 1.0 and r["interval"] == [1.0, 1.0] and r["n"] == n
    same = torch.rand(n, generator=torch.Generator().manual_seed(0)) > 0.5
    assert paired_bootstrap(same, same, n_boot=200)["interval"] == [0.0, 0.0]
    # b right on 100 images, a on the same plus 20 more: +0.1, every resample >= 0
    b = torch.zeros(n, dtype=torch.bool)
    b[:100] = True
    a = b.clone()
    a[100:120] = True
    r = paired_bootstrap(a, b, n_boot=500, seed=1)
    assert r["delta"] == pytest.approx(0.1)
    assert 0.0 < r["interval"][0] < 0.1 < r["interval"][1]
    assert paired_bootstrap(a, b, n_boot=500, seed=1) == r
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(a, b[:-1])


# ------------------------------------------------------------------------------------------
# tools/transfer.py end to end


@pytest.fixture(scope="module")
def checkpoints(tiny_imagenet: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny pretraining runs (hard, als) on the real-photo fixture: one iteration at 16 px."""
    base = tmp_path_factory.mktemp("transfer_pretrain")
    pretrain = tool_module("pretrain")["main"]
    out = {}
    for strategy in ("hard", "als"):
        run = base / strategy
        rc = pretrain(
            [
                "--config-file",
                str(REPO / f"configs/pretrain/tiny_imagenet_{strategy}.yaml"),
                *tiny_data_overrides(tiny_imagenet, base / "index"),
                "OUTPUT_DIR",
                str(run),
                "SOLVER.EPOCHS",
                "1",
                "SOLVER.WARMUP_EPOCHS",
                "0",
                "SOLVER.BATCH_SIZE",
                "4",
                "TRAIN.MAX_ITERS_PER_EPOCH",
                "1",
                "DATA.MAX_PER_CLASS",
                "2",
            ]
        )
        assert rc == 0
        out[strategy] = run / "last.pth"
    return out


TINY = ["--max-per-class", "4", "--epochs", "1", "--batch-size", "16", "--workers", "0"]


def _transfer(ckpts: dict[str, Path], data: Path, out: Path, *extra: str) -> int:
    args = [a for p in ckpts.values() for a in ("--checkpoint", str(p))]
    return tool_module("transfer")["main"]([*args, "--data", str(data), "--out", str(out), *extra])


@pytest.mark.slow
def test_transfer_tool_end_to_end_and_resume(checkpoints, tiny_imagenet_transfer, tmp_path):
    out = tmp_path / "transfer"
    assert _transfer(checkpoints, tiny_imagenet_transfer, out, *TINY) == 0
    res = json.loads((out / "transfer.json").read_text())
    assert list(res["models"]) == ["hard", "als"]
    assert res["data"]["images"] == {"train": 80, "val": 80} and len(res["data"]["classes"]) == 20
    for name, m in res["models"].items():
        assert m["label_strategy"]["name"] == name and len(m["sha256"]) == 64
        for protocol in ("linear_probe", "knn", "finetune"):
            assert 0.0 <= m[protocol]["top1"] <= 1.0 and m[protocol]["n"] == 80
        assert m["linear_probe"]["chosen_c"] in res["options"]["probe_c_grid"]
        assert m["knn"]["k"] == 20 and m["finetune"]["epochs"] == 1
        assert m["features"] == {"dim": 512, "undecodable": {"train": 0, "val": 0}}
        assert -1.0 <= m["class_separation"]["r2"] <= 1.0
        assert m["pretrained_on_downstream_classes"] == []
    comps = res["comparisons"]
    assert comps["baseline"] == "hard"
    for protocol in ("linear_probe", "knn", "finetune"):
        c = comps["protocols"][protocol]["als"]
        delta = res["models"]["als"][protocol]["top1"] - res["models"]["hard"][protocol]["top1"]
        assert c["delta"] == pytest.approx(delta)
        assert c["interval"][0] <= c["delta"] <= c["interval"][1] and c["n_boot"] == 1000
    report = (out / "report.md").read_text()
    assert "| hard" in report and "| als" in report and "## Differences from hard" in report
    assert "What these numbers do not show" in report
    assert "checkpoint 2/2: als" in (out / "log.txt").read_text()

    # a rerun with another k, hard's fine-tuning result deleted: k-NN and that fine-tuning are
    # recomputed (seeded: the same per-image results), features and probe reused
    cache = out / "cache" / res["models"]["hard"]["sha256"]
    finetuned = json.loads((cache / "finetune.json").read_text())
    (cache / "finetune.json").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert _transfer(checkpoints, tiny_imagenet_transfer, out, *TINY, "--k", "5") == 0
    again = json.loads((out / "transfer.json").read_text())
    assert again["models"]["hard"]["knn"]["k"] == 5
    assert json.loads((cache / "finetune.json").read_text()) == finetuned
    for name in ("hard", "als"):
        for protocol in ("linear_probe", "finetune"):
            assert again["models"][name][protocol] == res["models"][name][protocol]
    changed = {p.name for p in cache.iterdir() if p.stat().st_mtime_ns != stamps.get(p.name)}
    assert changed == {"knn.json", "finetune.json"}

    # one protocol: only it is reported and compared
    assert _transfer(checkpoints, tiny_imagenet_transfer, out, *TINY, "--protocols", "knn") == 0
    only = json.loads((out / "transfer.json").read_text())
    assert set(only["comparisons"]["protocols"]) == {"knn"}
    assert (
        "finetune" not in only["models"]["hard"]
        and "fine-tune" not in (out / "report.md").read_text()
    )


def test_transfer_command_is_the_tools_command_line(checkpoints, tmp_path):
    cmd = transfer_command(
        {"h": str(checkpoints["hard"]), "a": str(checkpoints["als"])},
        "data",
        str(tmp_path),
        "a",
        ["--epochs", "3"],
    )
    assert cmd.tool == "tools/transfer.py" and cmd.launch == "single"
    args = tool_module("transfer")["build_parser"]().parse_args(list(cmd.args))
    assert args.checkpoint == [str(checkpoints["hard"]), str(checkpoints["als"])]
    assert args.name == ["h", "a"] and args.baseline == "a" and args.epochs == 3


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_bad_inputs_end_in_one_error_line_before_any_write(
    checkpoints, tiny_imagenet_transfer, tmp_path, capsys
):
    missing = tmp_path / "nope.pth"
    out = tmp_path / "out"
    assert _transfer({"a": missing}, tiny_imagenet_transfer, out) == 2
    assert f"checkpoint {missing} does not exist" in _one_error_line(capsys)
    no_train = tmp_path / "downstream"
    shutil.copytree(tiny_imagenet_transfer / "val" / "n01774384", no_train / "val" / "n01774384")
    assert _transfer(checkpoints, no_train, out) == 2
    assert "has no train/ folder" in _one_error_line(capsys)
    assert _transfer(checkpoints, tiny_imagenet_transfer, out, "--protocols", "probe") == 2
    assert "--protocols takes some of" in _one_error_line(capsys)
    assert _transfer(checkpoints, tiny_imagenet_transfer, out, "--baseline", "ls") == 2
    assert "--baseline 'ls' is none of the model names" in _one_error_line(capsys)
    assert not out.exists()


def test_downstream_classes_seen_in_pretraining_are_warned_about_and_recorded(caplog):
    lm = LoadedModel("hard", "a.pth", torch.nn.Identity(), {"classes": ["n1", "n2", "n3"]}, None)
    data = DownstreamData(Path("."), ["n0", "n2", "n3", "n9"], [], [], "")
    with caplog.at_level("WARNING"):
        assert seen_classes(lm, data) == ["n2", "n3"]
    assert "hard was pretrained on 2 of the downstream classes (n2, n3)" in caplog.text
    assert seen_classes(lm, DownstreamData(Path("."), ["n7", "n8"], [], [], "")) == []


def test_report_names_seen_classes_and_undecodable_images():
    def model(strategy, seen):
        return {
            "label_strategy": {"name": strategy},
            "pretrained_on_downstream_classes": seen,
            "features": {"dim": 512, "undecodable": {"train": 2, "val": 1}},
            "knn": {"top1": 0.5, "k": 20, "n": 9},
        }

    results = {
        "models": {"hard": model("hard", []), "als": model("als", ["n2"])},
        "comparisons": {
            "baseline": "hard",
            "method": "paired bootstrap",
            "protocols": {"knn": {"als": {"delta": 0.0, "interval": [-0.1, 0.1]}}},
        },
        "data": {"root": "/d", "classes": ["n1", "n2"], "images": {"train": 10, "val": 10}},
        "options": {"k": 20, "knn_temperature": 0.07, "n_boot": 100, "seed": 0},
    }
    report = render_transfer_report(results)
    assert "**als was pretrained on 1 of these classes**" in report
    assert "hard was pretrained" not in report
    assert "2 train and 1 val images could not be decoded" in report
    assert "linear probe" not in report
    # k-NN top-1 0.5 over 2 classes is chance: the difference is shown, with no verdict
    assert re.search(
        r"^\| als +\| k-NN +\| +\+0\.000 \| \[-0\.100, \+0\.100\] \| at chance", report, re.M
    )
    assert "- als vs hard, k-NN: no verdict: als and hard are at or near chance" in report


def test_transfer_differences_state_no_verdict_from_a_model_at_chance():
    """A row per model and protocol; lower / alike / higher from the interval of the difference,
    none where the model or the baseline is at or near chance on the downstream val images."""
    top1 = {"hard": {"knn": 0.6, "finetune": 0.12}, "als": {"knn": 0.7, "finetune": 0.5}}
    results = {
        "models": {
            n: {
                "label_strategy": {"name": n},
                "pretrained_on_downstream_classes": [],
                **{p: {"top1": t, "n": 200} for p, t in by_protocol.items()},
            }
            for n, by_protocol in top1.items()
        },
        "comparisons": {
            "baseline": "hard",
            "method": "paired bootstrap",
            "protocols": {
                "knn": {"als": {"delta": 0.1, "interval": [0.04, 0.16]}},
                "finetune": {"als": {"delta": 0.38, "interval": [0.3, 0.46]}},
            },
        },
        "data": {
            "root": "/d",
            "classes": [f"n{i}" for i in range(10)],
            "images": {"train": 9, "val": 200},
        },
        "options": {
            "k": 20,
            "knn_temperature": 0.07,
            "n_boot": 100,
            "seed": 0,
            "lr": 0.01,
            "weight_decay": 1e-4,
            "batch_size": 8,
            "epochs": 1,
        },
    }
    report = render_transfer_report(results)
    rows = re.findall(
        r"^\| als +\| ([^|]+?) +\| +([^|]+) \| ([^|]+) \| ([^|]+?) +\|$", report, re.M
    )
    assert rows == [
        ("k-NN", "+0.100", "[+0.040, +0.160]", "higher"),
        ("fine-tune", "+0.380", "[+0.300, +0.460]", "at chance"),
    ]
    assert (
        "- als vs hard, fine-tune: no verdict: hard is at or near chance on downstream val by "
        "fine-tune (top-1 hard 12.0%; chance 1/K = 10.0%)" in report
    )
    assert "k-NN: no verdict" not in report


def test_cache_reuses_only_its_own_key_and_recomputes_damaged_entries(tmp_path):
    cache = Cache(tmp_path, "abc", {"data": "d1"})
    calls = []

    def compute():
        calls.append(1)
        return {"top1": 0.5}

    assert cache.json("knn", {"k": 5}, compute) == {"top1": 0.5}
    assert cache.json("knn", {"k": 5}, compute) == {"top1": 0.5} and len(calls) == 1
    assert cache.json("knn", {"k": 6}, compute) and len(calls) == 2
    (tmp_path / "cache" / "abc" / "knn.json").write_text("{not json")
    assert cache.json("knn", {"k": 6}, compute) and len(calls) == 3
    assert Cache(tmp_path, "abc", {"data": "d2"}).json("knn", {"k": 6}, compute) and len(calls) == 4

    arrays = {"train_features": np.ones((2, 3), np.float32)}
    np.savez(tmp_path / "cache" / "abc" / "features.npz", **arrays)  # no key: not reused
    got = cache.arrays("features", lambda: {"train_features": np.zeros((2, 3), np.float32)})
    assert not got["train_features"].any()
    again = cache.arrays("features", lambda: pytest.fail("recomputed a valid cache"))
    assert not again["train_features"].any() and "key" not in again
