"""The greedy label placer of the report figures: labels keep clear of each other, of markers and of error bars,
and a label placed away from its point is joined to it by a leader line."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from studies.reporting.labels import _bar_box, place_labels  # noqa: E402


def _cluster():
    """Seven points at almost the same x with overlapping error bars, like an ablation's ~52 K cluster."""
    xs = np.array([52.0, 52.2, 51.9, 52.1, 52.0, 53.5, 47.0]) * 1e3
    ys = np.array([88.07, 88.03, 87.92, 87.81, 88.05, 87.99, 87.68])
    err = np.array([0.11, 0.09, 0.20, 0.50, 0.12, 0.29, 0.11])
    fig, ax = plt.subplots(figsize=(3.4, 2.9), dpi=150)
    ax.set_xscale("log")
    ax.set_xlim(4e4, 1.5e5)
    ax.set_ylim(86.9, 89.6)
    for x, y, e in zip(xs, ys, err):
        ax.errorbar(x, y, yerr=e, fmt="o", ms=2)
    return fig, ax, xs, ys, err


def _boxes(fig, arts):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    return [a.get_bbox_patch().get_window_extent(r) if a.get_bbox_patch() else a.get_window_extent(r)
            for a in arts]


def test_labels_clear_each_other_and_every_error_bar():
    fig, ax, xs, ys, err = _cluster()
    names = [f"variant number {i}" for i in range(len(xs))]
    arts = place_labels(ax, xs, ys, names, fontsize=5.8, marker_radius_pt=4.0, yerr=err)
    boxes = _boxes(fig, arts)
    px = fig.dpi / 72.0
    bars = [_bar_box(ax, x, y, e, px) for x, y, e in zip(xs, ys, err)]
    for i, b in enumerate(boxes):
        assert not any(b.overlaps(o) for o in boxes[i + 1:]), names[i]
        assert not any(b.overlaps(bar) for bar in bars), names[i]
    plt.close(fig)


def test_a_label_away_from_its_point_has_a_leader_line_and_none_sits_on_its_bar():
    fig, ax, xs, ys, err = _cluster()
    arts = place_labels(ax, xs, ys, [f"v{i} label" for i in range(len(xs))], fontsize=5.8, marker_radius_pt=4.0,
                        yerr=err)
    pts = ax.transData.transform(np.column_stack([xs, ys]))
    boxes = _boxes(fig, arts)
    for a, b, (px, py) in zip(arts, boxes, pts):
        assert a.xyann[0] != 0.0  # never straight above or below a point with an error bar
        gap = max(b.x0 - px, px - b.x1, b.y0 - py, py - b.y1, 0.0)  # distance from the point to the label box
        if gap > 12 * fig.dpi / 72.0:
            assert a.arrow_patch is not None, a.get_text()
    plt.close(fig)


def test_unlabelled_error_bars_are_avoided_too():
    fig, ax, xs, ys, err = _cluster()
    arts = place_labels(ax, xs[:1], ys[:1], ["the only label"], fontsize=5.8, marker_radius_pt=4.0, yerr=err[:1],
                        avoid=list(zip(xs[1:], ys[1:], err[1:])))
    (box,) = _boxes(fig, arts)
    px = fig.dpi / 72.0
    assert not any(box.overlaps(_bar_box(ax, x, y, e, px)) for x, y, e in zip(xs, ys, err))
    plt.close(fig)
