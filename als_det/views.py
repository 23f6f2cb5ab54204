"""The views an evaluation makes besides the intact split, and the fills of bg_only: one entry each.

The evaluation runs every view and fill here (`analysis.evaluate`), the context-reliance ratios
take their sources from it (`metrics.context`), and every report shows every entry: report.md
(`report.evaluation_markdown`, `report.fills`), the sweep report (`report.sweep`) and the demo
report (`report.demo`). Adding a view or a fill is adding an entry; a new kind of box variant or
fill also needs its pixels in `analysis.context` (`make_variant`, `fill_image`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class View:
    """One view. Built from the evaluated split's images as box variant `variant`
    (`analysis.context.VARIANTS`; `filled`: under the evaluation's fill), or from the generated
    data set's `split` (intact images). `context_only`: the labelled object is absent, so its
    accuracy is context accuracy and it is a source of the context-reliance ratios.
    `calibration`: also calibration and CAM energy (objects on other backgrounds)."""

    name: str  # its key in a model's metrics.json "variants" and its name in every report
    text: str  # what it shows, in reports
    context_only: bool
    variant: str | None = None
    split: str | None = None
    filled: bool = False
    calibration: bool = False

    def __post_init__(self) -> None:
        if (self.variant is None) == (self.split is None):
            raise ValueError(f"view {self.name}: give a box variant or a generated split")


@dataclass(frozen=True)
class Fill:
    """A fill of the box pixels; bg_only runs under each (`bg_only_by_fill` in metrics.json, the
    sweep's `bg_only_<fill>` sources)."""

    name: str
    text: str  # what the filled pixels hold, in reports


PRIMARY = "bg_only"  # the context-only view every fill is run for (none is the headline)

VIEWS: dict[str, View] = {
    v.name: v
    for v in (
        View("bg_only", "boxes filled: context alone", True, variant="bg_only", filled=True),
        View(
            "outside_crop",
            "largest crop touching no box: context alone, no fill",
            True,
            variant="outside_crop",
        ),
        View(
            "fg_only", "background filled: the object alone", False, variant="fg_only", filled=True
        ),
        View(
            "val_mixed",
            "generated: objects on random backgrounds",
            False,
            split="val_mixed",
            calibration=True,
        ),
        View("val_bg_only", "generated: backgrounds of the class alone", True, split="val_bg_only"),
    )
}

FILLS: dict[str, Fill] = {
    f.name: f
    for f in (
        Fill("black", "black pixels"),
        Fill("mean", "the checkpoint's normalisation mean colour"),
        Fill("blur", "a strong blur of the image"),
    )
}


def context_sources() -> list[str]:
    """The context-only views, in registry order (the primary first)."""
    return [v.name for v in VIEWS.values() if v.context_only]


def unfilled_context_views() -> list[str]:
    """Context-only views of the evaluated images without any fill (outside_crop): beside the
    fills of bg_only, they tell the context from the fill."""
    return [
        v.name for v in VIEWS.values() if v.context_only and v.variant is not None and not v.filled
    ]


def fill_source(fill: str) -> str:
    """The name of bg_only under `fill` as a source of its own (sweep, demo)."""
    return f"{PRIMARY}_{fill}"


def splits() -> list[str]:
    """The generated splits the views are built from."""
    return [v.split for v in VIEWS.values() if v.split is not None]
