"""An evaluation's metrics (`als_det.analysis.evaluate`, with its figures drawn and sentences
added) -> the markdown of report.md, models as columns: `render_report(metrics)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from als_det.report.figures import CAM_METHOD_NAMES
from als_det.report.fills import fill_section, ratio_cells
from als_det.report.tables import MISSING, cell, lookup, markdown_table
from als_det.strategies import get_strategy
from als_det.views import VIEWS, context_sources

FORMS = (
    ("ratio_absolute", "absolute"),
    ("ratio_above_chance", "above chance"),
    ("ratio_relative_to_val", "relative to own val confidence"),
)
Row = tuple[str, Callable[[str], Any], str]  # (label, value of a model name, format)


def _table(names: Sequence[str], rows: Sequence[Row]) -> str:
    """A row per (label, getter(model name), format), a column per model."""
    return markdown_table(
        [[label, *(cell(get(n), spec) for n in names)] for label, get, spec in rows],
        ["", *names],
        colalign=("left",) + ("right",) * len(names),
    )


def _skips(d: dict[str, Any] | None) -> str:
    if not d or not d.get("skipped"):
        return "none"
    items = [f"{k} {v}" for k, v in d["skipped"].items() if v]
    return ", ".join(items) or "none"


def _als_mapping(ls: dict[str, Any]) -> str:
    """Coverage / power, for a strategy that reads them."""
    if "coverage" not in get_strategy(ls["name"]).keys:
        return "-"
    return f"{ls.get('coverage', 'crop')} / {ls.get('power', 1.0)}"


def _mix_alpha(ls: dict[str, Any]) -> str:
    return str(ls["mix_alpha"]) if "mix_alpha" in get_strategy(ls["name"]).keys else "-"


def _figure(metrics: dict[str, Any], key: str, alt: str) -> list[str]:
    """The Markdown lines that show figure `key`, if it was drawn."""
    name = metrics.get("figures", {}).get(key)
    return ["", f"![{alt}]({name})"] if name else []


def _getter(models: dict[str, Any]) -> Callable[..., Callable[[str], Any]]:
    return lambda *keys: lambda n: lookup(models[n], *keys)


def _checkpoints(metrics: dict[str, Any]) -> list[str]:
    models = metrics["models"]
    names, m = list(models), _getter(models)
    table = _table(
        names,
        [
            ("label strategy", m("label_strategy", "name"), ""),
            (
                "epsilon / e_min / e_max",
                lambda n: "{epsilon} / {e_min} / {e_max}".format(**models[n]["label_strategy"]),
                "",
            ),
            ("als coverage / power", lambda n: _als_mapping(models[n]["label_strategy"]), ""),
            ("mix alpha", lambda n: _mix_alpha(models[n]["label_strategy"]), ""),
            ("no-box policy", m("label_strategy", "no_box"), ""),
            ("arch", m("checkpoint", "arch"), ""),
            ("epochs", m("checkpoint", "epoch"), "d"),
            (
                "input size / val resize",
                lambda n: (
                    f"{models[n]['checkpoint']['preprocessing']['image_size']} / "
                    f"{models[n]['checkpoint']['val_resize']}"
                ),
                "",
            ),
            ("sha256", lambda n: models[n]["checkpoint"]["sha256"][:12], ""),
        ],
    )
    return [
        "## Checkpoints",
        "",
        table,
        "",
        *(f"- `{n}`: `{models[n]['checkpoint']['path']}`" for n in names),
    ]


def _temperature(ts: dict[str, Any] | None) -> str:
    if not ts:
        return MISSING
    t = MISSING if ts["temperature"] is None else f"{ts['temperature']:.3g}"
    return f"{t} (degenerate)" if ts.get("degenerate") else t


def _before_after(model: dict[str, Any], key: str) -> str:
    ts = model.get("temperature_scaling")
    if not ts:
        return MISSING
    after = ts["after"][key] if ts.get("after") else None
    return f"{ts['before'][key]:.4f} / {cell(after, '.4f')}"


def _calibration(metrics: dict[str, Any]) -> list[str]:
    models = metrics["models"]
    names, m = list(models), _getter(models)
    out = [
        "## Calibration",
        "",
        "15 equal-width bins on the top-label confidence (ECE, MCE); ACE uses 15 equal-mass bins; "
        "Brier is the multi-class score in [0, 2].",
        "",
    ]
    rows = [
        ("ECE", m("val", "ece"), ".4f"),
        ("MCE", m("val", "mce"), ".4f"),
        ("ACE", m("val", "ace"), ".4f"),
        ("Brier", m("val", "brier"), ".4f"),
        ("mean confidence", m("val", "mean_confidence"), ".3f"),
        (
            "top-1 - mean confidence",
            lambda n: models[n]["val"]["top1"] - models[n]["val"]["mean_confidence"],
            "+.3f",
        ),
    ]
    scaled = [n for n in names if "temperature_scaling" in models[n]]
    if scaled:
        ts = models[scaled[0]]["temperature_scaling"]
        rows += [
            ("temperature T", lambda n: _temperature(models[n].get("temperature_scaling")), ""),
            ("ECE before / after T (held-out part)", lambda n: _before_after(models[n], "ece"), ""),
            ("NLL before / after T (held-out part)", lambda n: _before_after(models[n], "nll"), ""),
        ]
        out += [
            f"Temperature fitted by LBFGS on NLL over a seeded {ts['fit_fraction']:.0%} of val "
            f"(seed {ts['seed']}, {ts['n_fit']} images) and evaluated on the other {ts['n_eval']}.",
            "",
        ]
        out += [
            f"**Degenerate temperature fit for `{n}`**: "
            f"{models[n]['temperature_scaling']['reason']}. Its after-T numbers say nothing about "
            "calibration.\n"
            for n in scaled
            if models[n]["temperature_scaling"].get("degenerate")
        ]
    return [*out, _table(names, rows), *_figure(metrics, "reliability", "reliability diagrams")]


def _context(metrics: dict[str, Any]) -> list[str]:
    models = metrics["models"]
    names, m = list(models), _getter(models)
    out = [
        "## Context-only evaluation",
        "",
        "Mean max-softmax confidence, the fraction of images above 0.5, and accuracy. Where the "
        "object is absent, *context accuracy* is how often the model still predicts the labelled "
        "class from context alone. Images without boxes leave every box variant (counted).",
        "",
    ]
    variants = [v for v in VIEWS if any(v in models[n]["variants"] for n in names)]
    rows = [
        ("intact val: mean confidence", m("val", "mean_confidence"), ".3f"),
        ("intact val: fraction > 0.5", m("val", "frac_confidence_gt_0.5"), ".3f"),
    ]
    for v in variants:
        meaning = "context accuracy" if VIEWS[v].context_only else "accuracy"
        key = "context_accuracy" if VIEWS[v].context_only else "accuracy"
        rows += [
            (
                f"**{v}** ({VIEWS[v].text}): mean confidence",
                m("variants", v, "mean_confidence"),
                ".3f",
            ),
            (f"{v}: fraction > 0.5", m("variants", v, "frac_confidence_gt_0.5"), ".3f"),
            (f"{v}: {meaning}", m("variants", v, key), ".2%"),
            (f"{v}: images", m("variants", v, "n"), "d"),
            (f"{v}: left out", lambda n, v=v: _skips(models[n]["variants"].get(v)), ""),
        ]
        if VIEWS[v].calibration:
            rows += [(f"{v}: ECE", m("variants", v, "ece"), ".4f")]
    return [
        *out,
        _table(names, rows),
        *_figure(metrics, "context_confidence", "confidence on every context-only view"),
    ]


def _where_it_looks(metrics: dict[str, Any]) -> list[str]:
    models = metrics["models"]
    names, m = list(models), _getter(models)
    cam_method = next((models[n]["cam"]["method"] for n in names), "cam")
    out = [
        "## Where the model looks",
        "",
        f"Fraction of the positive {CAM_METHOD_NAMES[cam_method]} energy for the labelled class "
        "(upsampled to the network input) that falls inside the labelled boxes, averaged over "
        "val images with boxes. The box area fraction is what a uniform map would score.",
        "",
    ]
    rows = [
        ("energy inside boxes (val)", m("cam", "mean_energy_inside_boxes"), ".3f"),
        ("box area fraction (val)", m("cam", "mean_box_area_fraction"), ".3f"),
        ("images", m("cam", "n"), "d"),
        ("left out", lambda n: _skips(models[n]["cam"]), ""),
    ]
    for v in (v.name for v in VIEWS.values() if v.calibration):
        if any(lookup(models[n], "variants", v, "cam") for n in names):
            rows += [
                (
                    f"energy inside boxes ({v})",
                    m("variants", v, "cam", "mean_energy_inside_boxes"),
                    ".3f",
                ),
                (
                    f"box area fraction ({v})",
                    m("variants", v, "cam", "mean_box_area_fraction"),
                    ".3f",
                ),
            ]
    return [*out, _table(names, rows), *_figure(metrics, "cam_grid", "class activation maps")]


def _headline(metrics: dict[str, Any]) -> list[str]:
    head = metrics["headline"]
    comps = head["comparisons"]
    out = ["## Context reliance: confidence from context alone, model / baseline", ""]
    if not comps:
        return out + [f"Only the baseline `{head['baseline']}` was evaluated: no ratio to report."]
    out.append(
        "Ratio of mean confidence on context-only images, each model over the baseline "
        f"`{head['baseline']}`, in three forms, for every context-only view (none is the measure: "
        'each adds or leaks something of its own, docs/als.md "Context-only views"). Absolute '
        "alone misleads when a model is less confident everywhere; with few classes the chance "
        "floor 1/K caps any absolute ratio, so `above chance` maps each confidence c to "
        f"(c - 1/K) / (1 - 1/K) first. 95% interval: {head.get('interval_method', 'bootstrap')}."
    )
    fill = metrics["options"]["fill"]
    for source in context_sources():
        rows = [
            [c, *(x for key, _ in FORMS for x in ratio_cells(comps[c][source], key))]
            for c in comps
            if source in comps[c]
        ]
        if not rows:
            continue
        title = f"{source} ({fill} fill)" if VIEWS[source].filled else source
        out += ["", f"### {title}", ""]
        out.append(
            markdown_table(
                rows,
                ["model", *(x for _, label in FORMS for x in (label, "95% interval"))],
                colalign=("left",) + ("right",) * (len(FORMS) * 2),
            )
        )
        out.append("")
        out += [f"- {comps[c][source]['sentence']}" for c in comps if source in comps[c]]
    fills = fill_section(metrics)
    return out + ["", *fills] if fills else out


def render_report(metrics: dict[str, Any]) -> str:
    """The Markdown text of the report (figures referenced by relative links)."""
    models, data = metrics["models"], metrics["data"]
    names, m = list(models), _getter(models)
    out = [
        f"# Evaluation: {', '.join(names)}",
        "",
        f"Data: `{data['root']}` split `{data['split']}`, {data['images_evaluated']} of "
        f"{data['images_in_index']} indexed images evaluated ({data['with_boxes']} with boxes), "
        f"{len(data['classes'])} classes; run on {data['world_size']} process(es), device "
        f"{data['device']}. Fill for box variants: `{metrics['options']['fill']}`."
        + (
            f" Wall time {metrics['wall_time_s']:.0f} s."
            if metrics.get("wall_time_s") is not None
            else ""
        ),
    ]
    shown = data.get("class_names") or data["classes"]
    if len(shown) <= 20:
        out += ["", "Classes: " + ", ".join(shown) + "."]
    out += ["", *_checkpoints(metrics), "", "## Classification", ""]
    out.append(
        _table(
            names,
            [
                ("top-1", m("val", "top1"), ".2%"),
                ("top-5", m("val", "top5"), ".2%"),
                ("NLL", m("val", "nll"), ".4f"),
                ("images", m("val", "n"), "d"),
                ("left out", lambda n: _skips(models[n]["val"]), ""),
            ],
        )
    )
    out += [
        "",
        *_calibration(metrics),
        "",
        *_context(metrics),
        "",
        *_where_it_looks(metrics),
        "",
        *_headline(metrics),
        "",
    ]
    out.append(
        "Versions: " + ", ".join(f"{k} {v}" for k, v in metrics.get("versions", {}).items()) + "."
    )
    return "\n".join(out) + "\n"
