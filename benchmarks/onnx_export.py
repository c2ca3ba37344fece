"""ONNX Q/DQ export (mopt.export.export_onnx): export time, file size and onnxruntime CPU
latency against the float model's ONNX, and the output difference against mopt's fake quant.

    PYTHONPATH=python python3 benchmarks/onnx_export.py [--model minilm|cnn|all] [--repeats N]

MiniLM (all-MiniLM-L6-v2, 8 WikiText-2 rows padded to one batch) and the digits CNN of
examples/python/digits_cnn_demo.py (64 held-out digits). Formats: INT8 (weights per channel,
activations per tensor), FP8 E4M3 (per tensor), INT4 weight-only blocks of 128. Output
difference: max |ONNX - mopt fake quant| next to max |mopt fake quant - float| (MiniLM:
1 - cosine of the unit-norm embeddings, mean over rows).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import pathlib
import platform
import tempfile
import time

import numpy as np
import torch
from _bench_common import ROOT, print_table, time_interleaved

import mopt.quantization as mtq
from mopt.export.onnx import export_onnx, onnxruntime_session

FORMATS = {
    "INT8": mtq.INT8_DEFAULT_CFG,
    "FP8": mtq.FP8_DEFAULT_CFG,
    "INT4 w-only b128": mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG,
}


def _minilm():
    from mopt.eval.embeddings import load_minilm, tokenize, wikitext_sentences

    model = load_minilm()
    calib = tokenize(model, wikitext_sentences(64, skip=8))
    ev = tokenize(model, wikitext_sentences(8))

    def loop(m):
        with torch.no_grad():
            for i in range(0, 64, 16):
                m(calib["input_ids"][i:i + 16], calib["attention_mask"][i:i + 16])

    def diff(a, b):
        return float(1 - (a * b).sum(1).mean())

    return model, (ev["input_ids"], ev["attention_mask"]), loop, diff, "1 - cos"


def _cnn():
    path = ROOT / "examples" / "python" / "digits_cnn_demo.py"
    spec = importlib.util.spec_from_file_location("digits_cnn_demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    torch.manual_seed(0)
    (x_train, y_train), (x_test, _) = demo.load_data(0)
    model = demo.DigitsCNN()
    demo.train(model, (x_train, y_train), 12, 0)
    calib = x_train[:512]

    def diff(a, b):
        return float(np.abs(a - b).max())

    return model, (x_test[:64],), lambda m: m(calib), diff, "max |logit diff|"


def _run(sess, feeds):
    return sess.run(None, feeds)[0]


def bench(name, make, repeats, out_dir):
    model, args, loop, diff, diff_name = make()
    model.eval()
    float_path = out_dir / f"{name}_float.onnx"
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(model, args, dynamo=True, optimize=True).save(str(float_path))
    float_export = time.perf_counter() - t0
    float_sess = onnxruntime_session(float_path)
    names = [i.name for i in float_sess.get_inputs()]
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    with torch.no_grad():
        float_ref = model(*args).numpy()
    rows = []
    sessions = {"float": float_sess}
    float_size = os.path.getsize(float_path)
    rows_data = [("float", float_export, float_size, "-", "-")]
    for fmt, cfg in FORMATS.items():
        q = copy.deepcopy(model)
        mtq.quantize(q, cfg, loop if mtq.need_calibration(cfg) else None)
        path = out_dir / f"{name}_{fmt.split()[0].lower()}.onnx"
        info = export_onnx(q, args, path)
        with torch.no_grad():
            ref = q(*args).numpy()
        sess = onnxruntime_session(path)
        sessions[fmt] = sess
        out = _run(sess, feeds)
        rows_data.append((fmt, info["seconds"], info["bytes"], f"{diff(out, ref):.2e}",
                          f"{diff(ref, float_ref):.2e}"))
    latency = time_interleaved({k: (lambda s=s: _run(s, feeds)) for k, s in sessions.items()},
                               repeats=repeats, warmup=2)
    for fmt, secs, size, d_export, d_quant in rows_data:
        rows.append([fmt, f"{secs:.1f}", f"{size / 1e6:.2f}", f"{size / float_size:.2f}x",
                     f"{latency[fmt] * 1e3:.2f}", f"{latency[fmt] / latency['float']:.2f}x",
                     d_export, d_quant])
    print(f"\n### {name} ({diff_name}; onnxruntime CPU, batch {args[0].shape[0]})\n")
    print_table(["format", "export s", "file MB", "vs float", "ORT ms", "vs float",
                 f"ONNX vs mopt ({diff_name})", f"mopt vs float ({diff_name})"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["minilm", "cnn", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=20)
    a = parser.parse_args()
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        if a.model in ("cnn", "all"):
            bench("digits CNN", _cnn, a.repeats, tmp)
        if a.model in ("minilm", "all"):
            bench("MiniLM", _minilm, a.repeats, tmp)


if __name__ == "__main__":
    main()
