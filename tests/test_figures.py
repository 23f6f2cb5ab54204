"""What the report figures draw: titles inside the canvas and clear of the panels, colour bar,
legends clear of the bars, per-bin counts, error bars only where there is a spread. Figures are
inspected as matplotlib objects after a layout pass, never pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.text import Text
from test_compare import _write_run

from als_det.metrics.calibration import calibration_metrics_from_logits, temperature_scaling_report
from als_det.report.compare import compare
from als_det.report.compare_output import bar_figure
from als_det.report.figures import (
    cam_grid,
    cam_grid_figure,
    context_confidence_figure,
    reliability_figure,
)


def _laid_out(fig: Figure) -> Figure:
    fig.draw_without_rendering()
    return fig


def _outside(fig: Figure) -> list[str]:
    """Every title, axis label, annotation or legend entry whose box leaves the canvas (cut off)."""
    box = fig.bbox
    texts = [fig._suptitle, fig._supxlabel, *(t for leg in fig.legends for t in leg.get_texts())]
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
    texts = [t for t in texts if isinstance(t, Text) and t.get_visible() and t.get_text()]
    return [
        t.get_text()
        for t in texts
        if (e := t.get_window_extent()).x0 < box.x0 - 1
        or e.x1 > box.x1 + 1
        or e.y0 < box.y0 - 1
        or e.y1 > box.y1 + 1
    ]


def _grid_inputs(rows: int = 2, size: int = 24):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(rows)]
    boxes = [np.array([[2, 2, 12, 20]]) for _ in range(rows)]
    cams = {m: [rng.random((size, size)) for _ in range(rows)] for m in ("hard", "als")}
    titles = {m: [f"pred golden retriever 0.{i}" for i in range(rows)] for m in cams}
    return images, boxes, cams, titles


@pytest.mark.parametrize("method, label", [("cam", "CAM"), ("gradcam", "Grad-CAM")])
def test_cam_grid_names_its_method_rows_and_scale(method, label) -> None:
    images, boxes, cams, titles = _grid_inputs()
    fig = _laid_out(
        cam_grid_figure(
            images,
            boxes,
            cams,
            titles,
            ["red circle", "teddy bear"],
            method,
            ["s0000000_12", "val_1321"],
        )
    )
    suptitle = fig.get_suptitle()
    assert suptitle.startswith(f"{label} of the labelled class")
    # a colour bar beside the 2 x 3 panels, saying what its 0..1 scale is
    assert len(fig.axes) == 2 * 3 + 1
    bar = fig.axes[-1]
    assert bar.get_ylabel().startswith(label) and "peak" in bar.get_ylabel()
    assert bar.get_ylim() == (0.0, 1.0)
    # rows: the class name as the title, the file in small print below
    first = [fig.axes[0], fig.axes[3]]
    assert [ax.get_title() for ax in first] == ["red circle", "teddy bear"]
    assert [ax.get_xlabel() for ax in first] == ["file s0000000_12", "file val_1321"]
    # the figure title sits above the first row's headers, and nothing leaves the canvas
    title_bottom = fig._suptitle.get_window_extent().y0
    assert all(title_bottom >= ax.title.get_window_extent().y1 for ax in fig.axes[:3])
    assert _outside(fig) == []


def test_cam_grid_requires_a_known_method(tmp_path) -> None:
    images, boxes, cams, titles = _grid_inputs(1)
    with pytest.raises(KeyError):
        cam_grid(images, boxes, cams, titles, ["a"], tmp_path / "g.png", "scorecam")


def _logits(n: int, k: int, margin: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g)
    logits[torch.arange(n), labels] += margin
    return logits, labels


def test_reliability_figure_counts_legend_and_temperature_panel() -> None:
    good, wrong = _logits(400, 5, 2.0, 0), _logits(400, 5, -3.0, 1)  # wrong: T runs off to infinity
    models = {
        "hard": calibration_metrics_from_logits(*good),
        "als": calibration_metrics_from_logits(*wrong),
    }
    scaled = {"hard": temperature_scaling_report(*good), "als": temperature_scaling_report(*wrong)}
    assert scaled["als"]["degenerate"] and not scaled["hard"]["degenerate"]
    fig = _laid_out(reliability_figure(models, scaled))
    axes = np.array(fig.axes).reshape(4, 2)  # reliability, counts; after T: reliability, counts
    # one legend for the figure, below every panel, none on the bars
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    legend_top = fig.legends[0].get_window_extent().y1
    assert all(legend_top <= ax.get_window_extent().y0 for ax in fig.axes)
    # per-bin counts: a bar and its number per non-empty bin, under each diagram
    for row, col, bins in [(1, 0, models["hard"]["bins"]), (3, 1, scaled["als"]["after"]["bins"])]:
        counts = [c for c in bins["counts"] if c]
        ax = axes[row][col]
        assert [int(t.get_text()) for t in ax.texts] == counts
        bars = [c for c in ax.containers if isinstance(c, BarContainer)][0]
        assert [p.get_height() for p in bars.patches] == counts
    # the temperature-scaled panels name T and flag the degenerate fit
    assert "T = " in axes[2][0].get_title() and "DEGENERATE" not in axes[2][0].get_title()
    assert "DEGENERATE" in axes[2][1].get_title()
    assert _outside(fig) == []


def test_reliability_figure_without_temperature_has_two_rows_and_a_missing_fit_says_why() -> None:
    logits, labels = _logits(200, 4, 1.0, 1)
    m = calibration_metrics_from_logits(logits, labels)
    assert len(reliability_figure({"hard": m}).axes) == 2
    no_fit = {
        **temperature_scaling_report(logits, labels),
        "temperature": None,
        "after": None,
        "degenerate": True,
        "reason": "the fitted temperature is not finite",
    }
    fig = reliability_figure({"hard": m}, {"hard": no_fit})
    assert "not finite" in fig.axes[2].texts[0].get_text() and not fig.axes[2].axison


def _comparison(tmp_path, aps: dict[str, list[float]]):
    runs = [
        _write_run(tmp_path, name, {"name": name}, seed, ap)
        for name, seeds in aps.items()
        for seed, ap in enumerate(seeds)
    ]
    return compare(runs)


def test_bar_chart_with_one_run_per_strategy_has_no_error_bars_and_says_so(tmp_path) -> None:
    fig = _laid_out(bar_figure(_comparison(tmp_path, {"hard": [30.0], "als": [34.0]})))
    ax = fig.axes[0]
    assert not any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    assert all(c.errorbar is None for c in ax.containers if isinstance(c, BarContainer))
    assert "n=1, no error bar: hard, als" in fig.get_supxlabel()
    assert fig.get_suptitle() == "Detection AP by pretraining label strategy"
    assert _outside(fig) == []


def test_bar_chart_draws_error_bars_only_for_rows_with_a_spread(tmp_path) -> None:
    fig = _laid_out(bar_figure(_comparison(tmp_path, {"hard": [30.0], "als": [34.0, 36.0]})))
    ax = fig.axes[0]
    errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(errorbars) == 1
    (segments,) = errorbars[0].lines[2]
    (((x, lo), (_, hi)),) = segments.get_segments()
    assert x == 1 and (lo, hi) == pytest.approx((35.0 - 2**0.5, 35.0 + 2**0.5))
    assert "sample std" in fig.get_supxlabel() and "n=1, no error bar: hard" in fig.get_supxlabel()
    assert _outside(fig) == []


def test_context_confidence_draws_every_view_absolute_and_relative() -> None:
    """A column per context-only view; above the mean confidence, below the same over the model's
    own val confidence; the baseline's value as a dotted line in every panel; a view a model has
    no images of is labelled, not drawn as 0."""
    views = ["bg_only, black fill", "bg_only, blur fill", "outside_crop (no fill)"]
    conf = {
        "hard": dict(zip(views, (0.6, 0.5, 0.4))),
        "als": dict(zip(views, (0.3, 0.45, None))),
    }
    val = {"hard": 0.8, "als": 0.5}
    fig = _laid_out(context_confidence_figure(conf, val, "hard"))
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == views
    assert _outside(fig) == []
    for row, divisor in enumerate(({"hard": 1.0, "als": 1.0}, val)):
        for col, view in enumerate(views):
            ax = axes[row][col]
            (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
            widths = [b.get_width() for b in bars]
            expected = [(conf[n][view] or 0.0) / divisor[n] for n in ("hard", "als")]
            assert widths == pytest.approx(expected)
            (line,) = ax.get_lines()
            assert line.get_xdata()[0] == pytest.approx(conf["hard"][view] / divisor["hard"])
    assert "no images" in [t.get_text() for t in axes[0][2].texts]
    assert [t.get_text() for t in axes[1][0].texts] == ["0.75", "0.60"]  # 0.6/0.8, 0.3/0.5
