"""Deploy check: export a registered model to ONNX, check onnxruntime against torch, size fp32/fp16/int8.

    python -m studies.export --model egeunet [--checkpoint RUN/checkpoints/best.pt] [--out DIR]
                             [--dataset isic2018 --data-root PATH]

* ONNX via ``torch.onnx.export(dynamo=False, opset 17)`` of a wrapper that returns ``SegOutput.logits`` only;
* onnxruntime (CPU, 1 thread) vs torch on a random input in the pipeline's range (uniform [0, 255], what
  ``engine.data.normalise`` produces): max abs diff of the logits, gate ``--tol`` (default 1e-4), exit 1 above it;
* the graph is cleaned by ``onnxscript.optimizer.optimize`` (constant folding, Identity removal);
* fp16 via ``onnxconverter_common.float16`` (I/O kept fp32), int8 via ``onnxruntime.quantization.quantize_dynamic``
  (QInt8 weights); file bytes and weight (initializer) bytes of each; max abs diff of each vs fp32;
* with ``--checkpoint`` and data: DSC (pooled) of each on the validation split and the change vs fp32;
* latency: median of ``--repeats`` batch-1 runs at ``--size``, onnxruntime and torch, both one thread.

Writes ``<out>/<model>.onnx``, ``<model>.fp16.onnx``, ``<model>.int8.onnx`` and ``<out>/<model>.csv``.
Default ``--out`` is ``<tmp>/egeunet-export``, outside the repo (latency is machine-dependent: never commit it).
Needs the ``deploy`` extra: ``pip install -e ".[deploy]"``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from studies import _cli

PROG = "python -m studies.export"
COLUMNS = ("model", "format", "file_bytes", "weight_bytes", "max_abs_diff", "dsc", "dsc_change",
           "ort_ms", "torch_ms")


def build_parser():
    p = _cli.parser(PROG, "Export a model to ONNX, check onnxruntime against torch, report fp32/fp16/int8 "
                    "sizes, DSC change and CPU latency.",
                    epilog="examples:\n"
                           "  python -m studies.export --model egeunet \\\n"
                           "      --checkpoint RUN/checkpoints/best.pt --dataset isic2018\n"
                           "  python -m studies.export --model egeunet --tol 1e-2   # untrained weights\n\n"
                           "Untrained weights reach large logits, so their float32 round-off can exceed\n"
                           "the default --tol; the gate is meant for a trained checkpoint.\n\n"
                           + _cli.EXIT_LINE)
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--checkpoint", help="a run's best.pt (torch.load(...)['model'] is the state_dict)")
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "egeunet-export"),
                   help="output folder (default: <tmp>/egeunet-export, outside the repo)")
    p.add_argument("--dataset", default="isic2018", help="dataset for the DSC check (default isic2018)")
    p.add_argument("--data-root", help="data root for the DSC check (default: EGEUNET_DATA / shared data)")
    p.add_argument("--size", type=int, default=256, help="input side (default 256)")
    p.add_argument("--tol", type=float, default=1e-4, help="max abs logit diff ort vs torch (default 1e-4)")
    p.add_argument("--repeats", type=int, default=20, help="latency runs, median reported (default 20)")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many val images")
    _cli.add_format(p)
    return p


def _need_deploy():
    try:
        import onnx  # noqa: F401
        import onnxconverter_common  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise _cli.CLIError(f"{e.name or 'onnx/onnxruntime'} is not installed; the deploy check needs "
                            f"the deploy extra: pip install -e \".[deploy]\"")


def _weight_bytes(model) -> int:
    from onnx import numpy_helper
    total = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.HasField("t"):
                    total += numpy_helper.to_array(a.t).nbytes
    return total


def _session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _median_ms(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def export(args) -> tuple[list[dict], dict]:
    _need_deploy()
    import onnx
    import torch
    from onnxconverter_common import float16
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from zoo.contract import as_seg_output
    from zoo.registry import UnknownModelError, create_model

    try:
        net = create_model(args.model)
    except UnknownModelError as e:
        raise _cli.CLIError(str(e))
    if args.checkpoint:
        ck = Path(args.checkpoint)
        if not ck.is_file():
            raise _cli.CLIError(f"--checkpoint {ck}: no such file")
        try:
            net.load_state_dict(torch.load(ck, map_location="cpu", weights_only=True)["model"])
        except Exception as e:  # noqa: BLE001 - named in one line
            raise _cli.CLIError(f"--checkpoint {ck}: cannot load into {args.model}: {e}")
    net.eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return as_seg_output(self.m(x)).logits

    wrap = Logits(net).eval()
    out = _cli.check_output_dir(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    s = args.size
    x = torch.from_numpy((np.random.default_rng(0).random((1, 3, s, s)) * 255).astype(np.float32))
    paths = {"fp32": out / f"{args.model}.onnx", "fp16": out / f"{args.model}.fp16.onnx",
             "int8": out / f"{args.model}.int8.onnx"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrap, (x,), str(paths["fp32"]), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        from onnxscript import optimizer  # folds constants and drops the Identity chains fp16 trips on
        onnx.save(optimizer.optimize(onnx.load(str(paths["fp32"]))), str(paths["fp32"]))
        onnx.save(float16.convert_float_to_float16(onnx.load(str(paths["fp32"])), keep_io_types=True),
                  str(paths["fp16"]))
        root = logging.getLogger()  # the quantiser logs a pre-processing hint on the root logger
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(paths["fp32"]), str(paths["int8"]), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)

    torch.set_num_threads(1)
    with torch.no_grad():
        ref = wrap(x).numpy()
        torch_ms = _median_ms(lambda: wrap(x), args.repeats)
    sessions = {k: _session(p) for k, p in paths.items()}
    feed = {"image": x.numpy()}
    outs = {k: se.run(None, feed)[0] for k, se in sessions.items()}
    diffs = {k: float(np.abs(o - ref).max()) for k, o in outs.items()}

    dsc, note = _dsc(args, wrap, sessions) if args.checkpoint else ({}, "DSC not measured (no --checkpoint)")
    rows = []
    for k, p in paths.items():
        m = onnx.load(str(p))
        rows.append({"model": args.model, "format": k, "file_bytes": p.stat().st_size,
                     "weight_bytes": _weight_bytes(m), "max_abs_diff": diffs[k],
                     "dsc": dsc.get(k), "dsc_change": (dsc[k] - dsc["fp32"]) if k in dsc else None,
                     "ort_ms": _median_ms(lambda se=sessions[k]: se.run(None, feed), args.repeats),
                     "torch_ms": torch_ms if k == "fp32" else None})
    params = sum(p.numel() for p in net.parameters())
    return rows, {"params": params, "note": note, "diff": diffs["fp32"], "out": out,
                  "torch_dsc": dsc.get("torch")}


def _dsc(args, wrap, sessions):
    import torch

    from engine.data import load_split, normalise
    from engine.metrics import confusion_counts, summarize

    try:
        data = load_split(args.dataset, "val", size=args.size, root=args.data_root, n=args.max_images)
    except Exception as e:  # noqa: BLE001 - no data: say so, do not fail the export
        return {}, f"DSC not measured ({_cli.one_line(e)})"
    counts = {k: [] for k in (*sessions, "torch")}
    for i in range(len(data.ids)):
        xb = normalise(np.asarray(data.images[i:i + 1]))
        gt = torch.from_numpy(np.asarray(data.masks[i:i + 1], dtype=np.float32))
        with torch.no_grad():
            counts["torch"].append(confusion_counts(torch.sigmoid(wrap(xb)), gt))
        for k, se in sessions.items():
            lo = torch.from_numpy(se.run(None, {"image": xb.numpy()})[0])
            counts[k].append(confusion_counts(torch.sigmoid(lo), gt))
    res = {k: summarize(np.concatenate(c))["pooled_dsc"] for k, c in counts.items()}
    return res, f"DSC: pooled, {args.dataset} val, {len(data.ids)} images at {args.size}"


def _fmt(v, spec):
    return "-".rjust(int(spec.lstrip("+").split(".")[0])) if v is None else format(v, spec)


def render(rows, info, tol):
    lines = [f"{'format':6} {'file KB':>8} {'weights KB':>10} {'max|diff|':>10} {'DSC':>7} {'dDSC':>8} "
             f"{'ort ms':>7} {'torch ms':>8}"]
    for r in rows:
        lines.append(f"{r['format']:6} {r['file_bytes'] / 1e3:8.1f} {r['weight_bytes'] / 1e3:10.1f} "
                     f"{r['max_abs_diff']:10.2e} {_fmt(r['dsc'], '7.4f')} {_fmt(r['dsc_change'], '+8.4f')} "
                     f"{r['ort_ms']:7.1f} {_fmt(r['torch_ms'], '8.1f')}")
    lines.append(f"{rows[0]['model']}: {info['params']:,} params; fp32 ort vs torch max|diff| "
                 f"{info['diff']:.2e} (tol {tol:g})")
    lines.append(info["note"])
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        rows, info = export(args)
        _cli.write_csv_atomic(rows, Path(info["out"]) / f"{args.model}.csv", COLUMNS)
        if args.format == "table":
            print(render(rows, info, args.tol))
        else:
            _cli.emit(rows, COLUMNS, args.format)
        if not info["diff"] <= args.tol:
            hint = "" if args.checkpoint else " (untrained weights; see --help)"
            print(_cli.error_line(PROG, f"onnxruntime differs from torch by {info['diff']:.3e} > tol {args.tol:g}"
                                        f"{hint}"), file=sys.stderr)
            return _cli.CHECK_FAILED
        return 0

    return _cli.guard(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
