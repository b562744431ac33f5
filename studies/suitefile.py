"""Suites as TOML files: ``python -m studies.run --suite path/to/suite.toml``.

A suite file declares what a built-in suite (:data:`studies.suites.SUITES`) declares in Python::

    name = "my_bench"                     # results go to <results>/my_bench/ (default: the file's stem)
    description = "TinySeg against EGE-UNet"
    datasets = ["synthetic"]              # default: ["isic2018"]
    seeds = 1                             # seeds per cell at every budget (default 5, 3 at cpu; smoke runs 1)
    seeds_at_budget = { paper = 5 }       # where a budget differs from `seeds` (default: none if `seeds` is given)
    budget = "smoke"                      # default budget: smoke, cpu or paper (default: cpu)
    reference = "egeunet"                 # the variant the others are compared with (a model or a label)

    variants = [
        "egeunet",                                              # a registered model
        "tinyseg.model:build(width=4)",                         # an outside model, keyword arguments inline
        { model = "tinyseg.model:build", kwargs = { width = 8 }, label = "TinySeg-8" },
        { model = "transfuse_s", budgets = ["paper"] },         # runs only at these budgets
    ]

Only ``variants`` is required. A variant is a string (``MODEL`` or ``MODEL(k=v, ...)`` with Python
literal values, as ``--variants`` takes them) or a table with ``model`` (required), ``kwargs``,
``label`` (the name in tables; default: the variant key, e.g. ``tinyseg.model:build(width=8)``) and
``budgets``. ``MODEL`` is a registered model, an ``egeunet.models`` entry point or
``package.module:callable`` (see :mod:`zoo.registry`); keyword arguments become the run's
``model_overrides`` and so part of its config hash. ``[[variants]]`` tables work as well.

Every mistake is ONE line naming the file, the key and what is allowed (:class:`SuiteFileError`, a
:class:`~studies.suites.SuiteError`, so the CLIs exit 2). :func:`dump_suite` writes any suite in this
format (``python -m studies.suitefile ablation_ghpa`` prints the built-in suite as a file).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from studies.suites import (
    BUDGETS,
    DEFAULT_SEEDS_AT_BUDGET,
    DATASETS,
    SUITES,
    Suite,
    SuiteError,
    dataset_problem,
    is_outside_model,
    kwargs_problem,
    parse_variant,
    unknown_model_message,
    variant_key,
)

TOP_KEYS = ("name", "description", "variants", "datasets", "seeds", "seeds_at_budget", "budget", "reference")
VARIANT_KEYS = ("model", "kwargs", "label", "budgets")
VARIANTS_HINT = ('a list of models: "NAME", "package.module:callable(k=v)" or tables '
                 '{ model = "...", kwargs = { ... }, label = "...", budgets = [...] }')
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class SuiteFileError(SuiteError):
    """A suite file that cannot be used: one line naming the file, the key and what is allowed."""


def _kind(v: Any) -> str:
    """The TOML name of a value's type, for error messages."""
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    if isinstance(v, int):
        return f"an integer ({v})"
    if isinstance(v, float):
        return f"a float ({v})"
    if isinstance(v, str):
        return f"a string ({json.dumps(v)})"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return f"a {type(v).__name__}"


def _toml() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise SuiteFileError("suite files need Python 3.11 (tomllib) or the tomli package "
                                 "(pip install tomli)") from None
    return tomllib


