#!/usr/bin/env python3
"""Diffusion PTQ on the real Fashion-MNIST U-Net DDPM: how the activation amax is calibrated.

The denoiser is quantized with INT8 (or FP8) W8A8 (mtq's predefined configs: every Conv2d and
Linear, per-channel weights, per-tensor static activations), calibrated on one 1000-step
sampling run of 8 samples (seed 0), then sampled on --samples evaluation samples (seeds
--first-seed, --first-seed + 1, ... in batches of 8) and compared with the float model's samples
of the same seeds. Rows, one per calibration, side by side in one run:

* ``max``: the running max |x| over every step (mtq's default; what a user gets);
* ``percentile 99.99``: mtq's histogram percentile of |x| over all steps;
* ``modelopt min-mean``: ModelOpt's diffusers example recipe (per step the mean amax of its
  calls, then the minimum over the steps), expressed as mopt's step_percentile with
  percentile 0 and collect "mean";
* ``step p<P>``: mopt's step_percentile, the P-th percentile over the steps of each step's max.

Columns: PSNR (dB, R = max - min of the float samples) and SSIM against the float samples, the
fidelity score (Frechet distance of the shipped classifier's features against real test images,
lower is closer; the float row is the model's own) and the calibration seconds; the last
column is the PSNR gain over max calibration.

Run: PYTHONPATH=python python3 benchmarks/bench_diffusion_ptq.py [--configs int8,fp8]
     [--percentiles 50,90,95,99] [--samples 16] [--first-seed 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import sys
import time

import torch

import mopt.quantization as mtq
from mopt.cache_diffusion import metrics
from mopt.cache_diffusion.models import load_ddpm

CONFIGS = {"int8": "INT8_DEFAULT_CFG", "fp8": "FP8_DEFAULT_CFG"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="int8,fp8")
    ap.add_argument("--percentiles", default="50,90,95,99")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_ddpm(kind="fashion")
    steps = pipe.num_train_steps
    seeds = [args.first_seed + i for i in range((args.samples + 7) // 8)]

    def sample(p) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([p(8, seed=s) for s in seeds])[: args.samples]

    t0 = time.perf_counter()
    ref = sample(pipe)
    print(f"## Fashion-MNIST U-Net DDPM, {steps} steps, {args.samples} evaluation samples "
          f"(seeds {seeds[0]}..{seeds[-1]}), calibration: one run of 8 samples (seed 0); "
          f"{torch.get_num_threads()} threads; float sampling {time.perf_counter() - t0:.1f} s; "
          f"float fidelity {metrics.fidelity_score(ref, 'fashion'):.1f}\n")
    algorithms = [("max", "max"), ("percentile 99.99", {"method": "percentile",
                                                         "percentile": 99.99}),
                  ("modelopt min-mean", {"method": "step_percentile", "num_steps": steps,
                                         "percentile": 0, "collect": "mean"})]
    algorithms += [(f"step p{p}", {"method": "step_percentile", "num_steps": steps,
                                   "percentile": float(p)})
                   for p in args.percentiles.split(",") if p]
    print("| config | calibration | PSNR dB | SSIM | fidelity (FD) | calib s | PSNR - max's |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for short in args.configs.split(","):
        base = None
        for name, algorithm in algorithms:
            q = copy.copy(pipe)
            q.denoiser = copy.deepcopy(pipe.denoiser)
            cfg = copy.deepcopy(getattr(mtq, CONFIGS[short]))
            cfg["algorithm"] = algorithm
            t0 = time.perf_counter()
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
                mtq.quantize(q.denoiser, cfg, lambda _m: q(8, seed=0))
            calib_s = time.perf_counter() - t0
            out = sample(q)
            psnr = metrics.psnr_db(out, ref)
            base = psnr if base is None else base
            print(f"| {short} | {name} | {psnr:.2f} | {metrics.ssim(out, ref):.4f} | "
                  f"{metrics.fidelity_score(out, 'fashion'):.1f} | {calib_s:.1f} | "
                  f"{psnr - base:+.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
