#!/usr/bin/env python3
"""Block-format fake-quantization throughput (NVFP4, MX, NF4): mopt against the plain PyTorch
formulation a user would write instead.

For a [rows, 4096] tensor of 4M and 16M elements, fp32 and bf16, one run times

* mopt    torch.ops.mopt.fake_quant_nvfp4 / fake_quant_mx / fake_quant_nf4 (one fused pass per
          block: amax, scale, rounding; NVFP4 first reduces the tensor amax, as its tensor scale
          needs it),
* plain   the eager PyTorch formulation (what ModelOpt's Triton kernels compute, written with
          torch ops): reshape into blocks, x.abs().amax(-1), the scale (E4M3 through a
          float8_e4m3fn cast for NVFP4, exp2(ceil(log2(amax / emax))) for MX), the element
          rounding (a chain of torch.where over the E2M1 thresholds, a float8 cast for MXFP8,
          round/clamp for MXINT8, argmin over the 16-entry table for NF4), cast back.

Throughput counts one read and one write of the tensor; every number is the median of the
repeats after a warm-up, the implementations of a case interleaved so that a load change hits
them alike. The copy row is the bandwidth ceiling measured in the same run. The last column says
whether mopt and plain agree bit for bit (else the largest difference), so a benchmark that
times the wrong computation does not go unnoticed.

The GPU section runs when torch.cuda.is_available(): CUDA events (CUDA graphs when capturable)
around a loop over rotating inputs larger than the L2 cache, mopt's fraction of the
device-to-device copy bandwidth measured in the same run.

With --cpu-time the CPU section runs on one thread and counts that thread's CPU time: per-core
throughput that other processes on a shared machine do not distort.

Run: MOPT_EXT_DIR=build PYTHONPATH=python python3 benchmarks/bench_block_formats.py [--cpu-time]
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import platform
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

from _bench_common import cuda_time, gbps, print_table, run_sections, time_interleaved  # noqa: E402

import mopt  # noqa: E402,F401  (registers torch.ops.mopt.*)

COLS = 4096
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
NF4_TABLE = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0, 0.0796, 0.1609,
             0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]


# ---------------------------------------------------------------------------------------------
# Plain PyTorch formulations


def e2m1_magnitude(a: torch.Tensor) -> torch.Tensor:
    """E2M1 rounding of a >= 0 with the SPEC thresholds (ModelOpt's fp4_round_magnitude)."""
    return torch.where(a <= 0.25, 0.0, torch.where(a < 0.75, 0.5, torch.where(
        a <= 1.25, 1.0, torch.where(a < 1.75, 1.5, torch.where(a <= 2.5, 2.0, torch.where(
            a < 3.5, 3.0, torch.where(a <= 5.0, 4.0, 6.0))))))).to(a.dtype)


def plain_nvfp4(x: torch.Tensor, block: int = 16):
    def run():
        xb = x.float().reshape(-1, block)
        s2 = xb.abs().amax() / (6.0 * 448.0)
        bamax = xb.abs().amax(-1, keepdim=True)
        s1 = (bamax / (6.0 * s2)).clamp(max=448.0).to(torch.float8_e4m3fn).float() * s2
        s1 = torch.where(bamax == 0, 1.0, s1)
        q = e2m1_magnitude(xb.abs() / s1) * s1
        return torch.copysign(q, xb).reshape(x.shape).to(x.dtype)

    return run


def mx_scale(xb: torch.Tensor, emax: float) -> torch.Tensor:
    bamax = xb.abs().amax(-1, keepdim=True)
    scale = torch.exp2(torch.ceil(torch.log2(bamax / emax)).clamp(-127, 127))
    return torch.where(bamax == 0, 1.0, scale)


def plain_mxfp8(x: torch.Tensor, block: int = 32):
    def run():
        xb = x.float().reshape(-1, block)
        scale = mx_scale(xb, 448.0)
        q = (xb / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float()
        return (q * scale).reshape(x.shape).to(x.dtype)

    return run


def plain_mxfp4(x: torch.Tensor, block: int = 32):
    def run():
        xb = x.float().reshape(-1, block)
        scale = mx_scale(xb, 6.0)
        v = xb / scale
        return (torch.copysign(e2m1_magnitude(v.abs()), v) * scale).reshape(x.shape).to(x.dtype)

    return run


def plain_mxint8(x: torch.Tensor, block: int = 32):
    def run():
        xb = x.float().reshape(-1, block)
        scale = mx_scale(xb, 127.0)
        q = torch.round((xb / scale).clamp(-127.0, 127.0))
        return (q * scale).reshape(x.shape).to(x.dtype)

    return run


def plain_nf4(x: torch.Tensor, block: int = 64):
    table = torch.tensor(NF4_TABLE, device=x.device)

    def run():
        xb = x.float().reshape(-1, block)
        absmax = xb.abs().amax(-1, keepdim=True)
        absmax = torch.where(absmax == 0, 1.0, absmax)
        idx = ((xb / absmax).unsqueeze(-1) - table).abs().argmin(-1)
        return (table[idx] * absmax).reshape(x.shape).to(x.dtype)

    return run


FORMATS = {
    "NVFP4": (lambda x: lambda: torch.ops.mopt.fake_quant_nvfp4(x, None, 16), plain_nvfp4),
    "MXFP8": (lambda x: lambda: torch.ops.mopt.fake_quant_mx(x, 4, 3, 32), plain_mxfp8),
    "MXFP4": (lambda x: lambda: torch.ops.mopt.fake_quant_mx(x, 2, 1, 32), plain_mxfp4),
    "MXINT8": (lambda x: lambda: torch.ops.mopt.fake_quant_mx(x, 0, 7, 32), plain_mxint8),
    "NF4": (lambda x: lambda: torch.ops.mopt.fake_quant_nf4(x, 64, 0), plain_nf4),
    "NF4+DQ": (lambda x: lambda: torch.ops.mopt.fake_quant_nf4(x, 64, 256), None),
}
# The plain NF4 argmin materializes [numel, 16]: limit it to this many elements.
NF4_PLAIN_MAX = 4 << 20


# ---------------------------------------------------------------------------------------------
# Timing and printing


# Wall clock by default; --cpu-time switches to this thread's CPU time (with one torch thread
# every op runs on the calling thread), which a shared, loaded machine does not distort.
CLOCK = time.perf_counter


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def agreement(a: torch.Tensor, b: torch.Tensor) -> str:
    if torch.equal(a, b):
        return "exact"
    diff = (a.float() - b.float()).abs()
    return f"{int((diff > 0).sum())} differ, max {diff.max().item():.3g}"


def plain_for(name: str, x: torch.Tensor):
    plain = FORMATS[name][1]
    if plain is None or (name == "NF4" and x.numel() > NF4_PLAIN_MAX):
        return None
    return plain(x)


# ---------------------------------------------------------------------------------------------
# CPU


def cpu_section(sizes: list[int], repeats: int, warmup: int) -> None:
    clock = "thread CPU time" if CLOCK is time.thread_time else "wall clock"
    print(f"## CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {clock}")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for numel in sizes:
        for dname, dtype in DTYPES.items():
            x = torch.randn(numel // COLS, COLS, generator=gen).to(dtype)
            y = torch.empty_like(x)
            nbytes = 2 * x.numel() * x.element_size()
            t = time_interleaved({"copy": lambda x=x, y=y: y.copy_(x)}, repeats, warmup, CLOCK)
            copy_bw = gbps(nbytes, t["copy"])
            for name, (mopt_f, _) in FORMATS.items():
                fns = {"mopt": mopt_f(x)}
                plain = plain_for(name, x)
                if plain is not None:
                    fns["plain"] = plain
                agree = agreement(fns["mopt"](), plain()) if plain is not None else "-"
                t = time_interleaved(fns, repeats, warmup, CLOCK)
                bw = {k: gbps(nbytes, v) for k, v in t.items()}
                rows.append([name, dname, f"{numel >> 20}M", fmt(bw["mopt"]),
                             fmt(bw.get("plain")), fmt(copy_bw),
                             f"{100 * bw['mopt'] / copy_bw:.0f}%",
                             "-" if "plain" not in bw else f"{bw['mopt'] / bw['plain']:.1f}x",
                             agree])
    print("\nBlock fake quantization on CPU, GB/s counting one read + one write (median of "
          f"{repeats} after {warmup} warm-up):\n")
    print_table(["format", "dtype", "numel", "mopt", "plain", "copy", "mopt/copy", "mopt/plain",
                 "mopt vs plain"], rows)


# ---------------------------------------------------------------------------------------------
# GPU


def gpu_section(sizes: list[int], repeats: int, warmup: int) -> None:
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    l2 = getattr(props, "L2_cache_size", 64 << 20)
    print(f"\n## GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, L2 {l2 / 2**20:.0f} MiB, "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for numel in sizes:
        for dname, dtype in DTYPES.items():
            nbytes_one = numel * torch.tensor([], dtype=dtype).element_size()
            nbuf = max(2, math.ceil(4 * l2 / nbytes_one))
            xs = [torch.randn(numel // COLS, COLS, device=dev, generator=gen).to(dtype)
                  for _ in range(nbuf)]
            ys = [torch.empty_like(x) for x in xs]
            iters = 2 * nbuf
            copy_bw = gbps(2 * nbytes_one, cuda_time(lambda xy: xy[1].copy_(xy[0]),
                                                     list(zip(xs, ys)), iters, repeats, warmup)[0])
            for name, (mopt_f, _) in FORMATS.items():
                t = cuda_time(lambda x, f=mopt_f: f(x)(), xs, iters, repeats, warmup)[0]
                bw = gbps(2 * nbytes_one, t)
                plain = plain_for(name, xs[0])
                plain_bw = None
                if plain is not None:
                    plain_bw = gbps(2 * nbytes_one, cuda_time(
                        lambda x, n=name: plain_for(n, x)(), xs, iters, repeats, warmup)[0])
                cpu_ref = FORMATS[name][0](xs[0].cpu())()
                rows.append([name, dname, f"{numel >> 20}M", fmt(bw), fmt(plain_bw), fmt(copy_bw),
                             f"{100 * bw / copy_bw:.0f}%",
                             "-" if plain_bw is None else f"{bw / plain_bw:.1f}x",
                             "yes" if torch.equal(mopt_f(xs[0])().cpu(), cpu_ref) else "NO"])
            del xs, ys
    print("\nBlock fake quantization on GPU, GB/s counting one read + one write (CUDA events, "
          f"median of {repeats}):\n")
    print_table(["format", "dtype", "numel", "mopt", "plain", "D2D copy", "mopt/copy",
                 "mopt/plain", "bitwise = CPU"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="4,16", help="tensor sizes in Mi elements (default 4,16)")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU section")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time the CPU section by this thread's CPU time, on one thread")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.thread_time
        torch.set_num_threads(1)
    sizes = [int(s) << 20 for s in args.sizes.split(",")]
    run_sections(cpu_section, gpu_section, sizes, args.repeats, args.warmup, not args.no_cpu)


if __name__ == "__main__":
    main()
