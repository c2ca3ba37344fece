#!/usr/bin/env python3
"""GPTQ: quality (perplexity) and calibration wall time, against round-to-nearest and ModelOpt.

Model and data: stories260K (the shipped llama2.c model, 5 decoder layers, 35 quantized linear
layers; lm_head stays unquantized as in every predefined config), evaluated on the shipped
evaluation text (first 20,000 characters of TinyStories validation, one BOS, non-overlapping
512-token windows, 9,505 predicted tokens); calibration uses --samples windows of --seq-len tokens
drawn (seed 0) from the shipped calibration text, which is disjoint from the evaluation text.

Table 1, perplexity of weight-only INT4 and NVFP4 (lower is better): RTN = max calibration (round to
nearest), GPTQ = mopt's {"method": "gptq"} (one decoder layer at a time, block_size 128,
percdamp 0.01), "+act_order" the same with act_order, and ModelOpt's GPTQ
({"method": "gptq", "layerwise": {"enable": True}}, nvidia-modelopt, same config and forward
loop) where --modelopt lists the format.
Table 2, calibration wall time (mtq.quantize including calibration; median of --repeats runs for
mopt, one run for ModelOpt, which is slow) and ModelOpt / mopt ratios.
Table 3, one linear layer [--layer-out, --layer-in] with INT4 blocks of 128 fed random
correlated inputs: mtq.quantize wall time (Hessian pass + GPTQ), mopt against ModelOpt.

Run: MOPT_EXT_DIR=build PYTHONPATH=python python3 benchmarks/bench_gptq.py
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import pathlib
import platform
import statistics
import sys
import time

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

import mopt.quantization as mtq
from mopt.data import default_calib_text, default_eval_text
from mopt.eval import make_forward_loop, perplexity, text_calibration_batches
from mopt.models import Llama2cTokenizer, load_llama2c

FORMATS = {
    "int4 per-channel": {"num_bits": 4, "axis": 0},
    "int4 block 128": {"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}},
    "int4 block 32": {"num_bits": 4, "block_sizes": {-1: 32, "type": "static"}},
    "nvfp4": {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}},
}


def config(lib, weight: dict, algorithm) -> dict:
    """INT4_BLOCKWISE_WEIGHT_ONLY_CFG of `lib` with another weight format and algorithm (mopt
    keeps the dict form of quant_cfg, ModelOpt 0.47 a list of {"quantizer_name": ...})."""
    cfg = copy.deepcopy(lib.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
    if isinstance(cfg["quant_cfg"], dict):
        cfg["quant_cfg"]["*weight_quantizer"] = dict(weight, enable=True)
    else:
        entries = [e for e in cfg["quant_cfg"] if e.get("quantizer_name") == "*weight_quantizer"]
        assert len(entries) == 1, entries
        entries[0]["cfg"] = copy.deepcopy(weight)
    cfg["algorithm"] = algorithm
    return cfg


def timed_quantize(lib, make_model, cfg, loop, quiet: bool = True):
    model = make_model()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext(), \
            contextlib.redirect_stderr(sink) if quiet else contextlib.nullcontext():
        t0 = time.perf_counter()
        lib.quantize(model, cfg, loop)
        dt = time.perf_counter() - t0
    return model, dt


def median_quantize(lib, make_model, cfg, loop, repeats: int):
    times, model = [], None
    for _ in range(repeats):
        model, dt = timed_quantize(lib, make_model, cfg, loop)
        times.append(dt)
    return model, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modelopt", default="int4 block 128",
                    help="comma-separated formats to run ModelOpt GPTQ on ('' for none)")
    ap.add_argument("--layer-out", type=int, default=1024)
    ap.add_argument("--layer-in", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    try:
        import modelopt
        import modelopt.torch.quantization as mtq_mo
        mo_version = modelopt.__version__
    except ImportError as e:
        mtq_mo, mo_version = None, f"unavailable ({e})"
    mo_formats = [f.strip() for f in args.modelopt.split(",") if f.strip()] if mtq_mo else []

    tok = Llama2cTokenizer.from_file()
    eval_ids = tok.encode(default_eval_text())
    batches = text_calibration_batches(tok.encode(default_calib_text()), args.samples,
                                       args.seq_len, seed=0)
    loop = make_forward_loop(batches, batch_size=4)

    def ppl(model) -> float:
        return perplexity(model, eval_ids, seq_len=512, progress=False)

    print(f"# GPTQ on stories260K | torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs | "
          f"ModelOpt {mo_version}")
    print(f"# calibration: {args.samples} x {args.seq_len} tokens (seed 0); evaluation: "
          f"{len(eval_ids) - 1} tokens in 512-token windows")
    p_float = ppl(load_llama2c())
    print(f"float perplexity: {p_float:.4f}\n")

    rows, times = [], []
    for name, weight in FORMATS.items():
        rtn, t_rtn = median_quantize(mtq, load_llama2c, config(mtq, weight, "max"), loop,
                                     args.repeats)
        g, t_g = median_quantize(mtq, load_llama2c, config(mtq, weight, {"method": "gptq"}),
                                 loop, args.repeats)
        ga, t_ga = median_quantize(
            mtq, load_llama2c, config(mtq, weight, {"method": "gptq", "act_order": True}), loop,
            args.repeats)
        p_mo, t_mo = float("nan"), float("nan")
        if name in mo_formats:
            mo, t_mo = timed_quantize(
                mtq_mo, load_llama2c,
                config(mtq_mo, weight, {"method": "gptq", "layerwise": {"enable": True}}), loop)
            p_mo = ppl(mo)
        rows.append((name, ppl(rtn), ppl(g), ppl(ga), p_mo))
        times.append((name, t_rtn, t_g, t_ga, t_mo))

    print("| weights | RTN | GPTQ | GPTQ +act_order | ModelOpt GPTQ | GPTQ vs RTN |")
    print("|---|---|---|---|---|---|")
    for name, p_rtn, p_g, p_ga, p_mo in rows:
        mo = "-" if math.isnan(p_mo) else f"{p_mo:.4f}"
        print(f"| {name} | {p_rtn:.4f} | {p_g:.4f} | {p_ga:.4f} | {mo} | "
              f"{100 * (p_g - p_rtn) / p_rtn:+.2f}% |")
    print(f"\n(float {p_float:.4f}; RTN / GPTQ changes vs float: "
          + ", ".join(f"{n}: {100 * (r - p_float) / p_float:+.1f}% / "
                      f"{100 * (g - p_float) / p_float:+.1f}%" for n, r, g, _, _ in rows) + ")\n")

    print("| weights | mopt RTN s | mopt GPTQ s | mopt GPTQ +act_order s | ModelOpt GPTQ s | "
          "ModelOpt / mopt |")
    print("|---|---|---|---|---|---|")
    for name, t_rtn, t_g, t_ga, t_mo in times:
        mo = "-" if math.isnan(t_mo) else f"{t_mo:.2f}"
        ratio = "-" if math.isnan(t_mo) else f"{t_mo / t_g:.1f}x"
        print(f"| {name} | {t_rtn:.2f} | {t_g:.2f} | {t_ga:.2f} | {mo} | {ratio} |")

    # One large layer: where the column loop dominates.
    out_f, in_f = args.layer_out, args.layer_in
    gen = torch.Generator().manual_seed(0)
    mix = torch.eye(in_f) + 0.2 * torch.randn(in_f, in_f, generator=gen) / in_f**0.5
    data = [torch.randn(512, in_f, generator=gen) @ mix for _ in range(8)]
    base = nn.Sequential(nn.Linear(in_f, out_f))

    def layer_loop(model):
        with torch.no_grad():
            for x in data:
                model(x)

    weight = FORMATS["int4 block 128"]
    _, t_ours = median_quantize(mtq, lambda: copy.deepcopy(base),
                                config(mtq, weight, {"method": "gptq"}), layer_loop, args.repeats)
    print(f"\n| one layer [{out_f}, {in_f}], INT4 block 128, {8 * 512} tokens | mopt GPTQ s | "
          "ModelOpt GPTQ s | ModelOpt / mopt |")
    print("|---|---|---|---|")
    if mtq_mo is not None:
        _, t_theirs = timed_quantize(mtq_mo, lambda: copy.deepcopy(base),
                                     config(mtq_mo, weight, {"method": "gptq"}), layer_loop)
        print(f"| wall time | {t_ours:.2f} | {t_theirs:.2f} | {t_theirs / t_ours:.1f}x |")
    else:
        print(f"| wall time | {t_ours:.2f} | - | - |")


if __name__ == "__main__":
    main()
