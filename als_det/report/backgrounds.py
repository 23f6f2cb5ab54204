"""ImageNet-9 metrics (from als_det.analysis.backgrounds) -> in9_report.md, in9_metrics.json and the
console summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tabulate import tabulate

from als_det.io import atomic_write_json, atomic_write_text
from als_det.report.headline import chance_words

VARIANT_TEXT = {
    "original": "the IN-9 images",
    "only_bg_b": "background only, object's box black",
    "only_bg_t": "background only, object's box tiled with background",
    "no_fg": "object's shape black, rest intact",
    "only_fg": "object alone on black",
    "mixed_same": "object on another image's background of the same class",
    "mixed_rand": "object on a random class's background",
    "mixed_next": "object on the next class's background",
}


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def _rows(metrics: dict[str, Any], key: str, fmt) -> list[list[str]]:
    models, ref = metrics["models"], metrics["reference"]
    rows = []
    for v in metrics["data"]["variants"]:
        row = [f"{v} ({VARIANT_TEXT[v]})"]
        if key == "accuracy":
            row.append(_pct(ref["accuracy"].get(v)))
        row += [fmt(m["variants"][v].get(key)) for m in models.values()]
        rows.append(row)
    return rows


def chance_note(metrics: dict[str, Any], name: str) -> str | None:
    """The "no verdict" words when model `name` is at or near chance on the original images."""
    original = metrics["models"][name]["variants"].get("original") or {}
    if not original.get("n"):
        return None
    return chance_words(
        {name: (original["accuracy"], original["n"], len(metrics["data"]["classes"]))},
        "the original images",
        "{its} BG-Gap says nothing about reliance on the background",
    )


def gap_sentences(metrics: dict[str, Any]) -> list[str]:
    """Per model, what its BG-Gap says; none from a model at or near chance."""
    ref = metrics["reference"]
    lines = []
    for name, m in metrics["models"].items():
        chance = chance_note(metrics, name)
        if chance:
            lines.append(f"- `{name}`: {chance}")
        elif m["bg_gap"] is not None:
            gap = m["bg_gap"]
            how, than = (
                ("as often", "as")
                if gap == 0
                else (f"{100 * abs(gap):.1f} points {'more' if gap > 0 else 'less'} often", "than")
            )
            lines.append(
                f"- `{name}`: an object is classified correctly {how} on a background of its own "
                f"class {than} on a random class's (BG-Gap {_pct(gap)}; {ref['model']}: "
                f"{_pct(ref['bg_gap'])})."
            )
    return lines


def render_in9_report(metrics: dict[str, Any]) -> str:
    models, data, ref = metrics["models"], metrics["data"], metrics["reference"]
    names = list(models)
    out = [f"# ImageNet-9 backgrounds: {', '.join(names)}", ""]
    out.append(
        f"Data: `{data['root']}`, variants {', '.join(data['variants'])}"
        + (f" (absent: {', '.join(data['missing'])})" if data["missing"] else "")
        + f"; {data['images'].get('original', 0)} original "
        f"images; classes {', '.join(data['classes'])}."
    )
    out.append("")
    out.append(
        "Scored as the Backgrounds Challenge scores (Xiao et al. 2020): top-1 over all model "
        "outputs; a model with other classes than IN-9's goes through `in_to_in9.json`, and a "
        "prediction it maps to -1 counts as wrong. BG-Gap = mixed_same - mixed_rand: how much a "
        "correct object's accuracy depends on its background matching its class."
    )
    out.append("")
    rows = _rows(metrics, "accuracy", _pct)
    gap = ["**BG-Gap** (mixed_same - mixed_rand)", _pct(ref["bg_gap"])]
    gap += [_pct(m["bg_gap"]) for m in models.values()]
    out.append(f"Reference: {ref['model']}, the challenge's published figures.")
    out.append("")
    out.append(
        tabulate(
            rows + [gap],
            headers=["accuracy", "reference"] + names,
            tablefmt="pipe",
            colalign=("left",) + ("right",) * (len(names) + 1),
        )
    )
    out += ["", *gap_sentences(metrics)]
    out += ["", "Mean max-softmax confidence (over the model's own outputs):", ""]
    out.append(
        tabulate(
            _rows(metrics, "mean_confidence", lambda v: "" if v is None else f"{v:.3f}"),
            headers=["confidence"] + names,
            tablefmt="pipe",
        )
    )
    mapped = [n for n, m in models.items() if m["output_mapping"] != "IN-9 classes"]
    if mapped:
        out += ["", "Share of predictions that map to no IN-9 class (counted wrong):", ""]
        out.append(
            tabulate(
                [
                    [r[0]] + [r[1 + names.index(n)] for n in mapped]
                    for r in _rows(metrics, "predicted_outside_in9", _pct)
                ],
                headers=["outside IN-9"] + mapped,
                tablefmt="pipe",
            )
        )
    out += ["", "## Checkpoints", ""]
    out += [
        f"- `{n}`: `{m['checkpoint']['path']}` ({m['checkpoint']['arch']}, "
        f"{m['checkpoint']['num_classes']} classes, {m['label_strategy']['name']}, input "
        f"{m['checkpoint']['image_size']} px; outputs: {m['output_mapping']})"
        for n, m in models.items()
    ]
    undecodable = {
        f"{n}/{v}": s["undecodable"]
        for n, m in models.items()
        for v, s in m["variants"].items()
        if s.get("undecodable")
    }
    if undecodable:
        out += [
            "",
            "Undecodable images, left out: "
            + ", ".join(f"{k} {c}" for k, c in undecodable.items())
            + ".",
        ]
    out += [
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in metrics.get("versions", {}).items()) + ".",
    ]
    return "\n".join(out) + "\n"


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """Per-variant accuracy and BG-Gap of every model, the reference beside them (for the
    console)."""
    ref = metrics["reference"]
    lines = []
    for name, m in metrics["models"].items():
        parts = []
        for v in metrics["data"]["variants"]:
            r = ref["accuracy"].get(v)
            parts.append(
                f"{v} {_pct(m['variants'][v].get('accuracy'))}" + (f" (ref {_pct(r)})" if r else "")
            )
        gap = "n/a (needs mixed_same and mixed_rand)" if m["bg_gap"] is None else _pct(m["bg_gap"])
        if chance_note(metrics, name):
            gap += " (at or near chance on original: no verdict)"
        lines.append(
            f"{name}: "
            + ", ".join(parts)
            + f"; BG-Gap {gap} (ref {_pct(ref['bg_gap'])}, {ref['model']})"
        )
    return lines


def write_in9_report(metrics: dict[str, Any], out_dir: str | Path) -> Path:
    """in9_report.md and in9_metrics.json into `out_dir`; returns the report."""
    atomic_write_json(Path(out_dir) / "in9_metrics.json", metrics)
    return atomic_write_text(Path(out_dir) / "in9_report.md", render_in9_report(metrics))