def load_suite(path: str | os.PathLike[str]) -> Suite:
    """The suite declared by the TOML file ``path``; raises :class:`SuiteFileError` (one line)."""
    where = str(path)
    p = Path(path).expanduser()
    if not p.exists():
        raise SuiteFileError(f"{where}: no such suite file (give the path of a .toml suite file, or a built-in "
                             f"suite: {', '.join(SUITES)})")
    if p.is_dir():
        raise SuiteFileError(f"{where}: is a folder, not a suite file (give the path of a .toml file)")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise SuiteFileError(f"{where}: cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SuiteFileError(f"{where}: is not UTF-8 text (TOML files are UTF-8)") from None
    tomllib = _toml()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SuiteFileError(f"{where}: is not valid TOML: {e} (see https://toml.io)") from None
    return suite_from_dict(data, where, default_name=p.stem)


def suite_from_dict(data: dict[str, Any], where: str = "<suite>", default_name: str = "suite") -> Suite:
    """The :class:`Suite` a parsed suite file declares; ``where`` names the file in errors."""

    def fail(key: str, problem: str) -> SuiteFileError:
        return SuiteFileError(f"{where}: {key}: {problem}")

    for k in data:
        if k not in TOP_KEYS:
            raise SuiteFileError(f"{where}: unknown key {k!r}; allowed keys: {', '.join(TOP_KEYS)}")
    if "variants" not in data:
        raise SuiteFileError(f"{where}: missing key 'variants': {VARIANTS_HINT}")

    name = data.get("name", default_name)
    if not isinstance(name, str) or not _NAME.match(name):
        got = _kind(name) if not isinstance(name, str) else json.dumps(name)
        raise fail("name", f"must be a folder name of letters, digits, '_', '-' and '.' (not first), got {got}")
    description = data.get("description", f"suite file {Path(where).name}")
    if not isinstance(description, str):
        raise fail("description", f"must be a string, got {_kind(description)}")
    seeds = data.get("seeds", 5)
    if not _is_count(seeds):
        raise fail("seeds", f"must be an integer >= 1 (seeds per variant and dataset), got {_kind(seeds)}")
    seeds_at_budget = data.get("seeds_at_budget", {} if "seeds" in data else dict(DEFAULT_SEEDS_AT_BUDGET))
    if not isinstance(seeds_at_budget, dict):
        raise fail("seeds_at_budget", f"must be a table of budget = seeds, e.g. {{ cpu = 3 }}; "
                                      f"got {_kind(seeds_at_budget)}")
    for b, n in seeds_at_budget.items():
        if b not in BUDGETS:
            raise fail("seeds_at_budget", f"unknown budget {b!r}; valid budgets: {', '.join(BUDGETS)}")
        if not _is_count(n):
            raise fail("seeds_at_budget", f"{b} must be an integer >= 1, got {_kind(n)}")
    budget = data.get("budget", "cpu")
    if not isinstance(budget, str):
        raise fail("budget", f"must be a string, one of {', '.join(BUDGETS)}; got {_kind(budget)}")
    if budget not in BUDGETS:
        raise fail("budget", f"unknown budget {budget!r}; valid budgets: {', '.join(BUDGETS)}")
    datasets = _datasets(data.get("datasets", ["isic2018"]), fail)

    variants: list[str] = []
    extra: dict[str, list[str]] = {}
    models: dict[str, str] = {}
    overrides: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    seen: dict[str, str] = {}  # variant key or label -> where it was declared
    items = data["variants"]
    if not isinstance(items, list):
        raise fail("variants", f"must be {VARIANTS_HINT}; got {_kind(items)}")
    if not items:
        raise fail("variants", f"is empty; list at least one model ({VARIANTS_HINT})")
    for i, item in enumerate(items):
        at = f"variants[{i}]"
        model, kwargs, label, budgets = _variant(item, at, fail)
        key = variant_key(model, kwargs)
        for name_, what in ((key, "variant"), (label, "label")):
            if name_ is not None and name_ in seen:
                raise fail(at, f"{what} {name_!r} is already declared by {seen[name_]}; every variant and label "
                               "must be unique")
        seen[key] = at
        if label is not None and label != key:
            seen[label] = at
            labels[key] = label
        if key != model:
            models[key] = model
        if kwargs:
            overrides[key] = kwargs
        if budgets is None or set(budgets) == set(BUDGETS):
            variants.append(key)
        else:
            for b in budgets:
                extra.setdefault(b, []).append(key)

    suite = Suite(name, description, tuple(variants), datasets=datasets, seeds=seeds,
                  seeds_at_budget=dict(seeds_at_budget), budget=budget,
                  labels=labels, extra_at_budget={b: tuple(v) for b, v in extra.items()}, models=models,
                  overrides=overrides)
    reference = data.get("reference")
    if reference is not None:
        if not isinstance(reference, str):
            raise fail("reference", f"must be a string (a variant or its label), got {_kind(reference)}")
        by_label = {suite.label(k): k for k in suite.all_variants()}
        ref = reference if reference in suite.all_variants() else by_label.get(reference)
        if ref is None:
            try:
                ref = variant_key(*parse_variant(reference))
            except SuiteError:
                ref = reference
        if ref not in suite.all_variants():
            raise fail("reference", f"{reference!r} is not a variant of this suite; its variants: "
                                    f"{', '.join(by_label)}")
        suite = dataclasses.replace(suite, reference=ref)
    if name in SUITES and suite != SUITES[name]:
        raise fail("name", f"{name!r} is a built-in suite, declared differently; its results would mix with the "
                           "built-in suite's: choose another name")
    return suite


def _datasets(value: Any, fail: Any) -> tuple[str, ...]:
    hint = f"a list of dataset names from {', '.join(DATASETS)}, e.g. [\"synthetic\"]"
    if not isinstance(value, list) or not value:
        raise fail("datasets", f"must be {hint}; got {_kind(value) if value != [] else 'an empty array'}")
    for i, d in enumerate(value):
        if not isinstance(d, str):
            raise fail(f"datasets[{i}]", f"must be a dataset name ({', '.join(DATASETS)}), got {_kind(d)}")
        why = dataset_problem(d)
        if why:
            raise fail(f"datasets[{i}]", why)
    if len(set(value)) != len(value):
        raise fail("datasets", "lists a dataset twice")
    return tuple(value)


def _variant(item: Any, at: str, fail: Any) -> tuple[str, dict[str, Any], str | None, list[str] | None]:
    """(model, kwargs, label, budgets) of one entry of ``variants``."""
    label: str | None = None
    budgets: list[str] | None = None
    if isinstance(item, str):
        try:
            model, kwargs = parse_variant(item)
        except SuiteError as e:
            raise fail(at, str(e)) from None
    elif isinstance(item, dict):
        for k in item:
            if k not in VARIANT_KEYS:
                raise fail(at, f"unknown key {k!r}; allowed keys: {', '.join(VARIANT_KEYS)}")
        if "model" not in item:
            raise fail(at, "missing key 'model': a registered model, an entry-point name or "
                           "package.module:callable")
        model = item["model"]
        if not isinstance(model, str) or not model.strip():
            raise fail(f"{at}.model", f"must be a model name or package.module:callable, got {_kind(model)}")
        model = model.strip()
        if "(" in model:
            raise fail(f"{at}.model", "give keyword arguments in 'kwargs', e.g. kwargs = { width = 8 }")
        kwargs = item.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise fail(f"{at}.kwargs",
                       f"must be a table of keyword arguments, e.g. {{ width = 8 }}; got {_kind(kwargs)}")
        why = kwargs_problem(kwargs)
        if why:
            raise fail(f"{at}.kwargs", why)
        kwargs = dict(kwargs)
        label = item.get("label")
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise fail(f"{at}.label", f"must be a non-empty string (the name in tables), got {_kind(label)}")
        if "budgets" in item:
            budgets = item["budgets"]
            if not isinstance(budgets, list) or not budgets or not all(isinstance(b, str) for b in budgets):
                raise fail(f"{at}.budgets", f"must be a non-empty list of budgets from {', '.join(BUDGETS)}, "
                                            f"got {_kind(budgets)}")
            for b in budgets:
                if b not in BUDGETS:
                    raise fail(f"{at}.budgets", f"unknown budget {b!r}; valid budgets: {', '.join(BUDGETS)}")
    else:
        raise fail(at, f"must be a model name or a table {{ model = ..., kwargs = ..., label = ... }}, "
                       f"got {_kind(item)}")
    _check_model(model, f"{at}.model" if isinstance(item, dict) else at, fail)
    return model, kwargs, label, budgets


def _check_model(model: str, at: str, fail: Any) -> None:
    """A registered model, an entry point, or a ``module:callable`` that imports (it is not built here)."""
    from zoo.registry import ExternalModelError, get_entry, is_import_path, list_models

    if model in list_models():
        return
    if not is_outside_model(model):
        raise fail(at, unknown_model_message(model))
    if is_import_path(model):
        try:
            get_entry(model)
        except ExternalModelError as e:
            raise fail(at, str(e)) from None


# --------------------------------------------------------------------------------------------- writing


def _value(v: Any) -> str:
    """``v`` as a TOML value (strings, booleans, numbers, arrays, inline tables)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    raise ValueError(f"{v!r} ({type(v).__name__}) cannot be written as TOML")


def _is_count(v: Any) -> bool:
    """An integer >= 1 (TOML booleans are not counts)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k, ensure_ascii=False)


