#!/usr/bin/env python3
"""Histogram calibration: speed against the formulations a user would run instead, and quality.

One run prints three tables:

1. Entropy search on a real histogram (inputs of stories260K's layers.2.mlp.down_proj over the
   calibration windows, 2048+ bins): mopt's C++ search (prefix sums, O(bins x levels)) against the
   straightforward O(bins^2) formulation in numpy (each candidate rebuilt from scratch, vectorized
   per candidate) and, when nvidia-modelopt is installed, its Python implementation (per-bin
   Python loops). Every implementation must return the same amax.
2. Histogram collection of |x| into 2048 bins: torch.ops.mopt.histogram_abs (|x| fused, one pass)
   against torch.histc(x.abs()) with the same range; the whole calibrator collect (max, bins,
   growth bookkeeping) of mopt and of nvidia-modelopt; per channel (2048 bins for each of the
   512 channels of a channel-last activation) against a loop of torch.histc over the channels.
3. Perplexity of stories260K on the evaluation text, W8A8 (INT8_DEFAULT_CFG: weights per channel,
   activations per tensor) calibrated by max, entropy, percentile, histogram_mse and mse.

Timings are medians of repeats after a warm-up, the implementations of a case interleaved.

Run: MOPT_EXT_DIR=build PYTHONPATH=python python3 benchmarks/bench_calib.py [--skip 3]
     [--threads N]
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
import sys
import time
import warnings

import numpy as np

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

from _bench_common import time_interleaved  # noqa: E402

import mopt.quantization as mtq
from mopt import _C
from mopt.quantization.calib import HistogramCalibrator


def reference_module():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from modelopt.torch.quantization.calib import histogram
        return histogram
    except Exception:  # noqa: BLE001 - optional peer
        return None


# ---------------------------------------------------------------------------------------------
# 1. entropy search


def straightforward_entropy(hist, edges, num_bits=8, stride=1, start_bin=128):
    """The published algorithm, each candidate rebuilt from scratch (O(bins^2))."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    levels = 1 << (num_bits - 1)
    best, best_i = math.inf, None
    for i in range(start_bin, len(bins) + 1, stride):
        group = np.digitize(np.arange(i), np.linspace(0, i, levels + 1)) - 1
        nz = bins[:i] != 0
        sums = np.bincount(group[nz], weights=bins[:i][nz], minlength=levels)
        cnts = np.bincount(group[nz], minlength=levels)
        q = np.where(nz, sums[group] / np.maximum(cnts[group], 1), 0.0)
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(p > 0, p * np.log(p / q), 0.0).sum()
        if kl <= best:
            best, best_i = kl, i
    return float(edges[best_i])


def real_activations(n_samples: int = 16):
    from mopt.data import default_calib_text
    from mopt.eval import text_calibration_batches
    from mopt.models import Llama2cTokenizer, load_llama2c

    model = load_llama2c()
    ids = Llama2cTokenizer.from_file().encode(default_calib_text())
    batches = text_calibration_batches(ids, n_samples=n_samples, seq_len=256, seed=0)
    acts = []
    hook = model.model.layers[2].mlp.down_proj.register_forward_pre_hook(
        lambda m, a: acts.append(a[0].detach().clone()))
    with torch.no_grad():
        for b in range(0, len(batches), 2):
            model(batches[b : b + 2])
    hook.remove()
    return acts


def bench_entropy(acts, ref, repeats):
    cal = HistogramCalibrator()
    for x in acts:
        cal.collect(x)
    counts, edges = cal._calib_hist, cal._calib_bin_edges
    rows = []
    for bits in (8, 4):
        fns = {
            "mopt": lambda b=bits: _C.histogram_amax_entropy(counts, edges, b, False, 1, 128),
            "numpy": lambda b=bits: straightforward_entropy(counts.numpy(), edges.numpy(), b),
        }
        t = time_interleaved(fns, repeats)
        amax = {k: f() for k, f in fns.items()}
        if ref is not None and bits == 8:
            h, e = counts.int().numpy(), edges.numpy()
            t0 = time.perf_counter()
            r = ref._compute_amax_entropy(h.copy(), e, bits, False, 1, 128)
            t["modelopt"] = time.perf_counter() - t0
            amax["modelopt"] = float(r)
        same = len({round(float(v), 9) for v in amax.values()}) == 1
        rows.append((bits, len(counts), t, amax["mopt"], same))
    print(f"\n## 1. Entropy search ({len(counts)} bins, start_bin 128, stride 1; real activations)")
    print("| bits | mopt C++ | numpy O(N^2) | modelopt Python | numpy / mopt | modelopt / mopt "
          "| amax | all equal |")
    print("|---|---|---|---|---|---|---|---|")
    for bits, _, t, amax, same in rows:
        m = t["mopt"]
        refs = f"{t['modelopt']:.2f} s" if "modelopt" in t else "-"
        refr = f"{t['modelopt'] / m:,.0f}x" if "modelopt" in t else "-"
        print(f"| {bits} | {m * 1e3:.2f} ms | {t['numpy']:.3f} s | {refs} | "
              f"{t['numpy'] / m:,.0f}x | {refr} | {amax:.6f} | {'yes' if same else 'NO'} |")


# ---------------------------------------------------------------------------------------------
# 2. collection


