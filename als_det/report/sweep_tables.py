"""A summarized sweep (`als_det.report.sweep.Sweep`) -> report.md tables and text, and
sweep.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from als_det.metrics.comparison import NEUTRAL_POINTS, accuracy_neutral, direction
from als_det.report.fills import agreement
from als_det.report.sweep import (
    FORMS,
    TRANSFER_PROTOCOLS,
    Group,
    Sweep,
    chance_seeds,
    verdict_views,
)
from als_det.report.tables import MISSING, cell, mean_pm_std
from als_det.report.transfer import PROTOCOL_TITLES
from als_det.strategies import describe
from als_det.views import FILLS, PRIMARY, VIEWS, unfilled_context_views

TABLE = {"tablefmt": "pipe", "disable_numparse": True}

INTERVAL_METHOD = (
    "95% Student-t interval over seeds of the paired (same seed, same crops) differences and "
    "ratios to the baseline; it covers seed-to-seed training variance on this val set, not the "
    "choice of val images (each evaluation's bootstrap) nor other classes or data sets"
)
REL = "ratio_relative_to_val"
BASELINE = "—"  # a difference or ratio to the baseline, in the baseline's own row


def _mean(g: Group, key: str) -> float | None:
    return g.stats.get(key, {}).get("mean")


def _pm(g: Group, key: str, scale: float = 1.0, spec: str = ".3f") -> str:
    s = g.stats.get(key) or {}
    return mean_pm_std(s.get("mean"), s.get("std"), spec, scale)


def _ci(g: Group, key: str, scale: float = 1.0, spec: str = ".3f", sign: str = "") -> str:
    s = g.stats.get(key)
    if not s or s["mean"] is None:
        return MISSING
    text = format(s["mean"] * scale, sign + spec)
    iv = s["interval"]
    return text + (
        f" [{format(iv[0] * scale, sign + spec)}, {format(iv[1] * scale, sign + spec)}]"
        if iv
        else " (one seed)"
    )


def _vs_baseline(g: Group, sweep: Sweep, key: str, *fmt: Any) -> str:
    """A paired quantity with its interval; BASELINE in the baseline's own row."""
    return BASELINE if g.setting == sweep.baseline else _ci(g, key, *fmt)


def _label(g: Group, sweep: Sweep) -> str:
    return g.setting if g.setting != sweep.baseline else f"**{g.setting}** (baseline)"


def accuracy_table(sweep: Sweep) -> str:
    rows = [
        [
            _label(g, sweep),
            describe(g.strategy),
            g.epochs,
            len(g.cells),
            _pm(g, "top1", 100, ".1f"),
            _vs_baseline(g, sweep, "d_top1", 100, ".1f", "+"),
            _pm(g, "ece"),
            _vs_baseline(g, sweep, "d_ece", 1, ".3f", "+"),
            _pm(g, "conf_val"),
            _pm(g, "mean_e"),
            _pm(g, "train_time_s", 1 / 60, ".1f"),
        ]
        for g in sweep.groups
    ]
    return tabulate(
        rows,
        headers=[
            "setting",
            "targets",
            "epochs",
            "seeds",
            "top-1 (%)",
            f"Δ top-1 vs {sweep.baseline} (points)",
            "ECE",
            f"Δ ECE vs {sweep.baseline}",
            "val confidence",
            "mean e (last epoch)",
            "training (min)",
        ],
        **TABLE,
    )


def reliance_table(sweep: Sweep, source: str) -> str:
    rows = []
    for g in sweep.groups:
        row = [_label(g, sweep), g.epochs, _pm(g, f"conf_{source}"), _pm(g, f"reliance_{source}")]
        row += [_vs_baseline(g, sweep, f"{key}_{source}") for key, _ in FORMS]
        rows.append(row)
    return tabulate(
        rows,
        headers=["setting", "epochs", f"{source} confidence", f"{source} / own val confidence"]
        + [f"/{sweep.baseline}: {label}" for _, label in FORMS],
        **TABLE,
    )


