"""How a suite's runs are placed on this CPU: worker processes x torch threads, from a measured rule.

``python -m studies.bench --cases layout`` measures, per registered model, the aggregate training
images/s of every layout that fills the cores (``W`` concurrent worker processes with ``T`` torch threads
each, ``W x T = cores``; each process trains the model on its own path, as a run would) and writes
``results/bench/layout_cpu.csv``. :func:`choose_layout` reads those rows and picks, for the runs a suite
still has to train, the layout with the least estimated time: the sum over runs of 1 / (the aggregate
images/s of the run's model under that layout). ``python -m studies.run --workers auto`` (the default)
uses it.

A model that was not measured borrows the measurement of the measured model with the same fast view
and the nearest parameter count (an EGE-UNet variant counts as EGE-UNet). Without rows for this machine's
core count the rule cannot say anything, and a suite runs as one worker with every core (the layout before
this rule existed); so does a suite with one run left, the smoke budget (64-pixel runs of seconds, where
starting processes costs more than it saves), a GPU, and ``--pack``.
"""

from __future__ import annotations

import csv
import functools
import math
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["LAYOUT_CSV", "Layout", "Choice", "layouts_for", "read_layout_rows", "choose_layout", "measure_layouts"]

LAYOUT_CSV = Path(__file__).resolve().parents[1] / "results" / "bench" / "layout_cpu.csv"
LAYOUT_CASE = "layout"


@dataclass(frozen=True, order=True)
class Layout:
    """``workers`` processes with ``threads`` torch threads each."""

    workers: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.workers}x{self.threads}"

    @classmethod
    def parse(cls, text: str) -> "Layout":
        w, t = text.lower().split("x")
        return cls(int(w), int(t))


@dataclass(frozen=True)
class Choice:
    """The layout chosen for a suite and, in words, why."""

    layout: Layout
    reason: str


def layouts_for(cores: int) -> list[Layout]:
    """Every ``W x T`` with ``W * T == cores``, one worker with every core first (the reference)."""
    return [Layout(cores // t, t) for t in sorted((t for t in range(1, cores + 1) if cores % t == 0),
                                                   reverse=True)]


def read_layout_rows(path: str | os.PathLike = LAYOUT_CSV) -> dict[int, dict[str, dict[Layout, float]]]:
    """``{cores: {model: {layout: aggregate img/s}}}`` from the bench's layout rows (none: ``{}``)."""
    out: dict[int, dict[str, dict[Layout, float]]] = {}
    try:
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("case") == LAYOUT_CASE]
    except OSError:
        return {}
    for r in rows:
        try:
            cores, rate, layout = int(r["cores"]), float(r["img_per_s"]), Layout.parse(r["layout"])
        except (KeyError, ValueError):
            continue  # a malformed row says nothing
        if math.isfinite(rate) and rate > 0:
            out.setdefault(cores, {}).setdefault(r["model"], {})[layout] = rate
    return out


@functools.lru_cache(maxsize=None)
def _params(name: str) -> int:
    from zoo.registry import create_model

    return sum(p.numel() for p in create_model(name).parameters())


def _proxy(model: str, measured: Iterable[str]) -> str | None:
    """The measured model that stands in for ``model``: itself, else the one with the same fast view and
    the nearest parameter count."""
    measured = list(measured)
    if model in measured:
        return model
    from zoo.registry import get_entry

    try:
        fast = get_entry(model).fast
        same = [m for m in measured if get_entry(m).fast == fast]
        if not same:
            return None
        n = _params(model)
        return min(same, key=lambda m: abs(math.log(_params(m) / n)))
    except Exception:  # an unknown or unbuildable model: no proxy, the estimate leaves it out
        return None


