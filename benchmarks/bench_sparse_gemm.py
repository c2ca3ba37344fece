#!/usr/bin/env python3
"""2:4 sparse GEMM on the GPU: a weight pruned to 2:4 by mopt, multiplied through torch's
semi-structured sparse tensors, against the same multiplication with the dense weight.

This is what a 2:4 model buys at serving time (the seed reports 1.62x at batch 32): for each
weight shape [out, in] (Llama-style projections) and batch b, one run times

* dense    torch.nn.functional.linear(x, w) with the pruned weight stored dense, fp16 or bf16,
* sparse   torch.nn.functional.linear(x, torch.sparse.to_sparse_semi_structured(w)), torch's
           2:4 kernels (cuSPARSELt where torch has it, else CUTLASS),

with the 2:4 mask chosen by mopt's kernel (``torch.ops.mopt.nm_mask``, magnitude, on the GPU).
Each number is the median of CUDA-event-timed loops (CUDA graphs when capturable) after a
warm-up, the two interleaved per case. "speedup" is dense time / sparse time; the last column is
the largest |sparse - dense| relative to the largest |dense| output, so a benchmark that times a
wrong product does not go unnoticed. A case torch refuses (a shape its kernels do not take)
prints the reason in its row.

Without a CUDA GPU the script checks the masks on the CPU (every group of 4 keeps 2, the kept
values are the 2 largest magnitudes) and says that the GPU section is skipped.

Run: PYTHONPATH=python python3 benchmarks/bench_sparse_gemm.py [--dtype bf16] [--batches 1,32]
"""

from __future__ import annotations

import argparse
import sys

import torch
from _bench_common import cuda_time, print_table

import mopt  # noqa: F401  (registers torch.ops.mopt)

SHAPES = "4096x4096,11008x4096,4096x11008,8192x8192"
BATCHES = "1,8,32,128,512,2048"


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        out, _, inp = item.strip().partition("x")
        if not (out.isdigit() and inp.isdigit()) or int(inp) % 4 or int(out) <= 0:
            raise SystemExit(f"--shapes: {item!r} is not OUTxIN with IN a multiple of 4")
        shapes.append((int(out), int(inp)))
    return shapes


def pruned_weight(out: int, inp: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    w = torch.randn(out, inp, device=device, dtype=torch.float32) / inp**0.5
    mask = torch.ops.mopt.nm_mask(w, None, 2, 4)
    return (w * mask).to(dtype)


def check_masks(shapes: list[tuple[int, int]]) -> None:
    """CPU dry run: mopt's 2:4 masks keep the 2 largest magnitudes of every group of 4."""
    for out, inp in shapes:
        out, inp = min(out, 256), min(inp, 1024)
        w = torch.randn(out, inp)
        groups = w.reshape(-1, 4)
        top2 = groups.abs().topk(2, dim=-1).indices
        expected = torch.zeros_like(groups).scatter_(1, top2, 1.0).bool()
        mask = torch.ops.mopt.nm_mask(w, None, 2, 4).reshape(-1, 4).bool()
        if not torch.equal(mask, expected):
            raise SystemExit(f"mask check failed at [{out}, {inp}]")
        if not torch.all(mask.sum(-1) == 2):
            raise SystemExit(f"a group of [{out}, {inp}] does not keep exactly 2 of 4")
    print(f"CPU: mopt 2:4 masks checked on {len(shapes)} shapes (2 largest |w| of every 4 kept)")


def gpu_section(shapes, batches, dtype, repeats: int, iters: int) -> None:
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    backend = "CUTLASS" if SparseSemiStructuredTensor._FORCE_CUTLASS else (
        "cuSPARSELt" if torch.backends.cusparselt.is_available() else "CUTLASS")
    name = torch.cuda.get_device_name()
    print(f"\n## GPU: {name}, torch {torch.__version__}, {str(dtype).split('.')[-1]}, "
          f"torch semi-structured backend: {backend}\n")
    rows = []
    for out, inp in shapes:
        w = pruned_weight(out, inp, dtype, "cuda")
        try:
            ws = to_sparse_semi_structured(w)
        except (RuntimeError, ValueError) as e:
            rows.append([f"[{out}, {inp}]", "-", "-", "-", "-", f"refused: {e}"[:60]])
            continue
        for b in batches:
            xs = [torch.randn(b, inp, device="cuda", dtype=dtype) for _ in range(2)]
            try:
                ref = torch.nn.functional.linear(xs[0], w)
                got = torch.nn.functional.linear(xs[0], ws)
                err = ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
                timed = {}
                for _ in range(2):  # interleaved: dense, sparse, dense, sparse
                    for key, mat in (("dense", w), ("sparse", ws)):
                        t, _ = cuda_time(lambda x, m=mat: torch.nn.functional.linear(x, m), xs,
                                         iters, repeats, warmup=3)
                        timed.setdefault(key, []).append(t)
                dense, sparse = min(timed["dense"]), min(timed["sparse"])
                tflops = 2 * b * out * inp / dense / 1e12
                rows.append([f"[{out}, {inp}]", str(b), f"{dense * 1e6:.1f}",
                             f"{sparse * 1e6:.1f}", f"{dense / sparse:.2f}x",
                             f"{err:.1e} (dense {tflops:.0f} TFLOP/s)"])
            except (RuntimeError, ValueError) as e:
                rows.append([f"[{out}, {inp}]", str(b), "-", "-", "-",
                             f"refused: {str(e).splitlines()[0]}"[:70]])
    print_table(["weight [out, in]", "batch", "dense us", "2:4 sparse us", "speedup",
                 "max rel diff"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=SHAPES, help=f"OUTxIN list (default {SHAPES})")
    ap.add_argument("--batches", default=BATCHES, help=f"batch sizes (default {BATCHES})")
    ap.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20, help="multiplications per timed loop")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU mask check")
    args = ap.parse_args()
    shapes = parse_shapes(args.shapes)
    batches = [int(b) for b in args.batches.split(",")]
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    print("# 2:4 sparse GEMM: mopt-pruned weights through torch semi-structured sparsity\n")
    if not args.no_cpu:
        check_masks(shapes)
    if torch.cuda.is_available():
        with torch.inference_mode():
            gpu_section(shapes, batches, dtype, args.repeats, args.iters)
    else:
        print("\n## GPU: no CUDA GPU is present (torch.cuda.is_available() is False); "
              "GPU section skipped.")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