def heavy_tailed(n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(0.75 * torch.randn(n, generator=g))
    return x.to(dtype)


def bench_collection(ref, repeats):
    print("\n## 2. Histogram collection (2048 bins of |x|)")
    print("| case | mopt op | torch.histc(x.abs()) | histc / mopt | mopt collect | "
          "modelopt collect | modelopt / mopt |")
    print("|---|---|---|---|---|---|---|")
    bins = torch.tensor([2048])
    for n, dtype in [(1 << 20, torch.float32), (1 << 24, torch.float32), (1 << 24, torch.bfloat16)]:
        x = heavy_tailed(n, dtype)
        m = x.abs().max().float().reshape(1)
        xf = x.float()

        def ours_collect(x=x):
            HistogramCalibrator().collect(x)

        def ref_collect(x=x):
            ref.HistogramCalibrator().collect(x)

        fns = {
            "op": lambda x=x, m=m: torch.ops.mopt.histogram_abs(x, [], m, bins, 2048),
            "histc": lambda xf=xf, m=m: torch.histc(xf.abs(), 2048, 0, m.item()),
            "collect": ours_collect,
        }
        if ref is not None:
            fns["ref"] = ref_collect
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time_interleaved(fns, repeats)
        assert torch.equal(torch.ops.mopt.histogram_abs(x, [], m, bins, 2048)[0],
                           torch.histc(xf.abs(), 2048, 0, m.item()).long())
        name = f"{n >> 20}M {str(dtype).replace('torch.', '')}"
        reft = f"{t['ref'] * 1e3:.1f} ms" if "ref" in t else "-"
        refr = f"{t['ref'] / t['collect']:.1f}x" if "ref" in t else "-"
        print(f"| {name} per tensor | {t['op'] * 1e3:.1f} ms | {t['histc'] * 1e3:.1f} ms | "
              f"{t['histc'] / t['op']:.1f}x | {t['collect'] * 1e3:.1f} ms | {reft} | {refr} |")
    # Per channel: channel-last [8192, 512], one histogram per channel.
    x = heavy_tailed(8192 * 512, torch.float32, seed=1).view(8192, 512)
    up = x.abs().amax(dim=0)
    nb = torch.full((512,), 2048)
    ups = up.tolist()

    def loop_histc():
        a = x.abs()
        return [torch.histc(a[:, c], 2048, 0, ups[c]) for c in range(512)]

    t = time_interleaved({"op": lambda: torch.ops.mopt.histogram_abs(x, [1], up, nb, 2048),
                          "histc": loop_histc}, max(3, repeats // 2))
    print(f"| 4M fp32 per channel (512 ch, last axis) | {t['op'] * 1e3:.1f} ms | "
          f"{t['histc'] * 1e3:.1f} ms (loop) | {t['histc'] / t['op']:.1f}x | - | - | - |")


# ---------------------------------------------------------------------------------------------
# 3. perplexity


def bench_perplexity():
    from mopt.data import default_calib_text, default_eval_text
    from mopt.eval import make_forward_loop, perplexity, text_calibration_batches
    from mopt.models import Llama2cTokenizer, load_llama2c

    tok = Llama2cTokenizer.from_file()
    eval_ids = tok.encode(default_eval_text())
    calib = text_calibration_batches(tok.encode(default_calib_text()), n_samples=32, seq_len=256,
                                     seed=0)
    loop = make_forward_loop(calib, batch_size=4)
    float_ppl = perplexity(load_llama2c(), eval_ids, seq_len=512, progress=False)
    print("\n## 3. stories260K perplexity, W8A8 (INT8_DEFAULT_CFG), 32 x 256 calibration tokens")
    print("| activation calibration | perplexity | vs float | calibration s |")
    print("|---|---|---|---|")
    print(f"| float (no quantization) | {float_ppl:.4f} | - | - |")
    algos = [("max", "max"), ("entropy", "entropy"),
             ("percentile 99.99", {"method": "percentile", "percentile": 99.99}),
             ("percentile 99.9", {"method": "percentile", "percentile": 99.9}),
             ("histogram_mse", "histogram_mse"), ("mse (weights and activations)", "mse")]
    for name, algo in algos:
        cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
        cfg["algorithm"] = algo
        model = load_llama2c()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            mtq.quantize(model, cfg, loop)
        secs = time.perf_counter() - t0
        ppl = perplexity(model, eval_ids, seq_len=512, progress=False)
        print(f"| {name} | {ppl:.4f} | {100 * (ppl / float_ppl - 1):+.2f}% | {secs:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--skip", default="", help="comma list of sections to skip: 1,2,3")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    skip = set(args.skip.split(",")) - {""}
    print(f"# mopt histogram calibration benchmark — {platform.node()}, "
          f"{os.cpu_count()} CPU threads (torch uses {torch.get_num_threads()}), torch "
          f"{torch.__version__}, {time.strftime('%Y-%m-%d')}")
    ref = reference_module()
    if ref is None:
        print("(nvidia-modelopt not installed: its columns are skipped)")
    if "1" not in skip:
        bench_entropy(real_activations(), ref, args.repeats)
    if "2" not in skip:
        bench_collection(ref, args.repeats)
    if "3" not in skip:
        bench_perplexity()


if __name__ == "__main__":
    main()
