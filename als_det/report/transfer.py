"""The transfer benchmark's files: `transfer.json` (the run's dict as it is) and `report.md` (a
table per measurement, the paired differences against the baseline, and what the numbers do not
show)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from als_det.io import atomic_write_json, atomic_write_text
from als_det.report.headline import chance_words
from als_det.report.tables import MISSING, cell, lookup, markdown_table

PROTOCOL_TITLES = {
    "linear_probe": "linear probe",
    "knn": "k-NN",
    "finetune": "fine-tune",
}

LIMITS = (
    "What these numbers do not show: they are one pretraining run per checkpoint, so the "
    "intervals cover the choice of downstream val images only, not the variance between "
    "pretraining (or fine-tuning) seeds; compare checkpoints of several seeds (the sweep) before "
    "reading a difference as a property of a label strategy. The downstream task is "
    "classification of a small set of other Tiny-ImageNet-like classes at the backbones' own "
    "image size, not detection; the fine-tuning recipe is short and fixed, not tuned per "
    "backbone."
)


def _direction(interval: list[float]) -> str:
    """What the interval of a top-1 difference says: above 0 / includes 0 / below 0."""
    low, high = interval
    return "higher" if low > 0 else ("lower" if high < 0 else "alike")


def _differences(results: dict[str, Any], protocols: list[str]) -> list[str]:
    """A row per model and protocol: the top-1 difference from the baseline, its interval and what
    it says; a model or baseline at or near chance on the downstream val images gets no verdict."""
    models, comps, opts = results["models"], results["comparisons"], results["options"]
    base, k = comps["baseline"], len(results["data"]["classes"])
    rows, notes = [], []
    for name in (n for n in models if n != base):
        for p in protocols:
            c = lookup(comps, "protocols", p, name)
            if c is None:
                rows.append([name, PROTOCOL_TITLES[p], MISSING, MISSING, MISSING])
                continue
            scores = {n: (models[n][p]["top1"], models[n][p]["n"], k) for n in (name, base)}
            chance = chance_words(
                scores,
                f"downstream val by {PROTOCOL_TITLES[p]}",
                "{its} top-1 says nothing about how well the backbone transfers",
            )
            if chance:
                notes.append(f"- {name} vs {base}, {PROTOCOL_TITLES[p]}: {chance}")
            iv = c["interval"]
            rows.append(
                [
                    name,
                    PROTOCOL_TITLES[p],
                    f"{c['delta']:+.3f}",
                    f"[{iv[0]:+.3f}, {iv[1]:+.3f}]",
                    "at chance" if chance else _direction(iv),
                ]
            )
    return [
        f"## Differences from {base}",
        "",
        f"Top-1 minus {base}'s, with 95% intervals: {comps['method']} ({opts['n_boot']} "
        f"resamples, seed {opts['seed']}). Verdict: the interval lies above 0 (higher) / includes "
        "0 (alike) / lies below 0 (lower); at chance: the model or the baseline is at or near "
        "chance on the downstream val images (docs/als.md, \"No verdict from a model at or near "
        'chance"), no verdict.',
        "",
        markdown_table(
            rows,
            ["model", "protocol", f"Δ top-1 vs {base}", "95% interval", "verdict"],
            colalign=("left", "left", "right", "right", "left"),
        ),
        "",
        *notes,
        *([""] if notes else []),
    ]


def render_transfer_report(results: dict[str, Any]) -> str:
    models = results["models"]
    protocols = [p for p in PROTOCOL_TITLES if any(p in m for m in models.values())]
    data = results["data"]
    opts = results["options"]
    lines = [
        "# Transfer",
        "",
        f"Downstream set: `{data['root']}`, {len(data['classes'])} classes, "
        f"{data['images']['train']} train and {data['images']['val']} val images.",
        "",
    ]
    separation = any("class_separation" in m for m in models.values())
    headers = ["model", "strategy", *(f"{PROTOCOL_TITLES[p]} top-1" for p in protocols)]
    headers += ["class separation R²"] if separation else []
    rows = []
    for name, m in models.items():
        row = [name, m["label_strategy"]["name"]]
        row += [cell(lookup(m, p, "top1"), ".3f") for p in protocols]
        row += [cell(lookup(m, "class_separation", "r2"), ".3f")] if separation else []
        rows.append(row)
    lines += [markdown_table(rows, headers), ""]
    for name, m in models.items():
        if m["pretrained_on_downstream_classes"]:
            lines += [
                f"**{name} was pretrained on {len(m['pretrained_on_downstream_classes'])} of "
                "these classes**: for it this is not transfer to unseen classes.",
                "",
            ]
    undecodable = next(
        (m["features"]["undecodable"] for m in models.values() if "features" in m), {}
    )
    if any(undecodable.values()):
        lines += [
            f"{undecodable['train']} train and {undecodable['val']} val images could not be "
            "decoded and were left out of every protocol.",
            "",
        ]
    recipe = []
    if "linear_probe" in protocols:
        recipe.append(
            "linear probe: multinomial logistic regression (L2, L-BFGS) on standardised "
            f"penultimate features, C from {opts['probe_c_grid']} chosen on a held-out "
            f"{opts['probe_holdout_fraction']:.0%} of train (chosen: "
            + ", ".join(
                f"{n} {cell(lookup(m, 'linear_probe', 'chosen_c'), 'g')}" for n, m in models.items()
            )
            + ")"
        )
    if "knn" in protocols:
        recipe.append(
            f"k-NN: cosine similarity, k = {opts['k']}, votes weighted by "
            f"exp(similarity / {opts['knn_temperature']}) (DINO)"
        )
    if "finetune" in protocols:
        recipe.append(
            f"fine-tune: new head, all layers, SGD momentum 0.9, lr {opts['lr']:g} cosine, "
            f"weight decay {opts['weight_decay']:g}, batch {opts['batch_size']}, "
            f"{opts['epochs']} epoch(s), seed {opts['seed']}"
        )
    lines += [f"- {r}" for r in recipe] + [""]
    if len(models) > 1:
        lines += _differences(results, protocols)
    lines += [LIMITS, ""]
    return "\n".join(lines)


def write_transfer(results: dict[str, Any], out_dir: str | Path) -> Path:
    """DIR/transfer.json and DIR/report.md (atomic); returns the report's path."""
    out = Path(out_dir)
    atomic_write_json(out / "transfer.json", results)
    return atomic_write_text(out / "report.md", render_transfer_report(results))
