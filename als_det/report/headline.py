"""The headline comparisons of an evaluation (`als_det.metrics.context.headline`) in words: one
sentence per model and context-only source, said from the numbers and their intervals."""

from __future__ import annotations

import math
from typing import Any

from als_det.metrics.comparison import direction, near_chance
from als_det.report.tables import MISSING

ONE_CHECKPOINT_EACH = (
    "These are two trained checkpoints: the intervals cover the choice of images, not training "
    "seeds, and another seed can move or flip the direction (a sweep or `make demo SEEDS=3` "
    "measures that spread)."
)


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return MISSING if v is None else format(v, spec)


def _ci(h: dict[str, Any], key: str) -> str:
    iv = h["intervals_95"].get(key)
    return f", 95% CI {iv[0]:.2f}-{iv[1]:.2f}" if iv else ""


def chance_words(
    scores: dict[str, tuple[float, int, int]], on: str, consequence: str
) -> str | None:
    """The words "no verdict: ... at or near chance on `on`" naming every model of `scores`
    (name -> (top-1, images, classes)) that is `near_chance`, then `consequence` ("{its}": its or
    their); None when none is."""
    at = [n for n, s in scores.items() if near_chance(*s)]
    if not at:
        return None
    one = len(at) == 1
    tops = ", ".join(f"{n} {scores[n][0]:.1%}" for n in at)
    return (
        f"no verdict: {' and '.join(at)} {'is' if one else 'are'} at or near chance on {on} "
        f"(top-1 {tops}; chance 1/K = {1 / scores[at[0]][2]:.1%}), so "
        + consequence.format(its="its" if one else "their")
        + "."
    )


def chance_note(models: dict[str, dict[str, Any]], names: list[str]) -> str | None:
    """`chance_words` for the models `names` on val (`models`: metrics.json's models)."""
    val = {n: models[n]["val"] for n in names}
    scores = {n: (v["top1"], v["n"], v["num_classes"]) for n, v in val.items()}
    return chance_words(scores, "val", "{its} confidences say nothing about reliance on context")


def headline_sentence(h: dict[str, Any], models: dict[str, dict[str, Any]]) -> str:
    """What comparison `h` shows; `models`: metrics.json's models (for top-1 and ECE on val)."""
    top1_a, top1_b = models[h["model"]]["val"]["top1"], models[h["baseline"]]["val"]["top1"]
    ece_a, ece_b = models[h["model"]]["val"]["ece"], models[h["baseline"]]["val"]["ece"]
    a, b, s = h["model"], h["baseline"], h["source"]
    ca, cb = h["confidence"][a], h["confidence"][b]
    absolute, val_ratio, rel = (
        h["ratio_absolute"],
        h["ratio_val_confidence"],
        h["ratio_relative_to_val"],
    )
    unchanged = direction(h["intervals_95"].get("ratio_absolute")) == "alike"
    verb = "leaves" if unchanged else ("lowers" if ca < cb else "raises")
    parts = [
        f"{a} {verb} mean {s} confidence {'about unchanged, ' if unchanged else ''}from {cb:.2f} "
        f"({b}) to {ca:.2f} ({ca - cb:+.2f} absolute, ratio "
        f"{_fmt(absolute)}{_ci(h, 'ratio_absolute')}; ratio above chance "
        f"{_fmt(h['ratio_above_chance'])} with K={h['num_classes']})."
    ]
    wa, wb = h["val_confidence"][a], h["val_confidence"][b]
    parts.append(
        f"On intact val its mean confidence is {wa:.2f} vs {wb:.2f} (ratio {val_ratio:.2f}), "
        f"top-1 {top1_a:.1%} vs {top1_b:.1%}, ECE {ece_a:.3f} vs {ece_b:.3f}."
    )
    ra, rb = h["relative_to_val"][a], h["relative_to_val"][b]
    chance = chance_note(models, [a, b])
    parts.append(
        f"Relative to each model's own val confidence, {s}/val is {ra:.2f} for {a} "
        f"and {rb:.2f} for {b} (ratio {rel:.2f}{_ci(h, 'ratio_relative_to_val')})"
        + (f"; {chance}" if chance else ":")
    )
    if chance:
        return " ".join(parts)
    if absolute is not None and absolute < 1 and not unchanged:
        if val_ratio >= 1:
            parts.append(f"none of the {s} drop comes from lower val confidence,")
        else:
            share = math.log(val_ratio) / math.log(absolute)
            parts.append(
                f"the lower val confidence accounts for all of the {s} drop in log terms,"
                if share >= 1
                else "the lower val confidence accounts for "
                f"{share:.0%} of the {s} drop in log terms,"
            )
    word = direction(h["intervals_95"].get("ratio_relative_to_val"))
    if word == "alike":
        parts.append(
            f"so once overall confidence is accounted for, {a} and {b} rely on context alike "
            "(the interval includes 1)."
        )
    elif word == "lower" or (word is None and rel < 1):
        parts.append(
            f"so {a} relies less on context than {b} even after accounting "
            f"for its overall confidence (by a factor {rel:.2f})."
        )
    elif word == "higher":
        parts.append(
            f"so relative to its own val confidence, {a} relies on context more than {b} "
            f"(by a factor {rel:.2f})."
        )
    else:
        parts.append(
            "so once its overall confidence is accounted "
            f"for, {a} relies on context no less than {b}."
        )
    parts.append(ONE_CHECKPOINT_EACH)
    return " ".join(parts)


def add_sentences(metrics: dict[str, Any]) -> None:
    """Give every headline comparison of `metrics` its `sentence` (as metrics.json records it)."""
    for by_source in metrics["headline"]["comparisons"].values():
        for h in by_source.values():
            h["sentence"] = headline_sentence(h, metrics["models"])