#: the width the written suite files keep to (a line longer than this holds one word that cannot be split)
DUMP_WIDTH = 80


def _string_entry(key: str, v: str, width: int = DUMP_WIDTH) -> list[str]:
    """``key = "v"`` on one line, or, when that is wider than ``width``, as a multi-line string whose
    lines end in a backslash (TOML drops the newline and the next line's indent: the same value)."""
    line = f"{_key(key)} = {_value(v)}"
    text = _value(v)[1:-1]  # escaped, so no line break, quote or backslash sequence is split below
    if len(line) <= width or text != text.strip():
        return [line]  # whitespace at either end would be dropped by the line continuations
    out, indent = [f'{_key(key)} = """\\'], "    "
    start = 0
    while len(indent) + len(text) - start + 3 > width:
        # break after a space that is followed by a word: the spaces stay before the backslash
        cut = [i + 1 for i in range(start, len(text) - 1) if text[i] == " " and text[i + 1] != " "]
        fits = [c for c in cut if len(indent) + c - start + 1 <= width]
        if not (fits or cut):
            break
        end = fits[-1] if fits else cut[0]
        out.append(f"{indent}{text[start:end]}\\")
        start = end
    out.append(f'{indent}{text[start:]}"""')
    return out


def dump_suite(suite: Suite) -> str:
    """The suite file declaring ``suite`` (:func:`load_suite` of it gives an equal suite); its lines fit in
    :data:`DUMP_WIDTH` columns."""
    budgets: dict[str, list[str]] = {}
    for b, keys in suite.extra_at_budget.items():
        for k in keys:
            if k not in suite.variants:
                budgets.setdefault(k, []).append(b)
    lines = [
        "# A study suite: python -m studies.run --suite THIS_FILE",
        "# (format: studies/suitefile.py)",
        f"name = {_value(suite.name)}",
        *_string_entry("description", suite.description),
        f"datasets = {_value(list(suite.datasets))}",
        f"seeds = {suite.seeds}",
        f"seeds_at_budget = {_value(suite.seeds_at_budget)}",
        f"budget = {_value(suite.budget)}",
    ]
    if suite.reference is not None:
        lines.append(f"reference = {_value(suite.reference)}")
    lines += ["", "variants = ["]
    for k in suite.all_variants():
        model, kwargs = suite.model_of(k), suite.overrides_of(k)
        fields = {"model": model, **({"kwargs": kwargs} if kwargs else {}),
                  **({"label": suite.labels[k]} if k in suite.labels else {}),
                  **({"budgets": budgets[k]} if k in budgets else {})}
        lines.append(f"    {_value(model) if list(fields) == ['model'] else _value(fields)},")
    lines.append("]")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m studies.suitefile SUITE``: print a built-in suite (or a suite file, checked) as TOML."""
    from studies import _cli
    from studies.suites import get_suite

    prog = "python -m studies.suitefile"
    p = _cli.parser(prog, "Print a suite as a suite file (TOML): a start for your own suite.",
                    epilog="examples:\n  python -m studies.suitefile ablation_ghpa > my_suite.toml\n"
                           "  python -m studies.suitefile my_suite.toml   # check a file, print it back\n"
                           + _cli.EXIT_LINE)
    p.add_argument("suite", metavar="SUITE", help=f"a built-in suite ({', '.join(SUITES)}) or a PATH.toml")
    args = p.parse_args(argv)

    def body() -> int:
        sys.stdout.write(dump_suite(get_suite(args.suite)))
        return 0

    return _cli.guard(prog, body, ValueError)  # SuiteError, or a value TOML cannot hold


if __name__ == "__main__":
    sys.exit(main())
