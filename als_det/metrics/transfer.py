"""Transfer measurements on frozen features, in numbers: a linear probe, k-NN accuracy, class
separation, and paired bootstrap intervals between two models' per-image correctness. Each runs
on the device its features are on; per-image results come back on the CPU.

- Linear probe: multinomial logistic regression with an L2 penalty on the weights (not the bias),
  fitted by L-BFGS (strong Wolfe line search, float64; each C of the grid, in increasing order,
  starts from the previous C's solution) on features standardised with the fitting set's mean
  and standard deviation. The penalty is spelled as scikit-learn's `C` (objective
  ``0.5 * ||W||^2 + C * sum of cross entropies``), chosen from `PROBE_C_GRID` by accuracy on a
  seeded, class-stratified held-out part of the train features (ties: the lower held-out cross
  entropy), then refitted on all train features. The evaluation features never choose anything.
- k-NN: DINO's weighted vote (`eval_knn.py`, after Wu et al.'s instance discrimination): cosine
  similarity to every train feature, the `k` most similar vote for their class with weight
  ``exp(similarity / temperature)``, the class with the largest sum wins (ties: the lowest class
  index).
- Class separation (Kornblith et al. 2021): ``R^2 = 1 - mean within-class cosine distance / mean
  overall cosine distance``, both class-balanced averages over all pairs (self pairs included), in
  closed form from the class means of the L2-normalised features.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

PROBE_C_GRID = tuple(10.0**e for e in range(-4, 4))
PROBE_HOLDOUT_FRACTION = 0.2
PROBE_MAX_ITER = 1000
PROBE_TOLERANCE_GRAD = 1e-6
KNN_K = 20
KNN_TEMPERATURE = 0.07
BOOTSTRAP_METHOD = (
    "percentile bootstrap of the difference in top-1, resampling the downstream val images with "
    "replacement, paired across models; it covers the choice of images only, not the variance "
    "between pretraining or fine-tuning seeds"
)


def _check(features: Tensor, labels: Tensor, what: str) -> None:
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{what}: features [N, D] and labels [N] expected, got {tuple(features.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if features.shape[0] == 0:
        raise ValueError(f"{what}: no samples")
    if not torch.isfinite(features).all():
        raise ValueError(f"{what}: features hold NaN or infinite values")


def standardize(fit: Tensor, *others: Tensor) -> list[Tensor]:
    """`fit` and `others` shifted and scaled by `fit`'s per-dimension mean and standard deviation
    (dimensions constant on `fit` are only shifted)."""
    mean = fit.mean(0)
    std = fit.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return [(x - mean) / std for x in (fit, *others)]


def fit_logistic(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    c: float,
    max_iter: int = PROBE_MAX_ITER,
    init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Multinomial logistic regression minimising ``0.5 * ||W||^2 + c * sum CE`` (divided by
    ``c * N`` for scale), from zero weights or from `init` (an earlier fit's result: the same
    minimum, reached sooner). Returns {weight [K, D], bias [K], iterations, converged, grad_norm}
    (float64; `grad_norm`: the largest entry of the objective's gradient at the solution)."""
    _check(features, labels, "linear probe")
    if c <= 0:
        raise ValueError(f"C must be > 0, got {c}")
    x = features.double()
    y = labels.long()
    n, d = x.shape
    w = torch.zeros(num_classes, d, dtype=torch.float64, device=x.device)
    b = torch.zeros(num_classes, dtype=torch.float64, device=x.device)
    if init is not None:
        w, b = init["weight"].clone(), init["bias"].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    penalty = 1.0 / (2.0 * c * n)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=PROBE_TOLERANCE_GRAD,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Tensor:
        return torch.nn.functional.cross_entropy(x @ w.T + b, y) + penalty * (w * w).sum()

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    iterations = int(opt.state[opt._params[0]].get("n_iter", 0))
    loss = objective()
    gw, gb = torch.autograd.grad(loss, [w, b])
    grad_norm = float(torch.cat([gw.flatten(), gb]).abs().max())
    return {
        "weight": w.detach(),
        "bias": b.detach(),
        "iterations": iterations,
        "converged": iterations < max_iter,
        "grad_norm": grad_norm,
    }


def predict_logistic(fit: dict[str, Any], features: Tensor) -> Tensor:
    return (features.double() @ fit["weight"].T + fit["bias"]).argmax(1)


