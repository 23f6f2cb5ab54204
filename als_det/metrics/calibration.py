"""Classification and calibration metrics from probabilities (or logits) and labels.

Knows nothing of models or data: tensors in, plain numbers out (JSON-ready). Everything is
vectorised over samples so ImageNet val (50,000 x 1,000) takes seconds on a CPU.

Definitions
- ``top1``/``top5``: accuracy of the arg-max / of the 5 largest (``min(5, K)`` when K < 5).
- ``nll``: mean ``-log p(y)``; from logits it is computed with ``log_softmax`` (exact).
- ``brier``: multi-class Brier score (Brier 1950), mean over samples of ``sum_k (p_k - y_k)^2``,
  in [0, 2].
- ``ece``: expected calibration error of the top-label confidence with ``n_bins`` equal-width
  bins ``(lo, hi]`` (Guo et al. 2017): ``sum_b n_b / N * |acc_b - conf_b|``.
- ``mce``: maximum calibration error, ``max_b |acc_b - conf_b|`` over non-empty bins.
- ``ace``: adaptive ECE, the same sum over ``n_bins`` equal-mass bins of the sorted confidences.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

_SUM_TOLERANCE = 1e-3
# A fitted temperature outside this range says the fit ran off to T -> 0 or T -> infinity.
TEMPERATURE_RANGE = (0.01, 100.0)


def _check(scores: Tensor, labels: Tensor, what: str) -> None:
    if scores.ndim != 2:
        raise ValueError(f"{what} must be [N, K], got shape {tuple(scores.shape)}")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"labels must be [N] with N={scores.shape[0]}, got shape {tuple(labels.shape)}"
        )
    if scores.shape[0] == 0:
        raise ValueError("calibration metrics need at least one sample")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= scores.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {scores.shape[1]}), got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def _equal_width_bins(conf: Tensor, correct: Tensor, n_bins: int) -> dict[str, Any]:
    """Per-bin counts, accuracy and mean confidence for bins (lo, hi] over [0, 1]."""
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # right=False: boundaries[i-1] < x <= boundaries[i]; 0 falls in the first bin, 1 in the last.
    idx = torch.bucketize(conf, edges[1:-1], right=False)
    counts = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    safe = counts.clamp_min(1.0)
    return {
        "edges": edges,
        "counts": counts,
        "accuracy": acc_sum / safe,
        "confidence": conf_sum / safe,
    }


def _adaptive_ece(conf: Tensor, correct: Tensor, n_bins: int) -> float:
    """ECE over equal-mass bins: sorted confidences cut into n_bins nearly equal groups."""
    n = conf.shape[0]
    order = torch.argsort(conf)
    group = torch.arange(n) * n_bins // n  # sizes differ by at most one
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, group, conf[order])
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, group, correct[order])
    # |sum acc - sum conf| / N == sum_b n_b / N * |acc_b - conf_b|; empty groups contribute 0.
    return float((acc_sum - conf_sum).abs().sum() / n)


def _metrics(probs: Tensor, log_p_true: Tensor, labels: Tensor, n_bins: int) -> dict[str, Any]:
    n, k = probs.shape
    conf, pred = probs.max(dim=1)
    conf = conf.to(torch.float64)
    correct = (pred == labels).to(torch.float64)
    topk = torch.topk(probs, k=min(5, k), dim=1).indices
    top5 = (topk == labels[:, None]).any(dim=1).to(torch.float64)
    p_true = probs.gather(1, labels[:, None]).squeeze(1).to(torch.float64)
    # sum_k (p_k - y_k)^2 = sum_k p_k^2 - 2 p_y + 1, without materialising the one-hot matrix.
    brier = (probs.pow(2).sum(dim=1, dtype=torch.float64) - 2.0 * p_true + 1.0).mean()

    bins = _equal_width_bins(conf, correct, n_bins)
    gaps = (bins["accuracy"] - bins["confidence"]).abs()
    weights = bins["counts"] / n
    nonempty = bins["counts"] > 0
    return {
        "n": n,
        "num_classes": k,
        "top1": float(correct.mean()),
        "top5": float(top5.mean()),
        "nll": float(-log_p_true.to(torch.float64).mean()),
        "brier": float(brier),
        "ece": float((gaps * weights).sum()),
        "mce": float(gaps[nonempty].max()),
        "ace": _adaptive_ece(conf, correct, n_bins),
        "mean_confidence": float(conf.mean()),
        "bins": {
            "edges": bins["edges"].tolist(),
            "counts": [int(c) for c in bins["counts"].tolist()],
            # Empty bins have no accuracy or confidence: None, not a made-up number.
            "accuracy": [
                float(a) if m else None
                for a, m in zip(bins["accuracy"].tolist(), nonempty.tolist())
            ],
            "confidence": [
                float(c) if m else None
                for c, m in zip(bins["confidence"].tolist(), nonempty.tolist())
            ],
        },
    }


@torch.no_grad()
def calibration_metrics(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, Any]:
    """top1, top5, nll, brier, ece, mce, ace, mean_confidence and per-bin reliability data.

    ``probs`` are class probabilities (rows summing to 1); pass logits to
    :func:`calibration_metrics_from_logits` instead. NLL clamps p(y) at 1e-12 (a probability of
    exactly 0 for the true class would otherwise give infinity).
    """
    probs = probs.detach().cpu()
    labels = labels.detach().cpu().long()
    _check(probs, labels, "probs")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if not probs.dtype.is_floating_point:
        raise ValueError(f"probs must be floating point, got {probs.dtype}")
    sums = probs.sum(dim=1, dtype=torch.float64)
    worst = float((sums - 1.0).abs().max())
    if float(probs.min()) < 0.0 or worst > _SUM_TOLERANCE:
        raise ValueError(
            f"probs must be non-negative with rows summing to 1 (worst row sum off by {worst:.3g});"
            " pass logits to calibration_metrics_from_logits"
        )
    log_p_true = (
        probs.gather(1, labels[:, None]).squeeze(1).to(torch.float64).clamp_min(1e-12).log()
    )
    return _metrics(probs, log_p_true, labels, n_bins)


@torch.no_grad()
def calibration_metrics_from_logits(
    logits: Tensor, labels: Tensor, n_bins: int = 15, temperature: float = 1.0
) -> dict[str, Any]:
    """:func:`calibration_metrics` of ``softmax(logits / temperature)``, NLL via log_softmax."""
    logits = logits.detach().cpu()
    labels = labels.detach().cpu().long()
    _check(logits, labels, "logits")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_probs = F.log_softmax(logits.float() / temperature, dim=1)
    log_p_true = log_probs.gather(1, labels[:, None]).squeeze(1)
    return _metrics(log_probs.exp(), log_p_true, labels, n_bins)


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature, the LBFGS iterations it took and whether LBFGS stopped on its
    tolerances (True) or its iteration/evaluation limits (False)."""

    temperature: float
    iterations: int
    converged: bool


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> TemperatureFit:
    """The temperature T > 0 minimising NLL of softmax(logits / T) (Guo et al. 2017), by LBFGS.

    Optimises log T so T stays positive; starts at T = 1. The result may be degenerate (see
    :func:`temperature_degeneracy`); this function only reports what LBFGS found.
    """
    logits = logits.detach().cpu().float()
    labels = labels.detach().cpu().long()
    _check(logits, labels, "logits")
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    state, group = opt.state[log_t], opt.param_groups[0]
    iterations = int(state.get("n_iter", 0))
    converged = iterations < max_iter and int(state.get("func_evals", 0)) < group["max_eval"]
    return TemperatureFit(float(log_t.detach().exp()), iterations, converged)


