"""One figure style for every report figure: column width 3.5 in, 7-8 pt type, colour-blind-safe colours.

EGE-UNet (the reference) is drawn in vermillion in every figure; other variants in blue or in the
colour-blind palette without its two orange tones.
"""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path
from typing import Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

COLUMN_WIDTH = 3.5  # inches, one column of a two-column paper
FULL_WIDTH = 7.16  # inches, both columns
REF_COLOR = "#D55E00"
OTHER_COLOR = "#0173B2"
MUTED = "#8C8C8C"
GT_COLOR = "#FFD400"
PRED_COLOR = "#00B4FF"

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 7.5,
    "axes.titlesize": 7.5,
    "axes.labelsize": 7.5,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5,
    "legend.title_fontsize": 6.5,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "lines.linewidth": 1.0,
    "grid.linewidth": 0.4,
    "grid.color": "#DDDDDD",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "savefig.dpi": 300,
    "figure.dpi": 150,
}


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """The report style, applied for the duration of the block only."""
    with sns.axes_style("ticks"), plt.rc_context(RC):
        yield


def palette(n: int) -> list:
    """``n`` distinguishable colours that never look like the reference's vermillion."""
    base = [c for i, c in enumerate(sns.color_palette("colorblind")) if i not in (1, 3)]
    return [base[i % len(base)] for i in range(n)]


def linestyle(i: int) -> str:
    return ("-", "--", ":", "-.")[(i // 8) % 4]


def short_label(name: str, width: int = 16) -> str:
    """Wrap a long variant name at underscores for narrow panel titles."""
    if len(name) <= width:
        return name
    parts = name.replace("_", "_\x00").split("\x00")
    return "\n".join(textwrap.wrap(" ".join(parts), width=width, break_long_words=True)).replace("_ ", "_")


def save(fig, stem: Path) -> list[Path]:
    """Save ``stem``.png (300 dpi) and ``stem``.pdf (fonts embedded as TrueType); close the figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    fig.savefig(png, bbox_inches="tight", pad_inches=0.03, metadata={"Software": None})
    fig.savefig(pdf, bbox_inches="tight", pad_inches=0.03, metadata={"CreationDate": None, "Producer": None})
    plt.close(fig)
    return [png, pdf]
