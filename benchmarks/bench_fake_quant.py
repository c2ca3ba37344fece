#!/usr/bin/env python3
"""Fake-quantization throughput: mopt against the peers a user would pick instead.

For INT8 and FP8 (E4M3), per tensor and per channel (axis 0 of a [rows, 4096] tensor), fp32 and
bf16 inputs of 4M and 16M elements, one run times

* mopt            torch.ops.mopt.fake_quant_int / fake_quant_fp (one fused pass),
* torch-fq        torch.fake_quantize_per_tensor_affine / fake_quantize_per_channel_affine
                  (INT8 only: torch has no FP8 fake-quant op),
* plain           the formulation a Python library uses, one PyTorch op per step (modelopt's
                  eager fallback): x.float(), multiply, round, clamp, divide, cast back; for FP8
                  multiply, clamp, cast to float8_e4m3fn and back, divide, cast back,

and the amax reduction (torch.ops.mopt.amax against x.abs().amax()). Throughput counts one read
and one write of the tensor (one read for amax); every number is the median of the repeats after
a warm-up, the implementations of a case interleaved so that a load change hits them alike.
The copy row is the bandwidth ceiling measured in the same run (y.copy_(x) into a preallocated y,
and x.clone(), which also pays for a fresh output allocation like the ops do).

The GPU section runs when torch.cuda.is_available(): CUDA events around a loop over rotating
input buffers larger than the L2 cache, mopt's fraction of the device-to-device copy bandwidth
measured in the same run.

Run: MOPT_EXT_DIR=build PYTHONPATH=python python3 benchmarks/bench_fake_quant.py
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import platform
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

from _bench_common import cuda_time, gbps, print_table, run_sections, time_interleaved  # noqa: E402

import mopt  # noqa: F401  (registers torch.ops.mopt.*)

COLS = 4096
INT8_MAX = 127.0
E4M3_MAX = 448.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------
# Implementations. Each factory returns a zero-argument callable for one input tensor.


def amax_of(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    a = x.float().abs()
    return a.amax(dim=1, keepdim=True) if per_channel else a.amax()


def mopt_int8(x, amax, per_channel):
    return lambda: torch.ops.mopt.fake_quant_int(x, amax, 8, False, False)


def mopt_fp8(x, amax, per_channel):
    return lambda: torch.ops.mopt.fake_quant_fp(x, amax, 4, 3)


def torch_fq_int8(x, amax, per_channel):
    # torch's ops take scale = amax / 127 and an integer zero point.
    if per_channel:
        scale = (amax.reshape(-1) / INT8_MAX).float()
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return lambda: torch.fake_quantize_per_channel_affine(x, scale, zero_point, 0, -128, 127)
    scale = float(amax) / INT8_MAX
    return lambda: torch.fake_quantize_per_tensor_affine(x, scale, 0, -128, 127)


def exact_scale(max_value: float, amax: torch.Tensor) -> torch.Tensor:
    """max_value / amax rounded once to fp32, shaped to broadcast as a tensor operand. Written out
    because torch shortcuts both `python_float / tensor` and division by a 0-dim tensor into a
    multiplication by a reciprocal, one ulp off the quotient that the SPEC (and mopt) use; the
    float64 quotient rounded to fp32 is the correctly rounded fp32 quotient."""
    scale = (max_value / amax.double()).float()
    return scale.reshape(1, 1) if scale.dim() == 0 else scale


def plain_int8(x, amax, per_channel):
    scale = exact_scale(INT8_MAX, amax)

    def run():
        v = (x.float() * scale).round_()
        return (torch.clamp(v, -128.0, 127.0) / scale).to(x.dtype)

    return run


def plain_fp8(x, amax, per_channel):
    scale = exact_scale(E4M3_MAX, amax)

    def run():
        v = (x.float() * scale).clamp(-E4M3_MAX, E4M3_MAX)
        return (v.to(torch.float8_e4m3fn).float() / scale).to(x.dtype)

    return run


FORMATS = {
    "INT8": {"mopt": mopt_int8, "torch-fq": torch_fq_int8, "plain": plain_int8},
    "FP8": {"mopt": mopt_fp8, "torch-fq": None, "plain": plain_fp8},
}


# ---------------------------------------------------------------------------------------------
# Timing


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def fmt_gbps(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def size_label(numel: int) -> str:
    return f"{numel // (1 << 20)}M"


def check_agreement(y_mopt: torch.Tensor, y_plain: torch.Tensor) -> str:
    """'exact' when mopt equals the plain formulation bit for bit, else the max difference (a
    benchmark that times the wrong computation must not go unnoticed)."""
    if torch.equal(y_mopt, y_plain):
        return "exact"
    return f"{(y_mopt.float() - y_plain.float()).abs().max().item():.3g}"


# ---------------------------------------------------------------------------------------------
# CPU section


def cpu_copy_row(x: torch.Tensor, dname: str, repeats: int, warmup: int) -> list[str]:
    y = torch.empty_like(x)
    nbytes = 2 * x.numel() * x.element_size()
    t = time_interleaved({"copy_": lambda: y.copy_(x), "clone": lambda: x.clone()}, repeats,
                         warmup)
    return [dname, size_label(x.numel()), fmt_gbps(gbps(nbytes, t["copy_"])),
            fmt_gbps(gbps(nbytes, t["clone"]))]


def cpu_fake_quant_row(x: torch.Tensor, fmt_name: str, per_channel: bool, dname: str,
                       repeats: int, warmup: int) -> list[str]:
    amax = amax_of(x, per_channel)
    impls = FORMATS[fmt_name]
    fns = {k: f(x, amax, per_channel) for k, f in impls.items() if f is not None}
    agree = check_agreement(fns["mopt"](), fns["plain"]())
    t = time_interleaved(fns, repeats, warmup)
    nbytes = 2 * x.numel() * x.element_size()
    bw = {k: gbps(nbytes, v) for k, v in t.items()}
    return [fmt_name, "channel" if per_channel else "tensor", dname, size_label(x.numel()),
            fmt_gbps(bw["mopt"]), fmt_gbps(bw.get("torch-fq")), fmt_gbps(bw["plain"]),
            fmt_ratio(bw["mopt"], bw["plain"]), fmt_ratio(bw["mopt"], bw.get("torch-fq")), agree]


def amax_fns(x: torch.Tensor, per_channel: bool) -> dict:
    keep = [0] if per_channel else []
    dims = {"dim": 1, "keepdim": True} if per_channel else {}
    return {"mopt": lambda: torch.ops.mopt.amax(x, keep), "torch": lambda: x.abs().amax(**dims)}


def cpu_amax_row(x: torch.Tensor, per_channel: bool, dname: str, repeats: int,
                 warmup: int) -> list[str]:
    t = time_interleaved(amax_fns(x, per_channel), repeats, warmup)
    nbytes = x.numel() * x.element_size()
    return ["channel" if per_channel else "tensor", dname, size_label(x.numel()),
            fmt_gbps(gbps(nbytes, t["mopt"])), fmt_gbps(gbps(nbytes, t["torch"])),
            fmt_ratio(t["torch"], t["mopt"])]


def cpu_section(sizes: list[int], repeats: int, warmup: int) -> None:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"## CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}")
    gen = torch.Generator().manual_seed(0)

    def make(numel: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(numel // COLS, COLS, generator=gen).to(dtype)

    copy_rows = [cpu_copy_row(make(numel, dtype), dname, repeats, warmup)
                 for numel in sizes for dname, dtype in DTYPES.items()]
    print("\nCopy bandwidth (read + write), the ceiling for a one-pass elementwise op:\n")
    print_table(["dtype", "numel", "y.copy_(x) GB/s", "x.clone() GB/s"], copy_rows)

    rows = []
    amax_rows = []
    for fmt_name in FORMATS:
        for per_channel in (False, True):
            for dname, dtype in DTYPES.items():
                for numel in sizes:
                    x = make(numel, dtype)
                    rows.append(cpu_fake_quant_row(x, fmt_name, per_channel, dname, repeats,
                                                   warmup))
                    if fmt_name == "INT8":
                        amax_rows.append(cpu_amax_row(x, per_channel, dname, repeats, warmup))
    print("\nFake quantization, GB/s counting one read + one write (median of "
          f"{repeats} after {warmup} warm-up):\n")
    print_table(["format", "granularity", "dtype", "numel", "mopt", "torch-fq", "plain",
                 "mopt/plain", "mopt/torch-fq", "mopt vs plain"], rows)
    print("\namax reduction, GB/s counting one read:\n")
    print_table(["granularity", "dtype", "numel", "mopt amax", "x.abs().amax()", "mopt/torch"],
                amax_rows)


# ---------------------------------------------------------------------------------------------
# GPU section


def gpu_case(xs: list, fmt_name: str, per_channel: bool, dname: str, repeats: int,
             warmup: int) -> tuple[list[str], list[str] | None]:
    """One fake-quant row (and one amax row for INT8) over the rotating inputs xs."""
    impls = FORMATS[fmt_name]
    amax = amax_of(xs[0], per_channel)
    nbytes_one = xs[0].numel() * xs[0].element_size()
    iters = 2 * len(xs)
    bw = {}
    graphs = True
    for k, f in impls.items():
        if f is None:
            continue
        t, g = cuda_time(lambda x, f=f: f(x, amax, per_channel)(), xs, iters, repeats, warmup)
        bw[k] = gbps(2 * nbytes_one, t)
        graphs &= g
    pairs = [(x, torch.empty_like(x)) for x in xs]
    t, g = cuda_time(lambda xy: xy[1].copy_(xy[0]), pairs, iters, repeats, warmup)
    bw["copy"] = gbps(2 * nbytes_one, t)
    graphs &= g
    agree = check_agreement(impls["mopt"](xs[0], amax, per_channel)(),
                            impls["plain"](xs[0], amax, per_channel)())
    gran = "channel" if per_channel else "tensor"
    row = [fmt_name, gran, dname, size_label(xs[0].numel()), fmt_gbps(bw["mopt"]),
           fmt_gbps(bw.get("torch-fq")), fmt_gbps(bw["plain"]), fmt_gbps(bw["copy"]),
           f"{100 * bw['mopt'] / bw['copy']:.0f}%", fmt_ratio(bw["mopt"], bw["plain"]),
           fmt_ratio(bw["mopt"], bw.get("torch-fq")), agree, "graph" if graphs else "eager"]
    if fmt_name != "INT8":
        return row, None
    keep = [0] if per_channel else []
    dims = {"dim": 1, "keepdim": True} if per_channel else {}
    ta, ga = cuda_time(lambda x: torch.ops.mopt.amax(x, keep), xs, iters, repeats, warmup)
    tt, gt = cuda_time(lambda x: x.abs().amax(**dims), xs, iters, repeats, warmup)
    amax_row = [gran, dname, size_label(xs[0].numel()), fmt_gbps(gbps(nbytes_one, ta)),
                fmt_gbps(gbps(nbytes_one, tt)), fmt_ratio(tt, ta),
                "graph" if ga and gt else "eager"]
    return row, amax_row


def gpu_section(sizes: list[int], repeats: int, warmup: int) -> None:
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    l2 = getattr(props, "L2_cache_size", 64 << 20)
    print(f"\n## GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, L2 {l2 / 2**20:.0f} MiB, "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []
    amax_rows = []
    for fmt_name in FORMATS:
        for per_channel in (False, True):
            for dname, dtype in DTYPES.items():
                for numel in sizes:
                    nbytes_one = numel * torch.tensor([], dtype=dtype).element_size()
                    # Enough rotating inputs that together they overflow L2 4x.
                    nbuf = max(2, math.ceil(4 * l2 / nbytes_one))
                    xs = [torch.randn(numel // COLS, COLS, device=dev, generator=gen).to(dtype)
                          for _ in range(nbuf)]
                    row, amax_row = gpu_case(xs, fmt_name, per_channel, dname, repeats, warmup)
                    rows.append(row)
                    if amax_row is not None:
                        amax_rows.append(amax_row)
                    del xs
                    torch.cuda.empty_cache()
    print("\nFake quantization on GPU, GB/s counting one read + one write (CUDA events, median "
          f"of {repeats}):\n")
    print_table(["format", "granularity", "dtype", "numel", "mopt", "torch-fq", "plain",
                 "D2D copy", "mopt/copy", "mopt/plain", "mopt/torch-fq", "mopt vs plain",
                 "timing"], rows)
    print("\namax reduction on GPU, GB/s counting one read:\n")
    print_table(["granularity", "dtype", "numel", "mopt amax", "x.abs().amax()", "mopt/torch",
                 "timing"], amax_rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="4,16", help="tensor sizes in Mi elements (default 4,16)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="subset of fp32,bf16")
    ap.add_argument("--formats", default=",".join(FORMATS), help="subset of INT8,FP8")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU section")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    for name, table in (("dtypes", DTYPES), ("formats", FORMATS)):
        keep = getattr(args, name).split(",")
        unknown = [k for k in keep if k not in table]
        if unknown:
            ap.error(f"unknown {name} {unknown}; choose from {list(table)}")
        for k in [k for k in table if k not in keep]:
            del table[k]
    sizes = [int(s) << 20 for s in args.sizes.split(",")]
    run_sections(cpu_section, gpu_section, sizes, args.repeats, args.warmup, not args.no_cpu)


if __name__ == "__main__":
    main()
