"""``python -m studies.budget``: the parameter-budget gate (CI).

    python -m studies.budget [--models NAME ... | all] [--max-params N] [--max-macs N] [--size 256]

Rule (one, explicit):

* No arguments: gate the reference ``egeunet`` on its exact size - params **== 53,374** and legacy
  thop MACs **== 72,096,256** at 1x3x256x256. Any change at all fails: the reference is the
  paper's model, not a budget to stay under.
* ``--max-params N`` (and/or ``--max-macs N``): every selected model (default ``egeunet``) must
  have params <= N (thop MACs <= N). For the spec's variant budget "< 60,000" pass ``--max-params
  59999``; the width x1.5/x2, plain-conv/plain-UNet and only-xy variants exceed it by design.
* ``--models`` without a ceiling: a model with a known budget (``KNOWN_BUDGETS``) uses it; any
  other model is gated on the facts recorded in its registry entry (params exactly; thop MACs
  within the entry's ``macs_rel_tol`` when recorded) - "the model still has the size we published".

Exit status: 0 all pass; 1 a model is over (or off) its budget, named on stderr; 2 usage error
(unknown model names; the valid ones are listed).

Why EGE-UNet is "50KB" in the abstract and 53,374 here
-------------------------------------------------------
``sum(p.numel())`` of the official model is **53,374** (paper table: 0.053 M). The author's log
(EGE-UNet#1) also prints legacy thop's "params" **45,806**: thop counts only modules it has a rule
for, so it misses the GroupNorm affine parameters (512), the channels-first LayerNorm parameters
inside GHPA/GAB (2,096) and the GHPA mask tensors ``params_xy/zx/zy`` (4,960):
512 + 2,096 + 4,960 = 7,568 = 53,374 - 45,806. Stored as weights the model takes
53,374 x 4 B = 213,496 B = **208.5 KiB** in fp32 and 106,748 B = **104.2 KiB** in fp16 - neither
is 50 KB. The abstract's "50KB" is best read as "about 50 K parameters", a rhetorical round-down;
never gate anything on < 50,000 (the reference fails it: ``--max-params 50000`` exits 1).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Sequence

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from studies import _cli
from studies._cli import CHECK_FAILED, UnknownModels, console, fail, resolve_models

PROG = "python -m studies.budget"


@dataclass(frozen=True)
class Budget:
    """A size budget. ``exact`` = params (and MACs, when given) must equal; else they are ceilings."""

    params: int | None
    thop_macs: int | None = None
    exact: bool = False
    macs_rel_tol: float = 0.0
    source: str = ""

    def describe_params(self) -> str:
        if self.params is None:
            return "—"
        return f"== {self.params:,}" if self.exact else f"<= {self.params:,}"

    def describe_macs(self) -> str:
        if self.thop_macs is None:
            return "—"
        if self.exact:
            return f"{self.thop_macs:,} ±{self.macs_rel_tol:.1%}" if self.macs_rel_tol else f"== {self.thop_macs:,}"
        return f"<= {self.thop_macs:,}"

    def check(self, params: int, macs: int | None) -> list[str]:
        """Reasons the counts break this budget (empty = pass)."""
        why = []
        if self.params is not None:
            if self.exact and params != self.params:
                why.append(f"params {params:,} != {self.params:,}")
            elif not self.exact and params > self.params:
                why.append(f"params {params:,} > {self.params:,}")
        if self.thop_macs is not None:
            if macs is None:
                why.append("thop MACs could not be counted")
            elif self.exact and abs(macs - self.thop_macs) > self.macs_rel_tol * self.thop_macs:
                why.append(f"thop MACs {macs:,} != {self.thop_macs:,}")
            elif not self.exact and macs > self.thop_macs:
                why.append(f"thop MACs {macs:,} > {self.thop_macs:,}")
        return why


# The reference configuration: exact (docs/models.md §0.1, §1.7).
KNOWN_BUDGETS: dict[str, Budget] = {
    "egeunet": Budget(params=53_374, thop_macs=72_096_256, exact=True, source="reference (docs/models.md §1.7)"),
}
DEFAULT_MODELS = ("egeunet",)


def budget_for(name: str, max_params: int | None, max_macs: int | None) -> Budget:
    """The budget ``name`` is gated on under the rule in the module docstring."""
    if max_params is not None or max_macs is not None:
        return Budget(params=max_params, thop_macs=max_macs, exact=False, source="command line")
    if name in KNOWN_BUDGETS:
        return KNOWN_BUDGETS[name]
    from zoo.registry import get_entry

    e = get_entry(name)
    return Budget(params=e.params, thop_macs=e.thop_macs, exact=True, macs_rel_tol=e.macs_rel_tol,
                  source="registry entry")


def build_parser() -> argparse.ArgumentParser:
    p = _cli.parser(PROG, "The parameter-budget gate (CI): params and legacy-thop MACs of registered models "
                          "against their budget (the rule: python -m pydoc studies.budget).", epilog=EPILOG)
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="registered model names, glob patterns or 'all' (default: egeunet)")
    p.add_argument("--max-params", type=int, default=None, help="parameter ceiling (params <= N)")
    p.add_argument("--max-macs", type=int, default=None, help="legacy-thop MAC ceiling (MACs <= N)")
    p.add_argument("--size", type=int, default=256, help="input side for the MAC count (default 256)")
    _cli.add_format(p)
    return p


def gate(names: Sequence[str], max_params: int | None = None, max_macs: int | None = None,
         size: int = 256) -> list[dict[str, Any]]:
    """Count params and legacy-thop MACs (batch 1) of each model and check it against its budget."""
    import torch

    from zoo.registry import create_model
    from engine.profile import count_params, count_thop

    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows = []
    for name in names:
        b = budget_for(name, max_params, max_macs)
        if size != 256 and b.exact:  # exact MAC facts are at 256 x 256
            b = Budget(params=b.params, exact=True, source=b.source)
        try:
            model = create_model(name)
        except Exception as exc:  # a model that does not build fails its gate
            rows.append({"model": name, "params": None, "budget": b, "thop_macs": None, "ok": False,
                         "why": f"does not build: {type(exc).__name__}: {exc}", "gated": True})
            continue
        params = count_params(model)["params"]
        try:
            macs: int | None = count_thop(model, x)[0]
        except Exception:
            macs = None
        why = b.check(params, macs)
        rows.append({"model": name, "params": params, "budget": b, "thop_macs": macs, "ok": not why,
                     "why": "; ".join(why), "gated": b.params is not None or b.thop_macs is not None})
    return rows


def render(rows: Sequence[dict[str, Any]], size: int) -> Group:
    """The gate's table (80 columns), then one line per budget source and per failure."""
    t = Table(title=f"Parameter budget (legacy thop MACs at 1x3x{size}x{size})", box=box.SIMPLE_HEAD,
              pad_edge=False, title_justify="left")
    t.add_column("model", overflow="fold")
    for col in ("params", "params budget", "thop MACs", "MACs budget"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_column("result", no_wrap=True)
    sources: dict[str, list[str]] = {}
    fails = []
    for r in rows:
        b: Budget = r["budget"]
        sources.setdefault(b.source or "none", []).append(r["model"])
        result = "[green]pass[/green]" if r["ok"] and r["gated"] else (
            "[yellow]no budget[/yellow]" if not r["gated"] else "[bold red]FAIL[/bold red]")
        if not r["ok"]:
            fails.append(Text.from_markup(f"[bold red]FAIL[/bold red] {r['model']}: {r['why']}"))
        t.add_row(r["model"], "—" if r["params"] is None else f"{r['params']:,}", b.describe_params(),
                  "—" if r["thop_macs"] is None else f"{r['thop_macs']:,}", b.describe_macs(), result)
    notes = [Text(f"budget of {', '.join(models)}: {src}") for src, models in sources.items()]
    return Group(t, *notes, *fails)


COLUMNS = ("model", "params", "params_budget", "thop_macs", "macs_budget", "budget_source", "ok", "gated", "why")


def _row(r: dict[str, Any]) -> dict[str, Any]:
    b: Budget = r["budget"]
    return {"model": r["model"], "params": r["params"], "params_budget": b.describe_params(),
            "thop_macs": r["thop_macs"], "macs_budget": b.describe_macs(), "budget_source": b.source,
            "ok": r["ok"], "gated": r["gated"], "why": r["why"]}


EPILOG = f"""\
examples:
  python -m studies.budget                 # the CI gate: EGE-UNet exactly
  python -m studies.budget --models 'egeunet*' --max-params 59999
  python -m studies.budget --models all --format json

{_cli.EXIT_LINE}
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        names = resolve_models(args.models, default=DEFAULT_MODELS)
    except UnknownModels as exc:
        fail(PROG, str(exc))
    rows = gate(names, args.max_params, args.max_macs, args.size)
    _cli.emit([_row(r) for r in rows], COLUMNS, args.format, console(), lambda: render(rows, args.size))
    failed = [r for r in rows if not r["ok"]]
    if failed:
        fail(PROG, "over budget: " + "; ".join(f"{r['model']} ({r['why']})" for r in failed), CHECK_FAILED)
    print(f"budget: {len(rows)} model(s) within budget", file=sys.stdout if args.format == "table" else sys.stderr,
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
