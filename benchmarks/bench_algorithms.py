#!/usr/bin/env python3
"""SmoothQuant and AWQ: quality on real models and calibration wall time against ModelOpt.

One run prints two tables:

1. stories260K (real Llama model, real TinyStories text): perplexity on the evaluation text
   (first 20,000 characters, 9,505 predicted tokens) after quantizing with each config,
   calibrated on disjoint text, for mopt and for nvidia-modelopt with the same config, and the
   wall time of ``mtq.quantize`` (conversion + calibration) of each library on the same model,
   the same calibration batches and the same forward loop: INT4 round-to-nearest vs AWQ lite /
   clip / full at blocks of 128 and 32, W4A8 AWQ, INT8 max vs SmoothQuant, NVFP4 RTN vs NVFP4
   AWQ when mopt has NVFP4.
2. all-MiniLM-L6-v2 (real BERT encoder, 384x1536 layers): mean and minimum cosine similarity
   between float and quantized sentence embeddings of real WikiText-2 rows, calibrated on other
   rows, with the same wall-time comparison: INT8 max vs SmoothQuant, INT4 RTN vs AWQ lite.

Timings are medians of `--repeats` (MiniLM: `--minilm-repeats`) runs after one warm-up, the two
libraries interleaved, each run on a fresh copy of the model.

Run: MOPT_EXT_DIR=build PYTHONPATH=python python3 benchmarks/bench_algorithms.py
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import pathlib
import platform
import statistics
import sys
import time
import warnings

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

import mopt.quantization as mtq  # noqa: E402
from mopt.data import default_calib_text, default_eval_text  # noqa: E402
from mopt.eval import make_forward_loop, perplexity, text_calibration_batches  # noqa: E402
from mopt.eval.embeddings import (  # noqa: E402
    cosine_similarity,
    load_minilm,
    sentence_embeddings,
    tokenize,
    wikitext_sentences,
)
from mopt.models import Llama2cTokenizer, load_llama2c  # noqa: E402


def load_modelopt():
    """modelopt.torch.quantization, or None when nvidia-modelopt is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import modelopt.torch.quantization as mo_mtq
        return mo_mtq
    except ImportError:
        return None


# ---------------------------------------------------------------------------------------------
# configs: the same settings in both libraries


def mopt_config(name: str, block: int | None = None, algorithm=None) -> dict:
    config = copy.deepcopy(getattr(mtq, name))
    if block is not None:
        w = config["quant_cfg"]["*weight_quantizer"]
        for stage in (w if isinstance(w, list) else [w]):
            if stage.get("num_bits") == 4:
                stage["block_sizes"] = {**stage["block_sizes"], -1: block}
    if algorithm is not None:
        config["algorithm"] = algorithm
    return config


def modelopt_config(mo_mtq, name: str, block: int | None = None, algorithm=None) -> dict:
    config = copy.deepcopy(getattr(mo_mtq, name))
    if block is not None:
        for entry in config["quant_cfg"]:
            if entry.get("quantizer_name") != "*weight_quantizer" or "cfg" not in entry:
                continue
            for stage in (entry["cfg"] if isinstance(entry["cfg"], list) else [entry["cfg"]]):
                if stage.get("num_bits") == 4:
                    stage["block_sizes"] = {**stage["block_sizes"], -1: block}
    if algorithm is not None:
        config["algorithm"] = algorithm
    return config


