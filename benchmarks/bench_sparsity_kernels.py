#!/usr/bin/env python3
"""N:M magnitude masks: mopt against the pure-PyTorch formulations a user would run instead.

For a [4096, 4096] weight in fp32 and bf16 and the patterns 2:4 and 4:8, one run times

* mopt       torch.ops.mopt.nm_mask (one pass: read the weight, write the bool mask),
* modelopt   ModelOpt's magnitude mask, create_asp_mask -> m4n2_1d -> mn_1d_best: the weight in
             fp32, |w| of every group times all C(m, n) valid patterns (a matmul), argmax, the
             winning pattern gathered and cast to bool (4:8: mn_1d_best(w, 8, 4) itself, as
             ModelOpt's searcher only offers 2:4). Imported from nvidia-modelopt when installed,
             else the same code transcribed here;
* topk       |w| per group, topk(n), scatter into a bool mask,

and prints time, throughput counting the bytes read (the weight) and written (one byte per mask
element), the fraction of the copy bandwidth measured in the same run (y.copy_(x) of the weight,
read + write), and the peers' time relative to mopt's. Every number is the median of the repeats
after a warm-up, the implementations interleaved so that a load change hits them alike.

The GPU section runs when torch.cuda.is_available(): CUDA events around loops over rotating
weights larger than the L2 cache.

Run: MOPT_EXT_DIR=build PYTHONPATH=python python3 benchmarks/bench_sparsity_kernels.py
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import warnings
from itertools import permutations

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

import mopt  # noqa: F401  (registers torch.ops.mopt.*)
from _bench_common import cuda_time, gbps, print_table, time_interleaved

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PATTERNS = {"2:4": (2, 4), "4:8": (4, 8)}


# ---------------------------------------------------------------------------------------------
# Implementations: each returns the bool keep mask of w [rows, cols].


def _load_modelopt():
    """(mn_1d_best, create_asp_mask, 2:4 pattern name) from nvidia-modelopt, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from modelopt.torch.sparsity.weight_sparsity import magnitude
            from modelopt.torch.sparsity.weight_sparsity.searcher import BaseSparseSearcher
        return magnitude.mn_1d_best, magnitude.create_asp_mask, BaseSparseSearcher._pattern_2_4
    except (ImportError, AttributeError):
        return None


def _mn_1d_best(matrix: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """ModelOpt's mn_1d_best (magnitude.py), transcribed for machines without nvidia-modelopt:
    the group size is `m`, the kept count `n`."""
    patterns = torch.zeros(m)
    patterns[:n] = 1
    patterns = torch.tensor(list(set(permutations(patterns.tolist())))).to(matrix.device)
    mask = torch.IntTensor(matrix.shape).fill_(1).view(-1, m).to(matrix.device)
    pmax = torch.argmax(torch.matmul(matrix.view(-1, m).abs(), patterns.t()), dim=1)
    mask[:] = patterns[pmax[:]]
    return mask.view(matrix.shape)


MODELOPT = _load_modelopt()


def modelopt_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    if MODELOPT is not None:
        mn_1d_best, create_asp_mask, pattern_2_4 = MODELOPT
        if (n, m) == (2, 4):
            return create_asp_mask(w, pattern_2_4)
        return mn_1d_best(w.float().contiguous(), m, n).to(torch.bool)
    return _mn_1d_best(w.float().contiguous(), m, n).to(torch.bool)


def topk_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    g = w.abs().reshape(-1, m)
    keep = torch.zeros_like(g, dtype=torch.bool)
    return keep.scatter_(1, g.topk(n, dim=1).indices, True).reshape(w.shape)


def mopt_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    return torch.ops.mopt.nm_mask(w, None, n, m)


IMPLS = {"mopt": mopt_mask, "modelopt": modelopt_mask, "topk": topk_mask}


def agreement(w: torch.Tensor, n: int, m: int) -> str:
    """Share of groups where the peers keep the same columns as mopt (ModelOpt's argmax and topk
    break exact ties their own way; distinct magnitudes agree everywhere)."""
    ref = mopt_mask(w, n, m).reshape(-1, m)
    same = [(IMPLS[k](w, n, m).reshape(-1, m) == ref).all(dim=1).float().mean().item()
            for k in ("modelopt", "topk")]
    return " / ".join(f"{100 * s:.2f}%" for s in same)


def mask_bytes(w: torch.Tensor) -> int:
    return w.numel() * w.element_size() + w.numel()  # weight read, one bool per element written


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


# ---------------------------------------------------------------------------------------------
# Sections


def cpu_section(rows: int, cols: int, repeats: int, warmup: int) -> None:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"## CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}; "
          f"ModelOpt {'installed' if MODELOPT else 'transcribed'}")
    gen = torch.Generator().manual_seed(0)
    table = []
    for dname, dtype in DTYPES.items():
        w = torch.randn(rows, cols, generator=gen).to(dtype)
        y = torch.empty_like(w)
        t_copy = time_interleaved({"copy": lambda w=w, y=y: y.copy_(w)}, repeats, warmup)["copy"]
        copy_bw = gbps(2 * w.numel() * w.element_size(), t_copy)
        for pname, (n, m) in PATTERNS.items():
            t = time_interleaved({k: (lambda f=f, w=w, n=n, m=m: f(w, n, m))
                                  for k, f in IMPLS.items()}, repeats, warmup)
            bw = gbps(mask_bytes(w), t["mopt"])
            table.append([dname, pname, fmt_ms(t["mopt"]), f"{bw:.1f}", f"{copy_bw:.1f}",
                          f"{100 * bw / copy_bw:.0f}%", fmt_ms(t["modelopt"]), fmt_ms(t["topk"]),
                          f"{t['modelopt'] / t['mopt']:.1f}x", f"{t['topk'] / t['mopt']:.1f}x",
                          agreement(w, n, m)])
    print(f"\nnm_mask on a [{rows}, {cols}] weight, CPU (ms; GB/s counting weight read + mask "
          "written):\n")
    print_table(["dtype", "N:M", "mopt ms", "mopt GB/s", "copy GB/s", "of copy", "modelopt ms",
                 "topk ms", "modelopt/mopt", "topk/mopt", "same groups (modelopt / topk)"],
                table)