def verdict(sweep: Sweep, source: str = PRIMARY) -> str:
    """Which settings lower context reliance relative to own val confidence (interval below 1) at a
    mean top-1 cost of at most NEUTRAL_POINTS — said from the numbers, including when none does."""
    key = f"{REL}_{source}"
    groups = [
        g
        for g in sweep.groups
        if g.epochs == sweep.main_epochs
        and g.setting != sweep.baseline
        and g.stats.get(key, {}).get("mean") is not None
    ]
    if not groups:
        return (
            f"No setting besides {sweep.baseline} at "
            f"{sweep.main_epochs} epochs has {source} results."
        )
    withheld = [
        f"- no verdict for `{g.setting}`: it or {sweep.baseline} is at or near chance on val in "
        f"seed(s) {', '.join(map(str, seeds))} (docs/als.md, \"No verdict from a model at or near "
        'chance").'
        for g in groups
        if (seeds := chance_seeds(sweep, g))
    ]
    groups = [g for g in groups if not chance_seeds(sweep, g)]
    if not groups:
        return "\n".join([f"**{source}, {sweep.main_epochs}-epoch runs**:", *withheld])
    if all(g.stats[key]["interval"] is None for g in groups):
        return "\n".join(
            [
                "With one seed per setting there is no interval: no setting can be said to "
                f"lower {source} reliance relative to own val confidence. Run three or more seeds.",
                *withheld,
            ]
        )

    def numbers(g: Group) -> str:
        return (
            f"`{g.setting}` ({describe(g.strategy)}): {source} ratio relative to own val "
            f"confidence {_ci(g, key)}, Δ top-1 {_ci(g, 'd_top1', 100, '.1f', '+')} points over "
            f"{g.stats[key]['n']} seeds"
            + (
                f" (of {len(g.cells)}: the others have no {source})"
                if g.stats[key]["n"] < len(g.cells)
                else ""
            )
        )

    lower = [g for g in groups if direction(g.stats[key]["interval"]) == "lower"]
    good = [g for g in lower if accuracy_neutral(g.stats["d_top1"]["mean"])]
    lines = [
        f"**{source}, {sweep.main_epochs}-epoch runs** (95% t-intervals over seeds, paired with "
        f"{sweep.baseline}):"
    ]

    def cost_note(g: Group) -> str:
        iv = g.stats["d_top1"]["interval"]
        if iv and accuracy_neutral(iv[0]):
            return ""
        return f" (the top-1 interval reaches below -{NEUTRAL_POINTS:g} point)"

    if good:
        lines += [
            "- lowers relative context reliance at ≤ "
            f"{NEUTRAL_POINTS:g} point mean top-1 cost: {numbers(g)}" + cost_note(g)
            for g in good
        ]
    else:
        lines.append(
            f"- no setting lowers {source} confidence relative to its own val confidence "
            f"(interval below 1) at a mean top-1 cost of at most {NEUTRAL_POINTS:g} point."
        )
    lines += [f"- lowers it, at a larger top-1 cost: {numbers(g)}" for g in lower if g not in good]
    best = min(groups, key=lambda g: g.stats[key]["mean"])
    if not lower:
        lines.append(f"- lowest relative ratio: {numbers(best)}")
    return "\n".join(lines + withheld)


def view_verdict(sweep: Sweep, g: Group, source: str) -> str:
    """What the t-interval of `g`'s relative `source` ratio says: lower / alike / higher; "at
    chance" when a seed of it or its baseline is at or near chance; "one seed" without one."""
    if chance_seeds(sweep, g):
        return "at chance"
    return direction(g.stats.get(f"{REL}_{source}", {}).get("interval")) or "one seed"


def agreement_lines(sweep: Sweep) -> list[str]:
    """Per setting at the main training length: whether its verdicts in bg_only and the views
    beside it (`verdict_views`) agree."""
    views = [PRIMARY, *verdict_views(sweep)]
    lines = []
    for g in sweep.groups:
        if g.epochs != sweep.main_epochs or g.setting == sweep.baseline:
            continue
        words = {s: view_verdict(sweep, g, s) for s in views if _mean(g, f"{REL}_{s}") is not None}
        if len(words) > 1:
            lines.append(agreement(f"`{g.setting}`", words))
    return lines


def transfer_protocols(sweep: Sweep) -> list[str]:
    """The transfer protocols some cell has a result of."""
    return [p for p in TRANSFER_PROTOCOLS if any(f"transfer_{p}" in g.stats for g in sweep.groups)]


