"""Point labels that do not overlap each other, the axes frame or (as far as possible) the points.

A small greedy placer (no third-party dependency): every label tries candidate offsets around its point
(right, left, above, below, then further away) and keeps the first that overlaps no label placed before,
no marker, no error bar and stays inside the axes; labels away from their point get a thin leader line. A point
with an error bar takes no label straight above or below it (the label would sit on the bar and its leader line
would run along it).
"""

from __future__ import annotations

import itertools

import numpy as np
from matplotlib.transforms import Bbox


def place_labels(ax, xs, ys, labels, *, fontsize: float = 6.0, colors=None, weights=None,
                 marker_radius_pt: float | list[float] = 3.0, yerr=None, avoid=None) -> list:
    """Annotate points (data coordinates) with non-overlapping labels; returns the annotation artists.

    ``yerr``: the half-length of each labelled point's vertical error bar (data units; NaN or 0: none).
    ``avoid``: further error bars to keep clear of, as ``(x, y, yerr)`` rows (the points left unlabelled).
    """
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    pts = ax.transData.transform(np.column_stack([xs, ys]))
    radii = (np.full(len(pts), marker_radius_pt) if np.isscalar(marker_radius_pt)
             else np.asarray(marker_radius_pt, dtype=float)) * px_per_pt
    axbox = ax.get_window_extent(renderer)
    markers = [Bbox.from_extents(x - r, y - r, x + r, y + r) for (x, y), r in zip(pts, radii)]
    errs = np.nan_to_num(np.asarray(yerr, dtype=float)) if yerr is not None else np.zeros(len(pts))
    bars = [_bar_box(ax, x, y, e, px_per_pt) for x, y, e in zip(xs, ys, errs) if e > 0]
    bars += [_bar_box(ax, x, y, e, px_per_pt) for x, y, e in (avoid if avoid is not None else ())
             if np.isfinite(e) and e > 0]
    placed: list[Bbox] = []
    artists = []
    bold = np.array([w == "bold" for w in weights] if weights is not None else [False] * len(pts))
    order = np.lexsort((-pts[:, 1], ~bold))  # bold labels (the reference) first, then from the top down
    for i in order:
        colour = colors[i] if colors is not None else "black"
        weight = weights[i] if weights is not None else "normal"
        probe = ax.text(0, 0, labels[i], fontsize=fontsize, fontweight=weight, transform=None)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        pad = 2 * _PAD * fontsize * px_per_pt  # the label's white box reaches this far beyond the text
        w, h = bb.width + pad, bb.height + pad
        x0, y0 = pts[i]
        r = radii[i] + 1.5 * px_per_pt
        best = fallback = None
        for ring, (dx, dy) in itertools.product(range(6), _DIRECTIONS):
            if dx == 0 and errs[i] > 0:
                continue
            gap = r + ring * h * 0.9
            cx = x0 + dx * (gap + (w / 2 if dx else 0))
            cy = y0 + dy * (gap + (h / 2 if dy else 0))
            box = Bbox.from_extents(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            inside = (box.x0 >= axbox.x0 and box.x1 <= axbox.x1 and box.y0 >= axbox.y0 and box.y1 <= axbox.y1)
            if not inside:
                continue
            clashes = sum(box.overlaps(o) for o in placed) * 10 + sum(
                box.overlaps(m) for j, m in enumerate(markers) if j != i) + sum(box.overlaps(b) for b in bars)
            if clashes == 0:
                best = (cx, cy, box, ring)
                break
            if fallback is None or clashes < fallback[0]:
                fallback = (clashes, (cx, cy, box, ring))
        if best is None:
            best = fallback[1] if fallback is not None else (
                x0 + r + w / 2, y0, Bbox.from_extents(x0 + r, y0 - h / 2, x0 + r + w, y0 + h / 2), 0)
        cx, cy, box, ring = best
        placed.append(box)
        offset = ((cx - x0) / px_per_pt, (cy - y0) / px_per_pt)
        arrow = dict(arrowstyle="-", lw=0.4, color="#666666", shrinkA=0, shrinkB=radii[i] / px_per_pt) \
            if ring >= 1 else None
        artists.append(ax.annotate(labels[i], (xs[i], ys[i]), xytext=offset, textcoords="offset points",
                                   ha="center", va="center", fontsize=fontsize, color=colour, fontweight=weight,
                                   arrowprops=arrow, annotation_clip=False,
                                   bbox=dict(boxstyle=f"square,pad={_PAD}", fc="white", ec="none", alpha=0.7)))
    return artists


#: padding of a label's white box, in units of the font size
_PAD = 0.1


def _bar_box(ax, x: float, y: float, err: float, px_per_pt: float) -> Bbox:
    """The display-space box of a vertical error bar (with its caps) at (x, y) +- err."""
    (bx, lo), (_, hi) = ax.transData.transform([(x, y - err), (x, y + err)])
    half = 2.0 * px_per_pt
    return Bbox.from_extents(bx - half, lo, bx + half, hi)


_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1))