def gpu_section(rows: int, cols: int, repeats: int, warmup: int) -> None:
    props = torch.cuda.get_device_properties(0)
    print(f"\n## GPU: {props.name}, torch {torch.__version__}")
    gen = torch.Generator().manual_seed(0)
    # Enough rotating weights to exceed the L2 cache, so every call reads from memory.
    copies = max(2, -(-4 * props.L2_cache_size // (rows * cols * 2)))
    table = []
    for dname, dtype in DTYPES.items():
        ws = [torch.randn(rows, cols, generator=gen).to(device="cuda", dtype=dtype)
              for _ in range(copies)]
        pairs = [(w, torch.empty_like(w)) for w in ws]
        t_copy, _ = cuda_time(lambda xy: xy[1].copy_(xy[0]), pairs, 20, repeats, warmup)
        copy_bw = gbps(2 * ws[0].numel() * ws[0].element_size(), t_copy)
        for pname, (n, m) in PATTERNS.items():
            # cuda_time falls back to a plain loop where capture fails (mopt reads back its
            # NaN flag; ModelOpt builds its mask on the host).
            t = {k: cuda_time(lambda w, f=f, n=n, m=m: f(w, n, m), ws, 20, repeats, warmup)[0]
                 for k, f in IMPLS.items()}
            bw = gbps(mask_bytes(ws[0]), t["mopt"])
            table.append([dname, pname, f"{t['mopt'] * 1e6:.1f}", f"{bw:.0f}", f"{copy_bw:.0f}",
                          f"{100 * bw / copy_bw:.0f}%", f"{t['modelopt'] * 1e6:.1f}",
                          f"{t['topk'] * 1e6:.1f}", f"{t['modelopt'] / t['mopt']:.1f}x",
                          f"{t['topk'] / t['mopt']:.1f}x"])
    print(f"\nnm_mask on a [{rows}, {cols}] weight, GPU (us):\n")
    print_table(["dtype", "N:M", "mopt us", "mopt GB/s", "copy GB/s", "of copy", "modelopt us",
                 "topk us", "modelopt/mopt", "topk/mopt"], table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU section")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        if not args.no_cpu:
            cpu_section(args.rows, args.cols, args.repeats, args.warmup)
        if torch.cuda.is_available():
            gpu_section(args.rows, args.cols, args.repeats, args.warmup)
        else:
            print("\n## GPU: no CUDA GPU is present (torch.cuda.is_available() is False); "
                  "GPU section skipped.")


if __name__ == "__main__":
    main()
