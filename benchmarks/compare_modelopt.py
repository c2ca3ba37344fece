"""End-to-end PTQ of the real stories260K model: mopt against NVIDIA TensorRT Model Optimizer
(`nvidia-modelopt`, what a user would run instead), same model, same calibration batches, same
evaluation.

For each config both libraries support on CPU, a fresh copy of the float model is quantized with
`mtq.quantize(model, CFG, forward_loop)` by each library; the table shows the perplexity each
reaches on the TinyStories evaluation text (9,505 predicted tokens), their difference, and the
calibration wall time (median of --repeats quantize calls after one warm-up) with the ratio
modelopt / mopt (> 1: mopt is faster).

    python benchmarks/compare_modelopt.py [--configs int8,int8_sq,...|all] [--repeats 3]

A config modelopt does not define, or that fails in modelopt on this machine, gets a row that says
why instead of numbers. Where nvidia-modelopt is not installed the script prints why and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import platform
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import mopt.quantization as mtq  # noqa: E402
from mopt import data  # noqa: E402
from mopt.eval import make_forward_loop, perplexity, text_calibration_batches  # noqa: E402
from mopt.models import Llama2cTokenizer, load_llama2c  # noqa: E402
from mopt.ptq import _KEEP, PTQ_CONFIGS  # noqa: E402

# Configs whose reference implementation runs on CPU in nvidia-modelopt 0.47 (its NVFP4 / MX
# dynamic block kernels assert a CUDA tensor).
DEFAULT_CONFIGS = "int8,int8_wo,int8_sq,fp8,fp8_pcpt,fp8_2d,int4,int4_awq,int4_gptq,w4a8_awq"


def reference_config(mq, entry):
    """modelopt's config for a registry entry, or raise KeyError naming what modelopt lacks."""
    if entry.cfg_name == "INT4_BLOCKWISE_GPTQ_CFG":
        # modelopt 0.47 has GPTQ as an algorithm but no predefined config for it; its GPTQ runs
        # layer by layer only with "layerwise" enabled, which is what mopt's GPTQ always does
        cfg = copy.deepcopy(mq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
        cfg["algorithm"] = {"method": "gptq", "layerwise": {"enable": True}}
        return cfg
    if not hasattr(mq, entry.cfg_name):
        raise KeyError(f"modelopt has no {entry.cfg_name}")
    cfg = copy.deepcopy(getattr(mq, entry.cfg_name))
    if entry.algorithm is not _KEEP:  # a registry entry that swaps the algorithm
        cfg["algorithm"] = copy.deepcopy(entry.algorithm)
    return cfg


def quantize_timed(lib, model, cfg, forward_loop) -> float:
    t0 = time.perf_counter()
    sink = io.StringIO()  # both libraries print progress; modelopt's tqdm writes to stderr
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib.quantize(model, copy.deepcopy(cfg), forward_loop)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib-samples", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import modelopt.torch.quantization as mq
    except ImportError as e:
        print(f"nvidia-modelopt does not import ({e}); nothing to compare against. It installs "
              "from PyPI with `pip install nvidia-modelopt` (pure Python; install torch first so "
              "pip does not resolve another one)", file=sys.stderr)
        return 1
    import modelopt

    base = load_llama2c()
    tok = Llama2cTokenizer.from_file()
    eval_ids = tok.encode(data.default_eval_text())
    batches = text_calibration_batches(
        tok.encode(data.default_calib_text()), args.calib_samples, 512
    )
    forward_loop = make_forward_loop(batches, 4)
    float_ppl = perplexity(base, eval_ids, 512, progress=False)
    with torch.no_grad():
        forward_loop(copy.deepcopy(base))  # warm-up
        fwd = []
        for _ in range(3):
            t0 = time.perf_counter()
            forward_loop(base)
            fwd.append(time.perf_counter() - t0)
    print(
        f"stories260K, {len(eval_ids) - 1} predicted tokens, calibration {args.calib_samples} x "
        f"512 tokens; float perplexity {float_ppl:.4f}"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU, torch {torch.__version__}, "
        f"{args.threads} thread(s); mopt vs nvidia-modelopt {modelopt.__version__}"
    )
    print(f"one float pass of forward_loop (the floor of one calibration pass): "
          f"{statistics.median(fwd):.2f} s\n")
    print(
        "| config | mopt ppl | modelopt ppl | difference | mopt calib s | modelopt calib s |"
        " modelopt / mopt | mopt / modelopt |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    names = list(PTQ_CONFIGS) if args.configs == "all" else [
        c.strip() for c in args.configs.split(",") if c.strip()]
    for name in names:
        entry = PTQ_CONFIGS[name]
        if entry.needs_kv_quantizers:
            print(f"| {name} | - | - | - | - | - | - | (KV-cache quantizers need the Hugging Face "
                  "attention plugin of each library; compared in bench_huggingface.py) |")
            continue
        try:
            ref_cfg = reference_config(mq, entry)
        except KeyError as e:
            print(f"| {name} | - | - | - | - | - | - | ({e.args[0]}) |", flush=True)
            continue
        results = {}
        for label, lib, c in (("mopt", mtq, entry.build()), ("modelopt", mq, ref_cfg)):
            times = []
            model = None
            try:
                for _ in range(args.repeats + 1):  # the first call warms up
                    model = copy.deepcopy(base)
                    times.append(quantize_timed(lib, model, c, forward_loop))
                ppl = perplexity(model, eval_ids, 512, progress=False)
            except Exception as e:  # noqa: BLE001 - reported in the table
                results[label] = f"{label} failed: {type(e).__name__}: {str(e).splitlines()[0]}"
                break
            results[label] = (ppl, statistics.median(times[1:]))
        failed = [r for r in results.values() if isinstance(r, str)]
        if failed:
            print(f"| {name} | - | - | - | - | - | - | ({'; '.join(failed)}) |", flush=True)
            continue
        (p1, t1), (p2, t2) = results["mopt"], results["modelopt"]
        print(
            f"| {name} | {p1:.4f} | {p2:.4f} | {p1 - p2:+.4f} | {t1:.2f} | {t2:.2f} | "
            f"{t2 / t1:.2f}x | {t1 / t2:.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