def stratified_holdout(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(fit indices, held-out indices): `fraction` of each class (at least one sample of every
    class with two or more), chosen by a generator seeded with `seed`."""
    if not 0 < fraction < 1:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    fit, held = [], []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_held = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        held.append(idx[:n_held])
        fit.append(idx[n_held:])
    return torch.sort(torch.cat(fit)).values, torch.sort(torch.cat(held)).values


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    num_classes: int,
    seed: int = 0,
    c_grid: tuple[float, ...] = PROBE_C_GRID,
    holdout_fraction: float = PROBE_HOLDOUT_FRACTION,
) -> dict[str, Any]:
    """The probe's recipe (module docstring): C chosen on a held-out part of train, refitted on
    all of train, scored on val. Returns top1, chosen_c, holdout_top1 and holdout_nll per C, the
    final fit's iterations/converged, and `correct` (bool per val sample)."""
    _check(train_x, train_y, "linear probe train")
    _check(val_x, val_y, "linear probe val")
    fit_idx, held_idx = stratified_holdout(train_y, holdout_fraction, seed)
    if len(held_idx) == 0:
        raise ValueError("linear probe: every class has a single train sample; nothing to hold out")
    xf, xh = standardize(train_x[fit_idx], train_x[held_idx])
    holdout, holdout_nll, f = {}, {}, None
    yh = train_y[held_idx].long()
    for c in sorted(c_grid):
        f = fit_logistic(xf, train_y[fit_idx], num_classes, c, init=f)
        logits = xh.double() @ f["weight"].T + f["bias"]
        holdout[c] = float((logits.argmax(1) == yh).double().mean())
        holdout_nll[c] = float(torch.nn.functional.cross_entropy(logits, yh))
    chosen = min(holdout, key=lambda c: (-holdout[c], holdout_nll[c], c))
    xt, xv = standardize(train_x, val_x)
    final = fit_logistic(xt, train_y, num_classes, chosen)
    correct = (predict_logistic(final, xv) == val_y).cpu()
    return {
        "top1": float(correct.double().mean()),
        "chosen_c": chosen,
        "holdout_top1": {f"{c:g}": acc for c, acc in holdout.items()},
        "holdout_nll": {f"{c:g}": nll for c, nll in holdout_nll.items()},
        "holdout_fraction": holdout_fraction,
        "n_fit": len(fit_idx),
        "n_holdout": len(held_idx),
        "iterations": final["iterations"],
        "converged": final["converged"],
        "correct": correct,
    }


def knn_predict(
    train_x: Tensor,
    train_y: Tensor,
    query_x: Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk: int = 1024,
) -> Tensor:
    """Predicted class per query by the weighted k-NN vote (module docstring)."""
    _check(train_x, train_y, "k-NN train")
    if k < 1 or temperature <= 0:
        raise ValueError(f"k-NN needs k >= 1 and temperature > 0, got {k} and {temperature}")
    k = min(k, train_x.shape[0])
    bank = torch.nn.functional.normalize(train_x.double(), dim=1)
    query = torch.nn.functional.normalize(query_x.double(), dim=1)
    preds = []
    for start in range(0, query.shape[0], chunk):
        sim = query[start : start + chunk] @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, dtype=torch.float64, device=sim.device)
        votes.scatter_add_(1, train_y[top_idx].long(), (top_sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds).cpu() if preds else torch.zeros(0, dtype=torch.long)


def knn_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> dict[str, Any]:
    correct = knn_predict(train_x, train_y, val_x, num_classes, k, temperature) == val_y.cpu()
    return {
        "top1": float(correct.double().mean()),
        "k": min(k, train_x.shape[0]),
        "temperature": temperature,
        "vote": "weighted by exp(cosine / temperature) (DINO)",
        "correct": correct,
    }


def class_separation(features: Tensor, labels: Tensor) -> float | None:
    """Kornblith's R^2 (module docstring); None when the overall distance is zero (every feature
    points the same way) or there is a single class."""
    _check(features, labels, "class separation")
    z = torch.nn.functional.normalize(features.double(), dim=1)
    means = torch.stack([z[labels == c].mean(0) for c in torch.unique(labels)])
    if len(means) < 2:
        return None
    within = 1.0 - float((means * means).sum(1).mean())
    total = 1.0 - float(means.mean(0).square().sum())
    if total <= 1e-12:
        return None
    return 1.0 - within / total


def paired_bootstrap(
    correct_a: Tensor,
    correct_b: Tensor,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """top1(a) - top1(b) over the same images, with its percentile bootstrap interval (images
    resampled with replacement, the same resample for both)."""
    a, b = correct_a.double(), correct_b.double()
    if a.shape != b.shape or a.ndim != 1 or a.numel() == 0:
        raise ValueError(
            f"paired bootstrap needs per-image results of the same images, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    g = torch.Generator().manual_seed(seed)
    diff = a - b
    samples = []
    for start in range(0, n_boot, 100):
        idx = torch.randint(0, len(diff), (min(100, n_boot - start), len(diff)), generator=g)
        samples.append(diff[idx].mean(1))
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    low, high = (float(v) for v in torch.quantile(torch.cat(samples), q))
    return {
        "delta": float(diff.mean()),
        "interval": [low, high],
        "level": level,
        "n_boot": n_boot,
        "seed": seed,
        "n": len(diff),
    }