def temperature_degeneracy(fit: TemperatureFit, logits: Tensor, labels: Tensor) -> str | None:
    """Why the temperature fitted on (`logits`, `labels`) means nothing, or None if it is sound.

    Degenerate: T not finite; outside TEMPERATURE_RANGE (NLL keeps falling towards T -> 0 or
    T -> infinity, so the number is wherever LBFGS gave up); every prediction right (NLL falls
    monotonically as T -> 0: no finite optimum); LBFGS stopped at its start (NLL flat in T) or at
    its iteration limit.
    """
    t, (lo, hi) = fit.temperature, TEMPERATURE_RANGE
    if not math.isfinite(t):
        return "the fitted temperature is not finite"
    if bool((logits.argmax(1) == labels).all()):
        return (
            f"every prediction of the {labels.numel()} fit images is right: NLL falls "
            f"without bound as T -> 0, so T = {t:.3g} is only where LBFGS stopped"
        )
    if t > hi:
        return (
            f"T = {t:.3g} > {hi:g}: NLL keeps falling as T grows (the predictions on the fit "
            "images are no better than a uniform guess), so scaling flattens them towards 1/K"
        )
    if t < lo:
        return (
            f"T = {t:.3g} < {lo:g}: NLL keeps falling as T shrinks; T is only where LBFGS stopped"
        )
    if fit.iterations == 0:
        return (
            "NLL does not change with T on the fit images "
            "(zero gradient at T = 1): T is undetermined"
        )
    if not fit.converged:
        return f"LBFGS did not converge within its limit ({fit.iterations} iterations)"
    return None


def split_indices(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split of range(n): (first `fraction` of a permutation, the rest)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    cut = int(round(n * fraction))
    if cut < 1 or cut >= n:
        raise ValueError(
            f"cannot split {n} samples with fraction {fraction}: one side would be empty"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:cut].sort().values, perm[cut:].sort().values


def temperature_scaling_report(
    logits: Tensor, labels: Tensor, fit_fraction: float = 0.5, seed: int = 0, n_bins: int = 15
) -> dict[str, Any]:
    """Fit T on a seeded held-out part of val, report metrics on the rest before and after.

    A degenerate fit (:func:`temperature_degeneracy`) is logged as a warning and recorded
    (`degenerate`, `reason`); its "after" metrics are still computed with the fitted T (None when
    T is not finite) and mean nothing about calibration.
    """
    logits, labels = logits.detach().cpu(), labels.detach().cpu().long()
    fit_idx, eval_idx = split_indices(logits.shape[0], fit_fraction, seed)
    fit = fit_temperature(logits[fit_idx], labels[fit_idx])
    reason = temperature_degeneracy(fit, logits[fit_idx], labels[fit_idx])
    if reason:
        logger.warning("temperature scaling is degenerate: %s", reason)
    finite = math.isfinite(fit.temperature)
    return {
        "temperature": fit.temperature if finite else None,
        "degenerate": reason is not None,
        "reason": reason,
        "iterations": fit.iterations,
        "converged": fit.converged,
        "fit_fraction": fit_fraction,
        "seed": seed,
        "n_fit": int(fit_idx.numel()),
        "n_eval": int(eval_idx.numel()),
        "before": calibration_metrics_from_logits(logits[eval_idx], labels[eval_idx], n_bins),
        "after": calibration_metrics_from_logits(
            logits[eval_idx], labels[eval_idx], n_bins, temperature=fit.temperature
        )
        if finite
        else None,
    }