def choose_layout(models: Sequence[str], cores: int, *, rows: dict[int, dict[str, dict[Layout, float]]] | None = None,
                  source: str = "results/bench/layout_cpu.csv") -> Choice:
    """The layout for runs of ``models`` (one entry per run still to train) on ``cores`` cores."""
    default = Layout(1, max(1, cores))
    if len(models) <= 1:
        return Choice(default, "one run to train")
    table = (read_layout_rows() if rows is None else rows).get(cores)
    if not table:
        return Choice(default, f"no layout measured for {cores} cores in {source} "
                               f"(python -m studies.bench --cases layout)")
    candidates = [lay for lay in layouts_for(cores) if lay.workers <= len(models)]
    cost = {lay: 0.0 for lay in candidates}
    used: set[str] = set()
    for m in models:
        p = _proxy(m, table)
        if p is None:
            continue
        used.add(p)
        for lay in candidates:
            rate = table[p].get(lay)
            cost[lay] = math.inf if rate is None or not math.isfinite(cost[lay]) else cost[lay] + 1.0 / rate
    scored = {lay: c for lay, c in cost.items() if math.isfinite(c) and c > 0}
    if not scored:
        return Choice(default, f"none of the suite's models measured for {cores} cores in {source}")
    best = min(scored, key=lambda lay: (scored[lay], lay.workers))
    gain = scored[default] / scored[best] if default in scored else float("nan")
    return Choice(best, f"measured in {source} ({', '.join(sorted(used))}): "
                        f"{gain:.2f}x the throughput of {default.label}")


# ------------------------------------------------------------------------------------- measurement
def _layout_worker(conn, model: str, threads: int, size: int, batch: int) -> None:
    """One process of a layout: trains ``model`` on its path (as a run would) on a fixed synthetic batch,
    ``n`` steps per request, and answers with the seconds they took."""
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    from engine.fastview import fast_views, uses_fast_path
    from engine.losses import model_loss
    from engine.optim import make_adamw
    from zoo.registry import create_model

    torch.manual_seed(0)
    net = create_model(model)
    fast = uses_fast_path(model, "cpu")
    train, _ = fast_views(model, net, fast)
    opt = make_adamw(net.parameters(), fast, lr=1e-3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = (torch.rand(batch, 1, size, size, generator=g) > 0.5).float()
    weights = tuple(net.loss_weights)

    def step() -> None:
        loss = model_loss(train(x), y, weights, fused=fast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # first call: allocations, kernel selection
    conn.send("ready")
    while True:
        n = conn.recv()
        if n is None:
            return
        t = time.perf_counter()
        for _ in range(n):
            step()
        conn.send(time.perf_counter() - t)


class _Group:
    """The ``layout.workers`` processes of one layout, started once and kept for every round."""

    def __init__(self, ctx, model: str, layout: Layout, size: int, batch: int):
        self.layout, self.batch = layout, batch
        self.pipes, self.procs = [], []
        for _ in range(layout.workers):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_layout_worker, args=(child, model, layout.threads, size, batch), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)
        for c in self.pipes:
            if c.recv() != "ready":  # pragma: no cover - the worker always says ready or dies
                raise RuntimeError("layout worker did not start")

    def run(self, steps: int) -> float:
        """Aggregate images/s of ``steps`` steps in every process at once (wall time of the slowest)."""
        t = time.perf_counter()
        for c in self.pipes:
            c.send(steps)
        for c in self.pipes:
            c.recv()
        return self.layout.workers * steps * self.batch / (time.perf_counter() - t)

    def close(self) -> None:
        for c in self.pipes:
            try:
                c.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def measure_layouts(model: str, cores: int, *, rounds: int, size: int = 224, batch: int = 8,
                    unit_seconds: float = 4.0) -> dict[Layout, list[float]]:
    """Aggregate training images/s of ``model`` per round for every layout of ``cores`` cores, the layouts
    interleaved round by round (the order flips every round). Each unit trains about ``unit_seconds``."""
    ctx = mp.get_context("spawn")  # fresh interpreters: thread settings take effect before torch starts
    groups = [_Group(ctx, model, lay, size, batch) for lay in layouts_for(cores)]
    try:
        ref = groups[0]
        t = time.perf_counter()
        ref.run(1)
        steps = max(1, round(unit_seconds / max(time.perf_counter() - t, 1e-3)))
        for g in groups:  # warm-up round
            g.run(1)
        rates: dict[Layout, list[float]] = {g.layout: [] for g in groups}
        for r in range(rounds):
            for g in (groups if r % 2 == 0 else groups[::-1]):
                rates[g.layout].append(g.run(steps))
        return rates
    finally:
        for g in groups:
            g.close()
