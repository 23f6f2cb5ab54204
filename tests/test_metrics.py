"""Calibration metrics against torchmetrics and direct formulas."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from als_det.metrics import (
    calibration_metrics,
    calibration_metrics_from_logits,
    fit_temperature,
    split_indices,
    temperature_degeneracy,
    temperature_scaling_report,
)
from als_det.metrics.calibration import TemperatureFit


def _random(n: int, k: int, seed: int, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * scale, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("seed,k", [(0, 10), (1, 3), (2, 100)])
def test_ece_and_mce_match_torchmetrics(seed: int, k: int) -> None:
    logits, labels = _random(3000, k, seed)
    probs = logits.softmax(1)
    m = calibration_metrics(probs, labels, n_bins=15)
    ece = MulticlassCalibrationError(num_classes=k, n_bins=15, norm="l1")(probs, labels)
    mce = MulticlassCalibrationError(num_classes=k, n_bins=15, norm="max")(probs, labels)
    assert m["ece"] == pytest.approx(float(ece), abs=1e-5)
    assert m["mce"] == pytest.approx(float(mce), abs=1e-5)


def test_perfectly_calibrated_predictor_has_small_ece() -> None:
    logits, _ = _random(200_000, 5, seed=3)
    probs = logits.softmax(1)
    labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(4)).squeeze(1)
    m = calibration_metrics(probs, labels)
    assert m["ece"] < 0.01
    assert m["ace"] < 0.01


def test_confident_and_wrong_predictor_has_ece_near_one() -> None:
    n, k = 1000, 10
    labels = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(5))
    wrong = (labels + 1) % k
    probs = torch.full((n, k), 1e-4 / (k - 1))
    probs[torch.arange(n), wrong] = 1 - 1e-4
    m = calibration_metrics(probs, labels)
    assert m["top1"] == 0.0
    assert m["ece"] == pytest.approx(1 - 1e-4, abs=1e-6)
    assert m["mce"] == pytest.approx(1 - 1e-4, abs=1e-6)
    assert m["ace"] == pytest.approx(1 - 1e-4, abs=1e-6)
    assert sum(m["bins"]["counts"]) == n and m["bins"]["counts"][-1] == n


def test_brier_nll_topk_on_a_tiny_example() -> None:
    probs = torch.tensor([[0.65, 0.25, 0.1], [0.1, 0.35, 0.55]])
    labels = torch.tensor([0, 1])
    m = calibration_metrics(probs, labels, n_bins=10)
    brier = ((0.65 - 1) ** 2 + 0.25**2 + 0.1**2 + 0.1**2 + (0.35 - 1) ** 2 + 0.55**2) / 2
    assert m["brier"] == pytest.approx(brier, abs=1e-6)
    assert m["nll"] == pytest.approx(-(math.log(0.65) + math.log(0.35)) / 2, abs=1e-6)
    assert m["top1"] == 0.5 and m["top5"] == 1.0  # K=3 < 5: every label is within the top 3
    # Confidences 0.65 (correct) and 0.55 (wrong) fall in bins (0.6, 0.7] and (0.5, 0.6].
    assert m["bins"]["counts"][6] == 1 and m["bins"]["counts"][5] == 1
    assert m["bins"]["accuracy"][6] == 1.0 and m["bins"]["accuracy"][5] == 0.0
    assert m["bins"]["accuracy"][0] is None
    assert m["ece"] == pytest.approx((0.35 + 0.55) / 2, abs=1e-6)


def test_top5_counts_labels_ranked_up_to_fifth() -> None:
    probs = torch.tensor([[0.3, 0.25, 0.2, 0.1, 0.08, 0.07], [0.3, 0.25, 0.2, 0.1, 0.08, 0.07]])
    m = calibration_metrics(probs, torch.tensor([4, 5]))
    assert m["top5"] == 0.5 and m["top1"] == 0.0


def test_adaptive_ece_uses_equal_mass_bins() -> None:
    # Two bins of two samples: confidences {0.6, 0.6} both right, {0.9, 0.9} both wrong.
    probs = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1], [0.9, 0.1]])
    labels = torch.tensor([0, 0, 1, 1])
    m = calibration_metrics(probs, labels, n_bins=2)
    assert m["ace"] == pytest.approx((2 * 0.4 + 2 * 0.9) / 4, abs=1e-6)


def test_logits_entry_matches_probs_entry_and_exact_nll() -> None:
    logits, labels = _random(500, 7, seed=6, scale=4.0)
    a = calibration_metrics_from_logits(logits, labels)
    b = calibration_metrics(logits.softmax(1), labels)
    for key in ("top1", "top5", "brier", "ece", "mce", "ace"):
        assert a[key] == pytest.approx(b[key], abs=1e-5)
    assert a["nll"] == pytest.approx(float(F.cross_entropy(logits, labels)), abs=1e-5)


def test_bad_input_is_rejected() -> None:
    logits, labels = _random(10, 4, seed=7)
    with pytest.raises(ValueError, match="calibration_metrics_from_logits"):
        calibration_metrics(logits, labels)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        calibration_metrics(logits.softmax(1), labels + 4)
    with pytest.raises(ValueError, match="labels must be"):
        calibration_metrics(logits.softmax(1), labels[:5])


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    logits, _ = _random(20_000, 10, seed=8)
    labels = torch.multinomial(
        logits.softmax(1), 1, generator=torch.Generator().manual_seed(9)
    ).squeeze(1)
    # The model's logits are 3x too large: the optimal temperature is 3.
    fit = fit_temperature(3 * logits, labels)
    assert fit.temperature == pytest.approx(3.0, rel=0.05) and fit.converged and fit.iterations > 0
    report = temperature_scaling_report(3 * logits, labels, fit_fraction=0.5, seed=0)
    assert not report["degenerate"] and report["reason"] is None
    assert report["n_fit"] + report["n_eval"] == 20_000
    assert report["after"]["ece"] < report["before"]["ece"]
    assert report["after"]["nll"] < report["before"]["nll"]
    assert report["after"]["top1"] == report["before"]["top1"]


def _with_margin(n: int, k: int, margin: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits whose true class is raised by `margin` (lowered, if negative)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g)
    logits[torch.arange(n), labels] += margin
    return logits, labels


@pytest.mark.parametrize(
    "margin, constant, reason",
    [
        (
            5.0,
            False,
            "every prediction of the 100 fit images is right",
        ),  # separable: T -> 0, no finite optimum
        (
            20.0,
            False,
            "every prediction of the 100 fit images is right",
        ),  # saturated: LBFGS does not even move
        (
            -3.0,
            False,
            r"T = \S+ > 100: NLL keeps falling as T grows",
        ),  # worse than a guess: T -> infinity
        (0.0, True, "NLL does not change with T"),  # constant logits: T undetermined
    ],
)
def test_degenerate_temperature_fit_is_flagged_and_logged(margin, constant, reason, caplog) -> None:
    logits, labels = _with_margin(200, 5, margin, seed=5)
    if constant:
        logits = torch.ones_like(logits)
    with caplog.at_level("WARNING", logger="als_det.metrics.calibration"):
        report = temperature_scaling_report(logits, labels)
    assert report["degenerate"] and re.search(reason, report["reason"])
    assert any("temperature scaling is degenerate" in r.getMessage() for r in caplog.records)
    json.dumps(report, allow_nan=False)  # metrics.json stays strict JSON


def test_sound_temperature_fit_is_not_flagged(caplog) -> None:
    logits, labels = _with_margin(400, 5, 1.5, seed=6)
    with caplog.at_level("WARNING", logger="als_det.metrics.calibration"):
        report = temperature_scaling_report(logits, labels)
    assert not report["degenerate"] and report["reason"] is None and report["converged"]
    assert 0.01 < report["temperature"] < 100 and not caplog.records


def test_degeneracy_of_non_finite_out_of_range_and_unconverged_fits() -> None:
    logits, labels = _with_margin(50, 4, 0.5, seed=7)
    assert not bool((logits.argmax(1) == labels).all())
    assert (
        temperature_degeneracy(TemperatureFit(float("inf"), 30, True), logits, labels)
        == "the fitted temperature is not finite"
    )
    assert "< 0.01" in temperature_degeneracy(TemperatureFit(0.001, 30, True), logits, labels)
    assert "did not converge" in temperature_degeneracy(
        TemperatureFit(1.3, 100, False), logits, labels
    )
    assert temperature_degeneracy(TemperatureFit(1.3, 12, True), logits, labels) is None


def test_split_is_seeded_and_disjoint() -> None:
    a, b = split_indices(100, 0.3, seed=1)
    a2, _ = split_indices(100, 0.3, seed=1)
    assert torch.equal(a, a2) and len(a) == 30
    assert sorted(torch.cat([a, b]).tolist()) == list(range(100))


def test_t_quantiles_match_the_standard_table_and_the_cauchy_closed_form() -> None:
    from als_det.metrics.intervals import t_quantile

    # two-sided 95% critical values of any t table (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
    for df, value in ((2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)
    for p in (0.6, 0.9, 0.99):  # df = 1 is Cauchy
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-7)
    assert t_quantile(0.975, 10_000) == pytest.approx(1.95996, abs=1e-3)  # the normal limit
    with pytest.raises(ValueError):
        t_quantile(0.3, 2)


def test_t_interval_covers_the_mean_at_its_level_with_three_seeds() -> None:
    from als_det.metrics.intervals import t_interval

    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(4000):
        _, lo, hi = t_interval(rng.normal(5.0, 2.0, size=3))
        hits += lo <= 5.0 <= hi
    assert 0.94 < hits / 4000 < 0.96
    assert t_interval([1.0]) is None