def transfer_table(sweep: Sweep) -> str:
    protocols = transfer_protocols(sweep)
    rows = []
    for g in sweep.groups:
        row = [_label(g, sweep), g.epochs, g.stats.get(f"transfer_{protocols[0]}", {}).get("n", 0)]
        for p in protocols:
            row += [
                _pm(g, f"transfer_{p}", 100, ".1f"),
                _vs_baseline(g, sweep, f"d_transfer_{p}", 100, ".1f", "+"),
            ]
        rows.append(row)
    headers = ["setting", "epochs", "seeds"]
    for p in protocols:
        title = PROTOCOL_TITLES[p]
        headers += [f"{title} top-1 (%)", f"Δ {title} vs {sweep.baseline} (points)"]
    return tabulate(rows, headers=headers, **TABLE)


def transfer_section(sweep: Sweep, figures: dict[str, str]) -> list[str]:
    """The transfer table (and figure) of the cells with a transfer result."""
    data, opts = sweep.transfer["data"], sweep.transfer["options"]
    recipe = ", ".join(PROTOCOL_TITLES[p] for p in transfer_protocols(sweep))
    if "finetune" in transfer_protocols(sweep):
        recipe = recipe.replace(
            PROTOCOL_TITLES["finetune"],
            f"{PROTOCOL_TITLES['finetune']} ({opts['epochs']} epoch{'s' * (opts['epochs'] != 1)})",
        )
    lines = [
        "",
        "## Transfer",
        "",
        f"Each cell's checkpoint on the downstream set `{data['root']}` ({len(data['classes'])} "
        f"classes, {data['images']['train']} train and {data['images']['val']} val images; "
        f"`tools/transfer.py`: {recipe}): top-1 mean ± sample std over seeds, and its "
        f"difference to {sweep.baseline} of the same seed and length with the 95% t-interval "
        "over seeds (each cell's transfer.json has the bootstrap over val images).",
        "",
        transfer_table(sweep),
    ]
    if "transfer" in figures:
        lines += ["", f"![transfer vs context reliance]({figures['transfer']})"]
    return lines


def missing_transfer_section(
    sweep: Sweep, missing_transfer: Sequence[dict[str, Any]], heading: bool
) -> list[str]:
    shown = sum(len(g.cells) for g in sweep.groups)
    rows = [
        [f"`{m['cell']}`", m["setting"], m["seed"], m["epochs"], m["reason"]]
        for m in missing_transfer
    ]
    return [
        *(["", "## Missing cells"] if heading else []),
        "",
        f"**{len(missing_transfer)} of the {shown} cells shown have no transfer result**: the "
        "transfer table and figure cover the others.",
        "",
        tabulate(rows, headers=["cell", "setting", "seed", "epochs", "why (transfer)"], **TABLE),
    ]


def cells_table(sweep: Sweep) -> str:
    rows = []
    for g in sweep.groups:
        for c in g.cells:
            v = c.values
            rel = v.get(f"{REL}_{PRIMARY}")
            rows.append(
                [
                    g.setting,
                    c.cell.seed,
                    g.epochs,
                    f"{100 * v['top1']:.1f}",
                    f"{v['ece']:.3f}",
                    cell(v.get(f"conf_{PRIMARY}"), ".3f"),
                    BASELINE if g.setting == sweep.baseline else cell(rel, ".3f"),
                    f"`{c.cell.run_dir}`",
                    f"`{c.cell.eval_metrics}`",
                ]
            )
    return tabulate(
        rows,
        headers=[
            "setting",
            "seed",
            "epochs",
            "top-1 (%)",
            "ECE",
            f"{PRIMARY} confidence",
            f"{PRIMARY} ratio rel. to val",
            "run",
            "evaluation",
        ],
        **TABLE,
    )


def missing_section(sweep: Sweep, missing: Sequence[dict[str, Any]]) -> list[str]:
    shown = sum(len(g.cells) for g in sweep.groups)
    rows = [[f"`{m['cell']}`", m["setting"], m["seed"], m["epochs"], m["reason"]] for m in missing]
    return [
        "",
        "## Missing cells",
        "",
        f"**{len(missing)} of {shown + len(missing)} planned cells are missing.** Everything "
        f"below (verdict, tables, figures) covers only the {shown} cells listed under Cells; a "
        "setting's mean, std and interval are over the seeds it has.",
        "",
        tabulate(rows, headers=["cell", "setting", "seed", "epochs", "why"], **TABLE),
    ]


