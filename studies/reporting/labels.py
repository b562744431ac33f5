"""Point labels that do not overlap each other, the axes frame or (as far as possible) the points.

A small greedy placer (no third-party dependency): every label tries candidate offsets around its point
(right, left, above, below, then further away) and keeps the first that overlaps no label placed before,
no marker and stays inside the axes; labels far from their point get a thin leader line.
"""

from __future__ import annotations

import itertools

import numpy as np
from matplotlib.transforms import Bbox


def place_labels(ax, xs, ys, labels, *, fontsize: float = 6.0, colors=None, weights=None,
                 marker_radius_pt: float | list[float] = 3.0) -> list:
    """Annotate points (data coordinates) with non-overlapping labels; returns the annotation artists."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    pts = ax.transData.transform(np.column_stack([xs, ys]))
    radii = (np.full(len(pts), marker_radius_pt) if np.isscalar(marker_radius_pt)
             else np.asarray(marker_radius_pt, dtype=float)) * px_per_pt
    axbox = ax.get_window_extent(renderer)
    markers = [Bbox.from_extents(x - r, y - r, x + r, y + r) for (x, y), r in zip(pts, radii)]
    placed: list[Bbox] = []
    artists = []
    order = np.argsort(-pts[:, 1])  # from the top down
    for i in order:
        colour = colors[i] if colors is not None else "black"
        weight = weights[i] if weights is not None else "normal"
        probe = ax.text(0, 0, labels[i], fontsize=fontsize, fontweight=weight, transform=None)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        w, h = bb.width, bb.height
        x0, y0 = pts[i]
        r = radii[i] + 1.5 * px_per_pt
        best = fallback = None
        for ring, (dx, dy) in itertools.product(range(6), _DIRECTIONS):
            gap = r + ring * h * 0.9
            cx = x0 + dx * (gap + (w / 2 if dx else 0))
            cy = y0 + dy * (gap + (h / 2 if dy else 0))
            box = Bbox.from_extents(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            inside = (box.x0 >= axbox.x0 and box.x1 <= axbox.x1 and box.y0 >= axbox.y0 and box.y1 <= axbox.y1)
            if not inside:
                continue
            clashes = sum(box.overlaps(o) for o in placed) * 10 + sum(
                box.overlaps(m) for j, m in enumerate(markers) if j != i)
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
                                   bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.7)))
    return artists


_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1))
