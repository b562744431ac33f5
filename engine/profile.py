"""Complexity profiler used by every table: parameters, MACs by three counters, weight size, latency.

:func:`profile_model` returns one flat ``dict`` per model (CSV-friendly; see ``PROFILE_KEYS``).
Conventions (docs/protocol.md §6, §7; docs/models.md §0):

* ``params`` = ``sum(p.numel())`` over all parameters; ``trainable_params`` those with
  ``requires_grad``. Buffers (BatchNorm statistics) are reported apart (``buffer_numel``).
* All MACs are counted on CPU at **batch 1**, 1 x 3 x H x W, ``eval()``, under inference mode
  (EGE-UNet's GHPA masks are computed at batch 1 whatever the batch, so MACs do not scale).

  - ``macs`` / ``gmacs``: ``torch.utils.flop_counter.FlopCounterMode`` total / 2 (it counts
    2 FLOPs per MAC; convolutions, mm/bmm, attention; norms, element-wise ops and interpolation
    count 0). The primary, dependency-free MAC column.
  - ``thop_macs``: legacy ``thop.profile`` (``thop==0.1.1.post2209072238``) - the convention of
    the EGE-UNet paper's "GFLOPs" column (1 MAC reported as 1 "FLOP"); compare with papers only
    through this column. For EGE-UNet thop == FlopCounter/2 exactly (72,096,256); for UNet-32
    thop over-counts transposed convolutions (x stride^2: 13.746 G vs ~12.1 G), and for UNeXt
    it also counts LayerNorm/BN elements (0.573 G vs 0.562 G). ``thop_params`` is thop's own
    parameter count (45,806 for EGE-UNet: no GroupNorm, no custom-module parameters).
  - ``fvcore_flops``: ``fvcore.nn.FlopCountAnalysis`` total (1 fused multiply-add = 1 flop;
    also counts norms and bilinear up-sampling: 80,524,800 for EGE-UNet).

  Each counter's name and version are in the row (``*_counter``, ``*_version``). thop profiles a
  deep copy (it adds ``total_ops``/``total_params`` buffers to every module); warnings and prints
  of thop/fvcore are silenced; counting runs on one thread (robust on shared CPUs). A counter
  that fails leaves ``None`` and a note in ``counter_errors``.
* ``size_fp32_kib`` / ``size_fp16_kib``: parameter bytes / 1024 (KiB, 1 KiB = 1,024 bytes) at 4 and
  2 bytes per parameter (EGE-UNet: 208.5 / 104.2 KiB).
* Latency (never asserted in tests): ``torch.utils.benchmark.Timer.blocked_autorange`` at batch
  ``batch_latency`` (median and inter-quartile range in ms over the timed blocks) and throughput at
  batch ``batch_throughput`` (images / median second), after ``warmup`` untimed iterations, in
  ``eval()`` + ``torch.inference_mode()``, with a fixed thread count (recorded) and the device
  synchronised before every clock read (CUDA). The caller's model is never modified: all work is
  done on deep copies.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import platform
import warnings
from importlib import metadata
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

LEGACY_THOP_VERSION = "0.1.1.post2209072238"
COUNTERS = ("flopcounter", "thop", "fvcore")


# -- helpers ---------------------------------------------------------------------------------------
def dist_version(dist: str) -> str | None:
    """Installed version of a distribution (PEP 440 normalised when possible), or None."""
    try:
        raw = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
    try:  # legacy thop's metadata says "0.1.1-2209072238" for 0.1.1.post2209072238
        from packaging.version import Version

        return str(Version(raw))
    except Exception:
        return raw


def thop_version() -> str:
    """Version of the package that provides ``import thop`` (legacy thop or ultralytics-thop)."""
    legacy, ultra = dist_version("thop"), dist_version("ultralytics-thop")
    if legacy and not ultra:
        return legacy
    if ultra and not legacy:
        return f"ultralytics-thop {ultra}"
    if legacy and ultra:  # whichever was installed last owns the import name
        return f"thop {legacy} + ultralytics-thop {ultra} (ambiguous)"
    return "not installed"


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Silence stdout/stderr prints, Python warnings and library log records (thop, fvcore, jit)."""
    loggers = [logging.getLogger(n) for n in ("fvcore", "thop", "iopath", "torch.jit")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Temporarily set the intra-op thread count (None = keep); yields the count in effect."""
    old = torch.get_num_threads()
    if n is not None and n > 0:
        torch.set_num_threads(int(n))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _input(batch: int, in_channels: int, hw: tuple[int, int], device: str | torch.device) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, in_channels, *hw, generator=g).to(device)


def _resolve(model_or_name: nn.Module | str, name: str | None) -> tuple[nn.Module, str, str | None]:
    if isinstance(model_or_name, str):
        from zoo.registry import create_model, get_entry

        entry = get_entry(model_or_name)
        return create_model(model_or_name), model_or_name, entry.family
    return model_or_name, name or type(model_or_name).__name__, None


# -- counters --------------------------------------------------------------------------------------
def count_params(model: nn.Module) -> dict[str, int]:
    """``params`` (all), ``trainable_params`` and ``buffer_numel`` (floating-point buffers)."""
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "buffer_numel": sum(b.numel() for b in model.buffers() if b.is_floating_point()),
    }


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("cpu").eval()


def count_flopcounter(model: nn.Module, x: Tensor) -> int:
    """FlopCounterMode total FLOPs (2 per MAC) of one forward of ``x``."""
    from torch.utils.flop_counter import FlopCounterMode

    m = _cpu_eval_copy(model)
    with silenced(), torch_threads(1), torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            m(x)
    return int(counter.get_total_flops())


def count_thop(model: nn.Module, x: Tensor) -> tuple[int, int]:
    """Legacy-thop ``(MACs, params)`` of one forward of ``x``, profiled on a deep copy."""
    m = _cpu_eval_copy(model)  # thop registers total_ops/total_params buffers on every module
    with silenced(), torch_threads(1), torch.no_grad():
        import thop  # its import warns (distutils LooseVersion)

        macs, params = thop.profile(m, inputs=(x,), verbose=False)
    return int(round(float(macs))), int(round(float(params)))


def count_fvcore(model: nn.Module, x: Tensor) -> tuple[int, dict[str, int]]:
    """fvcore ``FlopCountAnalysis`` total and its per-operator breakdown."""
    m = _cpu_eval_copy(model)
    with silenced(), torch_threads(1), torch.no_grad():
        from fvcore.nn import FlopCountAnalysis  # its import warns (torch.jit.script deprecation)

        fa = FlopCountAnalysis(m, x)
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        fa.tracer_warnings("none")
        total = int(fa.total())
        by_op = {k: int(v) for k, v in fa.by_operator().items()}
    return total, by_op


# -- latency ---------------------------------------------------------------------------------------
def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure_latency(model: nn.Module, x: Tensor, *, threads: int | None = None, warmup: int = 10,
                    min_run_time: float = 1.0) -> dict[str, float | int]:
    """Time ``model(x)`` (model already on ``x``'s device, in eval) with ``torch.utils.benchmark``.

    Returns ``median_ms``, ``iqr_ms``, ``p25_ms``, ``p75_ms`` (over the timed blocks; each block
    time is divided by its number of runs), ``runs`` (timed forward passes) and ``threads``.
    """
    from torch.utils import benchmark

    sync = _sync(x.device)

    def step() -> None:
        with torch.inference_mode():
            model(x)
        sync()

    with torch_threads(threads) as n_threads:
        for _ in range(max(int(warmup), 0)):
            step()
        timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=n_threads,
                                label="profile", description=f"batch {x.shape[0]}")
        meas = timer.blocked_autorange(min_run_time=min_run_time)
    times = torch.tensor(meas.times, dtype=torch.float64) * 1e3
    p25, p75 = (float(torch.quantile(times, q)) for q in (0.25, 0.75))
    return {
        "median_ms": float(torch.quantile(times, 0.5)),
        "iqr_ms": p75 - p25,
        "p25_ms": p25,
        "p75_ms": p75,
        "runs": int(len(meas.times) * meas.number_per_run),
        "threads": n_threads,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


# -- the profiler ----------------------------------------------------------------------------------
def profile_model(
    model_or_name: nn.Module | str,
    size: int | tuple[int, int] = 256,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    latency: bool = True,
    batch_latency: int = 1,
    batch_throughput: int = 16,
    *,
    in_channels: int = 3,
    counters: tuple[str, ...] = COUNTERS,
    warmup: int = 10,
    min_run_time: float = 1.0,
    name: str | None = None,
) -> dict[str, Any]:
    """Profile one model (an ``nn.Module`` or a registered name); see the module docstring.

    ``batch_throughput=0`` skips the throughput measurement; ``counters`` selects among
    ``flopcounter``, ``thop`` and ``fvcore`` (the others are left ``None``).
    """
    unknown = set(counters) - set(COUNTERS)
    if unknown:
        raise ValueError(f"unknown counter(s) {sorted(unknown)}; valid: {', '.join(COUNTERS)}")
    model, model_name, family = _resolve(model_or_name, name)
    dev = torch.device(device)
    hw = _hw(size)
    x1 = _input(1, in_channels, hw, "cpu")
    counts = count_params(model)
    row: dict[str, Any] = {
        "model": model_name,
        "family": family,
        "input": f"1x{in_channels}x{hw[0]}x{hw[1]}",
        "height": hw[0],
        "width": hw[1],
        "count_batch": 1,
        **counts,
        "size_fp32_kib": counts["params"] * 4 / 1024,
        "size_fp16_kib": counts["params"] * 2 / 1024,
        "macs": None,
        "gmacs": None,
        "flopcounter_flops": None,
        "macs_counter": "torch.utils.flop_counter.FlopCounterMode total/2",
        "macs_counter_version": f"torch {torch.__version__}",
        "thop_macs": None,
        "thop_params": None,
        "thop_counter": "thop.profile (legacy thop, conv/linear MACs)",
        "thop_version": thop_version(),
        "fvcore_flops": None,
        "fvcore_counter": "fvcore.nn.FlopCountAnalysis total",
        "fvcore_version": dist_version("fvcore") or "not installed",
        "fvcore_by_operator": None,
        "counter_errors": "",
    }
    errors: list[str] = []

    def attempt(label: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # one failing counter must not lose the whole row
            errors.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    if "flopcounter" in counters:
        def fc() -> None:
            flops = count_flopcounter(model, x1)
            row.update(flopcounter_flops=flops, macs=flops // 2, gmacs=flops / 2e9)
        attempt("flopcounter", fc)
    if "thop" in counters:
        def th() -> None:
            macs, params = count_thop(model, x1)
            row.update(thop_macs=macs, thop_params=params)
        attempt("thop", th)
    if "fvcore" in counters:
        def fv() -> None:
            total, by_op = count_fvcore(model, x1)
            row.update(fvcore_flops=total, fvcore_by_operator=by_op)
        attempt("fvcore", fv)
    row["counter_errors"] = "; ".join(errors)

    row.update({
        "device": str(dev),
        "device_name": device_name(dev),
        "threads": threads if threads else torch.get_num_threads(),
        "torch_version": torch.__version__,
        "timer": "torch.utils.benchmark.Timer.blocked_autorange" if latency else None,
        "warmup": warmup if latency else None,
        "latency_batch": None, "latency_ms_median": None, "latency_ms_iqr": None,
        "latency_ms_p25": None, "latency_ms_p75": None, "latency_runs": None,
        "throughput_batch": None, "throughput_img_s": None, "throughput_ms_median": None,
    })
    if latency:
        work = copy.deepcopy(model).to(dev).eval()
        lat = measure_latency(work, _input(batch_latency, in_channels, hw, dev), threads=threads,
                              warmup=warmup, min_run_time=min_run_time)
        row.update(latency_batch=batch_latency, latency_ms_median=lat["median_ms"], latency_ms_iqr=lat["iqr_ms"],
                   latency_ms_p25=lat["p25_ms"], latency_ms_p75=lat["p75_ms"], latency_runs=lat["runs"],
                   threads=lat["threads"])
        if batch_throughput and batch_throughput > 0:
            thr = measure_latency(work, _input(batch_throughput, in_channels, hw, dev), threads=threads,
                                  warmup=warmup, min_run_time=min_run_time)
            row.update(throughput_batch=batch_throughput, throughput_ms_median=thr["median_ms"],
                       throughput_img_s=batch_throughput / (thr["median_ms"] / 1e3))
        del work
    return row


PROFILE_KEYS: tuple[str, ...] = (
    "model", "family", "input", "height", "width", "count_batch", "params", "trainable_params", "buffer_numel",
    "size_fp32_kib", "size_fp16_kib", "macs", "gmacs", "flopcounter_flops", "macs_counter",
    "macs_counter_version", "thop_macs", "thop_params", "thop_counter", "thop_version", "fvcore_flops",
    "fvcore_counter", "fvcore_version", "fvcore_by_operator", "counter_errors", "device", "device_name",
    "threads", "torch_version", "timer", "warmup", "latency_batch", "latency_ms_median", "latency_ms_iqr",
    "latency_ms_p25", "latency_ms_p75", "latency_runs", "throughput_batch", "throughput_img_s",
    "throughput_ms_median",
)
"""Keys of a :func:`profile_model` row, in order."""
