"""Progress of a training run: rich bars on a terminal, a per-epoch callback, or nothing.

A display never ends a run: a callback that raises is reported once as a warning and then dropped.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable

__all__ = ["EpochProgress"]


class EpochProgress:
    """Rich bars (epochs with ETA, steps of the current epoch) and/or a callback, or nothing.

    ``spec``: None = bars when stdout is a terminal; True / False = bars or not; a callable = called after
    every epoch with keywords ``epoch, epochs, train_loss, val_loss, val_dsc, lr, seconds, eta_s``.
    """

    def __init__(self, spec: Any, label: str, epochs: int) -> None:
        self.callback: Callable[..., None] | None = spec if callable(spec) and not isinstance(spec, bool) else None
        show = bool(spec) if isinstance(spec, bool) else (spec is None and sys.stdout.isatty())
        self.bar = None
        if show:
            from rich.progress import (
                BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                TextColumn("{task.fields[info]}"))
            self.epoch_task = self.bar.add_task(label, total=epochs, info="")
            self.step_task = self.bar.add_task("  epoch", total=1, info="", visible=False)

    def __enter__(self) -> "EpochProgress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def start(self, done_epochs: int) -> None:
        """Show the epochs a resumed run has already done."""
        if self.bar is not None:
            self.bar.update(self.epoch_task, completed=done_epochs)

    def epoch_start(self, epoch: int, steps: int) -> None:
        """Reset the step bar for ``epoch`` of ``steps`` batches."""
        if self.bar is not None:
            self.bar.reset(self.step_task, total=steps, visible=True, description=f"  epoch {epoch}", info="")

    def step(self, loss: float) -> None:
        """One training batch done, with its loss."""
        if self.bar is not None:
            self.bar.update(self.step_task, advance=1, info=f"loss {loss:.4f}")

    def epoch_end(self, row: dict[str, Any], epochs: int, eta_s: float) -> None:
        """An epoch's history ``row`` is complete: update the bars and call the callback."""
        if self.bar is not None:
            self.bar.update(self.step_task, visible=False)
            self.bar.update(self.epoch_task, completed=row["epoch"],
                            info=f"loss {row['train_loss']:.4f} val {row['val_loss']:.4f} "
                                 f"DSC {row['val_pooled_dsc']:.4f}")
        if self.callback is not None:
            try:
                self.callback(epoch=row["epoch"], epochs=epochs, train_loss=row["train_loss"],
                              val_loss=row["val_loss"], val_dsc=row["val_pooled_dsc"], lr=row["lr"],
                              seconds=row["seconds"], eta_s=eta_s)
            except Exception as e:  # noqa: BLE001 - a display must never end a training run
                warnings.warn(f"progress callback failed ({type(e).__name__}: {e}); disabled for this run",
                              RuntimeWarning, stacklevel=2)
                self.callback = None
