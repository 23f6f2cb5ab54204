"""The context-only views side by side, none singled out: bg_only under every fill beside
outside_crop, with the ratios to the baseline, the verdict in each view and whether the verdicts
agree (docs/als.md, "Context-only views")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from als_det.metrics.comparison import direction
from als_det.report.headline import chance_note
from als_det.report.tables import cell, interval_cell, lookup, markdown_table
from als_det.views import FILLS, PRIMARY, unfilled_context_views

VERDICTS = ("lower", "alike", "higher")
RATIO_HEADERS = [
    "comparison",
    "view",
    "absolute",
    "95% interval",
    "relative to own val",
    "95% interval",
    "verdict",
]


def fill_title(fill: str) -> str:
    """bg_only under `fill`, in every table and figure."""
    return f"{PRIMARY}, {fill} fill"


def unfilled_title(view: str) -> str:
    """A context-only view without fill (outside_crop), in every table and figure."""
    return f"{view} (no fill)"


def view_confidences(model: dict[str, Any]) -> dict[str, float | None]:
    """A model's mean confidence in each context-only view of the val images (None without
    images), by title: bg_only under every fill it ran under, then outside_crop."""
    by_fill = model.get("bg_only_by_fill", {})
    views = [(fill_title(f), by_fill[f]) for f in FILLS if f in by_fill]
    views += [(unfilled_title(v), model["variants"].get(v)) for v in unfilled_context_views()]
    return {title: lookup(v or {}, "mean_confidence") for title, v in views}


def agreement(label: str, words: Mapping[str, str]) -> str:
    """One line on comparison `label` from its verdict in each view (view -> lower / alike /
    higher, or why there is none): consistent across views, or depends on the view."""
    said = "; ".join(f"{view}: {word}" for view, word in words.items())
    found = set(words.values())
    if not found <= set(VERDICTS):
        return f"- {label}: not every view has a verdict ({said}), so there is no overall one."
    if len(found) == 1:
        return (
            f"- {label}: **consistent across views**: {found.pop()} in every one (context-only "
            "confidence relative to own val confidence)."
        )
    return (
        f"- {label}: **depends on the view** ({said}); no single view settles whether it relies "
        "on context less."
    )


def ratio_cells(h: dict[str, Any] | None, key: str, spec: str = ".3f") -> list[str]:
    """A ratio of comparison `h` and its interval, as two cells."""
    return [cell(lookup(h or {}, key), spec), interval_cell(lookup(h or {}, "intervals_95", key))]


def fill_section(metrics: dict[str, Any]) -> list[str]:
    """bg_only under every fill beside outside_crop (no fill): each model's confidences, then one
    row per comparison and view (the ratios to the baseline, their intervals, the verdict), and
    whether the verdicts agree. Empty without fills."""
    fills = metrics.get("fills") or {}
    models, comps = metrics["models"], fills.get("comparisons", {})
    baseline = metrics["headline"]["baseline"]
    names = list(models)
    order = [f for f in FILLS if all(f in models[n].get("bg_only_by_fill", {}) for n in names)]
    if len(order) < 2:
        return []
    unfilled = unfilled_context_views()
    titles = [fill_title(f) for f in order] + [unfilled_title(v) for v in unfilled]
    head = metrics["headline"]["comparisons"]

    def by_view(n: str) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        """(the model's summary, its comparison with the baseline) per view."""
        return [(models[n]["bg_only_by_fill"][f], comps.get(n, {}).get(f)) for f in order] + [
            (models[n]["variants"].get(v), head.get(n, {}).get(v)) for v in unfilled
        ]

    confidences = []
    for n in names:
        val = models[n]["val"]["mean_confidence"]
        confidences.append(
            [
                f"{n}: mean confidence",
                *(cell(lookup(v or {}, "mean_confidence"), ".3f") for v, _ in by_view(n)),
            ]
        )
        confidences.append(
            [
                f"{n}: / own val confidence",
                *(
                    cell(v["mean_confidence"] / val if v and v.get("n") else None, ".3f")
                    for v, _ in by_view(n)
                ),
            ]
        )
    ratios, sentences = [], []
    for n in (n for n in names if n != baseline):
        chance = chance_note(models, [n, baseline])
        words = {}
        for title, (_, h) in zip(titles, by_view(n)):
            rel = lookup(h or {}, "intervals_95", "ratio_relative_to_val")
            words[title] = "at chance" if chance else direction(rel) or "no interval"
            ratios.append(
                [
                    f"{n} / {baseline}",
                    title,
                    *ratio_cells(h, "ratio_absolute"),
                    *ratio_cells(h, "ratio_relative_to_val"),
                    words[title],
                ]
            )
        label = f"{n} vs {baseline}"
        sentences.append(f"- {label}: {chance}" if chance else agreement(label, words))
    return [
        "### Every context-only view: bg_only under each fill, and outside_crop",
        "",
        "The same images with the labelled boxes filled black, with the normalisation mean, or "
        "with a blur of the image, beside `outside_crop` (context without any fill). Each view "
        'adds or leaks something of its own (docs/als.md, "Context-only views"), so none is the '
        "measure of context reliance: a verdict that changes with the view is not a verdict.",
        "",
        "Mean max-softmax confidence, and the same over the model's own confidence on intact val:",
        "",
        markdown_table(confidences, ["", *titles], colalign=("left",) + ("right",) * len(titles)),
        "",
        f"Each model over the baseline `{baseline}`; 95% interval: "
        f"{metrics['headline'].get('interval_method', 'bootstrap')}. Verdict: the interval of "
        "the relative ratio lies below 1 (lower) / includes "
        "1 (alike) / lies above 1 (higher); at chance: a model at or near chance on val, no "
        'verdict (docs/als.md, "No verdict from a model at or near chance").',
        "",
        markdown_table(
            ratios, RATIO_HEADERS, colalign=("left", "left") + ("right",) * 4 + ("left",)
        ),
        "",
        *sentences,
    ]
