"""The context-only views side by side: bg_only under every fill beside outside_crop, with the
ratios to the baseline and whether their verdicts agree (docs/als.md, "Context-only views")."""

from __future__ import annotations

from typing import Any

from als_det.metrics.comparison import direction
from als_det.report.headline import chance_note
from als_det.report.tables import cell, lookup, markdown_table, with_interval
from als_det.views import FILLS, unfilled_context_views


def _direction(h: dict[str, Any] | None, key: str = "ratio_relative_to_val") -> str:
    return direction((h or {}).get("intervals_95", {}).get(key)) or "no interval"


def fill_section(metrics: dict[str, Any]) -> list[str]:
    """bg_only under every fill beside outside_crop (no fill): the confidences, the ratios to the
    baseline with their intervals, and whether the verdicts agree. Empty without fills."""
    fills = metrics.get("fills") or {}
    models, comps = metrics["models"], fills.get("comparisons", {})
    baseline = metrics["headline"]["baseline"]
    names = list(models)
    order = [f for f in FILLS if all(f in models[n].get("bg_only_by_fill", {}) for n in names)]
    if len(order) < 2:
        return []
    unfilled = unfilled_context_views()
    cols = [f"bg_only, {f} fill" + (" (headline)" if f == fills["primary"] else "") for f in order]
    cols += [f"{v} (no fill)" for v in unfilled]
    head = metrics["headline"]["comparisons"]

    def by_col(n: str) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        """(the model's summary, its comparison with the baseline) per column."""
        return [(models[n]["bg_only_by_fill"][f], comps.get(n, {}).get(f)) for f in order] + [
            (models[n]["variants"].get(v), head.get(n, {}).get(v)) for v in unfilled
        ]

    rows = []
    for n in names:
        val = models[n]["val"]["mean_confidence"]
        rows.append(
            [
                f"{n}: mean confidence",
                *(cell(lookup(v or {}, "mean_confidence"), ".3f") for v, _ in by_col(n)),
            ]
        )
        rows.append(
            [
                f"{n}: / own val confidence",
                *(
                    cell(v["mean_confidence"] / val if v and v.get("n") else None, ".3f")
                    for v, _ in by_col(n)
                ),
            ]
        )
    sentences = []
    for n in (n for n in names if n != baseline):
        cells = by_col(n)
        rows.append(
            [f"{n} / {baseline}: absolute", *(with_interval(h, "ratio_absolute") for _, h in cells)]
        )
        rows.append(
            [
                f"{n} / {baseline}: relative to own val",
                *(with_interval(h, "ratio_relative_to_val") for _, h in cells),
            ]
        )
        chance = chance_note(models, [n, baseline])
        words = ["at chance" if chance else _direction(h) for _, h in cells]
        rows.append([f"{n} vs {baseline}: context reliance", *words])
        if chance:
            sentences.append(f"- {n} vs {baseline}: {chance}")
        elif len(set(words)) == 1:
            sentences.append(
                f"- {n} vs {baseline}: every fill and {' and '.join(unfilled)} agree (relative "
                f"to own val confidence: {words[0]})."
            )
        else:
            said = ", ".join(f"{c.split(' (')[0]} says {w}" for c, w in zip(cols, words))
            sentences.append(
                f"- {n} vs {baseline}: **the verdict depends on the fill** ({said}); bg_only alone "
                "does not settle whether it relies on context less."
            )
    return [
        "### bg_only under each fill",
        "",
        "The same images with the labelled boxes filled black, with the normalisation mean, or "
        "with a blur of the image, beside `outside_crop` (context without any fill). Each fill "
        "adds or leaks something (docs/als.md, \"Context-only views\"); a verdict that changes "
        "with the fill is not a verdict. lower / alike / higher: the 95% interval of the relative "
        "ratio lies below 1 / includes 1 / lies above 1; at chance: a model at or near chance on "
        'val, no verdict (docs/als.md, "No verdict from a model at or near chance").',
        "",
        markdown_table(rows, ["", *cols], colalign=("left",) + ("right",) * len(cols)),
        "",
        *sentences,
    ]