# (label, config name, block, algorithm override)
LLM_CASES = [
    ("INT4 RTN b128", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG", 128, None),
    ("INT4 AWQ lite b128", "INT4_AWQ_CFG", 128, None),
    ("INT4 AWQ clip b128", "INT4_AWQ_CFG", 128, {"method": "awq_clip"}),
    ("INT4 AWQ full b128", "INT4_AWQ_CFG", 128, {"method": "awq_full"}),
    ("INT4 RTN b32", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG", 32, None),
    ("INT4 AWQ lite b32", "INT4_AWQ_CFG", 32, None),
    ("INT4 AWQ clip b32", "INT4_AWQ_CFG", 32, {"method": "awq_clip"}),
    ("INT4 AWQ full b32", "INT4_AWQ_CFG", 32, {"method": "awq_full"}),
    ("W4A8 AWQ lite b128", "W4A8_AWQ_BETA_CFG", 128, None),
    ("INT8 max (W8A8)", "INT8_DEFAULT_CFG", None, None),
    ("INT8 SmoothQuant (W8A8)", "INT8_SMOOTHQUANT_CFG", None, None),
    ("NVFP4 RTN", "NVFP4_DEFAULT_CFG", None, None),
    ("NVFP4 AWQ lite", "NVFP4_AWQ_LITE_CFG", None, None),
    ("NVFP4 AWQ clip", "NVFP4_AWQ_CLIP_CFG", None, None),
    ("NVFP4 AWQ full", "NVFP4_AWQ_FULL_CFG", None, None),
]

MINILM_CASES = [
    ("INT8 max (W8A8)", "INT8_DEFAULT_CFG", None, None),
    ("INT8 SmoothQuant (W8A8)", "INT8_SMOOTHQUANT_CFG", None, None),
    ("INT8 SmoothQuant a=0.5", "INT8_SMOOTHQUANT_CFG", None,
     {"method": "smoothquant", "alpha": 0.5}),
    ("INT4 RTN b128", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG", 128, None),
    ("INT4 AWQ lite b128", "INT4_AWQ_CFG", 128, None),
    ("INT4 AWQ full b128", "INT4_AWQ_CFG", 128, {"method": "awq_full"}),
]


def _quantize_once(quantize, model, config, forward_loop):
    m = copy.deepcopy(model)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        out = quantize(m, copy.deepcopy(config), forward_loop)
        return time.perf_counter() - t0, out


def run_case(label, name, block, algorithm, model, forward_loop, evaluate, mo_mtq, repeats):
    """Quantizes with mopt and modelopt (one warm-up each, then `repeats` runs interleaved, each
    on a fresh copy of the model); returns a result row with median seconds and the quality of
    the last quantized model (None entries when a library cannot run the config)."""
    row = {"label": label}
    runs = {}
    try:
        runs["mopt"] = (mtq.quantize, mopt_config(name, block, algorithm))
        _quantize_once(runs["mopt"][0], model, runs["mopt"][1], forward_loop)
    except NotImplementedError as e:
        row["mopt_error"] = str(e).split("\n")[0][:60]
        runs.pop("mopt")
    if mo_mtq is not None:
        try:
            runs["mo"] = (mo_mtq.quantize, modelopt_config(mo_mtq, name, block, algorithm))
            _quantize_once(runs["mo"][0], model, runs["mo"][1], forward_loop)
        except Exception as e:  # noqa: BLE001  (report what the peer cannot run here)
            row["mo_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:50]}"
            runs.pop("mo")
    times = {k: [] for k in runs}
    outs = {}
    for _ in range(repeats):
        for k, (quantize, config) in runs.items():
            dt, outs[k] = _quantize_once(quantize, model, config, forward_loop)
            times[k].append(dt)
    for k in runs:
        row[k + "_s"] = statistics.median(times[k])
        try:
            row[k] = evaluate(outs[k])
        except Exception as e:  # noqa: BLE001  (a peer's quantized model may not run here)
            if k == "mopt":
                raise
            row["mo_error"] = f"{type(e).__name__} in eval: {str(e).splitlines()[0][:40]}"
    return row


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def print_table(title, metric, rows, baseline=None):
    print(f"\n{title}")
    head = f"{'config':28} {'mopt ' + metric:>14} {'vs float':>9} {'modelopt ' + metric:>16} " \
           f"{'mopt s':>8} {'modelopt s':>10} {'time ratio':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "mopt_error" in r:
            print(f"{r['label']:28} not available in mopt: {r['mopt_error']}")
            continue
        rel = "-"
        if baseline is not None and isinstance(r.get("mopt"), float):
            rel = f"{100 * (r['mopt'] / baseline - 1):+.2f}%"
        ratio = r["mopt_s"] / r["mo_s"] if "mo_s" in r else None
        mo = r.get("mo")  # a failure is listed under the table
        print(f"{r['label']:28} {fmt(r.get('mopt'), '14.4f')} {rel:>9} "
              f"{fmt(mo, '16.4f') if isinstance(mo, float) else '-':>16} "
              f"{fmt(r.get('mopt_s'), '8.2f')} {fmt(r.get('mo_s'), '10.2f')} "
              f"{fmt(ratio, '9.2f') + 'x' if ratio else '-':>10}")
    for r in rows:
        if "mo_error" in r:
            print(f"  modelopt failed on {r['label']}: {r['mo_error']}")


def bench_llm(mo_mtq, args):
    tok = Llama2cTokenizer.from_file()
    calib = text_calibration_batches(tok.encode(default_calib_text()), args.calib_samples,
                                     args.seq_len, seed=0)
    forward_loop = make_forward_loop(calib, batch_size=args.batch_size)
    eval_ids = tok.encode(default_eval_text())
    model = load_llama2c().eval()

    def evaluate(m):
        return perplexity(m, eval_ids, seq_len=512, progress=False)

    float_ppl = evaluate(model)
    rows = [{"label": "float", "mopt": float_ppl}]
    cases = LLM_CASES if not args.quick else [c for c in LLM_CASES if "b32" in c[0] or "INT8" in c[0]]
    for case in cases:
        rows.append(run_case(*case, model, forward_loop, evaluate, mo_mtq, args.repeats))
        print(f"  done: {rows[-1]}", file=sys.stderr, flush=True)
    print_table(f"stories260K perplexity (eval: {len(eval_ids) - 1} predicted tokens; calibration: "
                f"{args.calib_samples} x {args.seq_len} tokens, batch {args.batch_size})",
                "ppl", rows, float_ppl)


def bench_minilm(mo_mtq, args):
    model = load_minilm()
    eval_sentences = wikitext_sentences(args.minilm_eval)
    calib_sentences = wikitext_sentences(args.minilm_calib, skip=args.minilm_eval)
    batches = [tokenize(model, calib_sentences[i: i + 16])
               for i in range(0, len(calib_sentences), 16)]

    def forward_loop(m):
        with torch.no_grad():
            for b in batches:
                m(b["input_ids"], b["attention_mask"])

    ref = sentence_embeddings(model, eval_sentences)

    def evaluate(m):
        return cosine_similarity(ref, sentence_embeddings(m, eval_sentences))

    rows = []
    for case in MINILM_CASES:
        r = run_case(*case, model, forward_loop, evaluate, mo_mtq, args.minilm_repeats)
        for key in ("mopt", "mo"):
            if key in r:
                cos = r[key]
                r[key] = float(cos.mean())
                r[key + "_min"] = float(cos.min())
        rows.append(r)
        print(f"  done: {r}", file=sys.stderr, flush=True)
    print_table(f"all-MiniLM-L6-v2 mean cosine similarity to float embeddings ({len(eval_sentences)} "
                f"WikiText-2 rows; calibration: {len(calib_sentences)} other rows)", "cos", rows)
    print("min cosine: " + ", ".join(
        f"{r['label']}: mopt {fmt(r.get('mopt_min'), '.4f')} / modelopt "
        f"{fmt(r.get('mo_min'), '.4f')}" for r in rows))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--minilm-eval", type=int, default=256)
    p.add_argument("--minilm-calib", type=int, default=64)
    p.add_argument("--minilm-repeats", type=int, default=1,
                   help="timed runs per MiniLM config (its AWQ runs take minutes in modelopt)")
    p.add_argument("--no-modelopt", action="store_true")
    p.add_argument("--quick", action="store_true", help="fewer configs (a smoke run)")
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--skip-llm", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (both libraries)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mo_mtq = None if args.no_modelopt else load_modelopt()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}; "
          f"modelopt: {'yes' if mo_mtq is not None else 'not installed'}")
    if not args.skip_llm:
        bench_llm(mo_mtq, args)
    if not args.skip_minilm:
        bench_minilm(mo_mtq, args)


if __name__ == "__main__":
    main()