def views_note() -> str:
    """What each view with a verdict is (`als_det.views`)."""
    fills = "; ".join(f"{f.name}: {f.text}" for f in FILLS.values())
    others = "".join(f"; `{v}`: {VIEWS[v].text}" for v in unfilled_context_views())
    return (
        f"The views: `{PRIMARY}` fills the labelled object's boxes (black unless the evaluation's "
        f"`--fill` said otherwise), `{PRIMARY}_<fill>` is the same images under another fill "
        f"({fills}){others}. A verdict that holds under one view and not the others may be about "
        'the fill, not the context (docs/als.md, "Context-only views").'
    )


def render_sweep_report(
    sweep: Sweep,
    figures: dict[str, str],
    title: str = "",
    missing: Sequence[dict[str, Any]] = (),
    missing_transfer: Sequence[dict[str, Any]] = (),
) -> str:
    data = sweep.data
    seeds = sorted({c.cell.seed for g in sweep.groups for c in g.cells})
    incomplete = " (incomplete)" if missing or missing_transfer else ""
    out = [f"# Sweep{': ' + title if title else ''}{incomplete}", ""]
    out.append(
        f"Evaluated on `{data['root']}` split `{data['split']}` ({data['images_evaluated']} "
        f"images, {len(data['classes'])} classes); seeds {', '.join(map(str, seeds))}; baseline "
        f"`{sweep.baseline}` of the same seed and training length. Values: mean ± sample std over "
        f"seeds; in brackets: {INTERVAL_METHOD}."
    )
    if missing:
        out += missing_section(sweep, missing)
    if missing_transfer:
        out += missing_transfer_section(sweep, missing_transfer, heading=not missing)
    views = verdict_views(sweep)
    out += ["", "## Verdict", "", verdict(sweep, PRIMARY)]
    out += [x for s in views for x in ("", verdict(sweep, s))]
    agree = agreement_lines(sweep)
    if agree:
        out += ["", f"**Across views** ({sweep.main_epochs}-epoch runs):", "", *agree]
    if views:
        out += ["", views_note()]
    out += ["", "## Accuracy and calibration", "", accuracy_table(sweep)]
    for s in sweep.sources:
        out += ["", f"## Context reliance: {s}", "", reliance_table(sweep, s)]
        if s in figures:
            out += ["", f"![trade-off: {s}]({figures[s]})"]
    if sweep.transfer is not None:
        out += transfer_section(sweep, figures)
    if "training_length" in figures:
        out += [
            "",
            "## Training length",
            "",
            "Settings run at several lengths: top-1, its cost against the baseline of the same "
            f"length, and {PRIMARY} confidence relative to own val confidence, over "
            f"{sweep.baseline}'s.",
            "",
            f"![training length]({figures['training_length']})",
        ]
    out += ["", "## Cells", "", cells_table(sweep), ""]
    return "\n".join(out)


def sweep_json(
    sweep: Sweep,
    figures: dict[str, str],
    missing: Sequence[dict[str, Any]] = (),
    missing_transfer: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    return {
        "baseline": sweep.baseline,
        "main_epochs": sweep.main_epochs,
        "data": sweep.data,
        "sources": sweep.sources,
        "interval_method": INTERVAL_METHOD,
        "figures": figures,
        "missing": list(missing),
        "transfer": sweep.transfer,
        "missing_transfer": list(missing_transfer),
        "groups": [
            {
                "setting": g.setting,
                "epochs": g.epochs,
                "strategy": g.strategy,
                "description": describe(g.strategy),
                "seeds": g.seeds,
                "stats": g.stats,
            }
            for g in sweep.groups
        ],
        "cells": [
            {
                "setting": c.cell.setting,
                "seed": c.cell.seed,
                "epochs": c.epochs,
                "run_dir": str(Path(c.cell.run_dir)),
                "eval_metrics": str(Path(c.cell.eval_metrics)),
                "values": c.values,
            }
            for g in sweep.groups
            for c in g.cells
        ],
    }
