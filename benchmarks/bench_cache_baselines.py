#!/usr/bin/env python3
"""Step-level caching baseline on the real DDPMs: plain reuse of every k-th prediction.

For each shipped model (the Fashion-MNIST U-Net and the MNIST plain CNN, mopt.cache_diffusion.
models.load_ddpm), --samples samples (default 8) with per-sample seeds 0..N-1, 1000-step ancestral
sampling:

* uncached: the denoiser runs at every step (1000 calls);
* reuse k: the denoiser runs at steps 0, k, 2k, ... of the 1000 and its prediction is reused
  for the next k - 1 steps (the noise draws are the same, so the trajectories stay comparable);
  with --end-aligned the real calls are at steps 999, 999 - k, ... instead, so the last step
  always gets a fresh prediction.
  This is the naive baseline that mopt's cache policies are measured against, written here as a
  plain wrapper module: it is not the library feature.

Columns: denoiser calls per sample trajectory and the reduction against 1000; PSNR (dB,
10 log10(R^2 / MSE), R = max - min of the uncached batch) and SSIM of the cached samples against
the uncached samples of the same seeds (mopt's C++ metrics); the fidelity score (Frechet distance
of the shipped classifier's features against real test images, each sample min/max-normalised
first; lower is better, biased upwards at few samples: the "real" row scores as many real test
images). The last column is the sampling wall time of the row (one run, this machine). The
seconds of one uncached 1000-step sampling of the batch are printed per model.

Run: PYTHONPATH=python python3 benchmarks/bench_cache_baselines.py [--samples 8]
     [--first-seed 0] [--ks 2,3,4,5,8,10,15,20,25] [--models fashion,mnist] [--end-aligned]
     [--device cpu]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import torch
from _bench_common import print_table

from mopt.cache_diffusion import metrics as mm
from mopt.cache_diffusion.models import load_ddpm


class ReuseEveryK(torch.nn.Module):
    """Runs ``denoiser`` at every k-th call of a pipeline call (the pipeline calls its denoiser
    once per step, in order) and returns the last real prediction in between."""

    def __init__(self, denoiser: torch.nn.Module, k: int, steps: int, end_aligned: bool = False):
        super().__init__()
        self.denoiser, self.k, self.steps = denoiser, k, steps
        # Real calls at steps j with (j - phase) % k == 0; end-aligned puts one at the last step.
        self.phase = (steps - 1) % k if end_aligned else 0
        self.step = 0
        self.real_calls = 0
        self.last = None

    def forward(self, x, t):
        if self.step == 0:
            self.last = None  # a new pipeline call: nothing to reuse yet
        if self.step % self.k == self.phase or self.last is None:
            self.last = self.denoiser(x, t)
            self.real_calls += 1
        self.step = (self.step + 1) % self.steps
        return self.last


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_model(
    kind: str, n: int, first_seed: int, ks: list[int], device: str, end_aligned: bool
) -> tuple[list[list[str]], float]:
    pipe = load_ddpm(kind=kind)
    pipe.denoiser.to(device)
    seeds = list(range(first_seed, first_seed + n))
    steps = pipe.num_train_steps
    t0 = time.perf_counter()
    uncached = pipe(n, seed=seeds)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    uncached_s = time.perf_counter() - t0
    uncached = uncached.cpu()
    rows = [
        [kind, "uncached", f"{steps}", "1.0x", "inf", "1.0000",
         f"{mm.fidelity_score(uncached, kind):.2f}", f"{uncached_s:.1f}"],
    ]
    model = pipe.denoiser
    for k in ks:
        wrapper = ReuseEveryK(model, k, steps, end_aligned)
        pipe.denoiser = wrapper
        t0 = time.perf_counter()
        cached = pipe(n, seed=seeds).cpu()
        secs = time.perf_counter() - t0
        pipe.denoiser = model
        calls = wrapper.real_calls
        rows.append([
            kind, f"reuse k={k}", f"{calls}", f"{steps / calls:.1f}x",
            f"{mm.psnr_db(cached, uncached):.2f}", f"{mm.ssim(cached, uncached):.4f}",
            f"{mm.fidelity_score(cached, kind):.2f}", f"{secs:.1f}",
        ])
    rows.append([kind, f"real ({n} test images)", "-", "-", "-", "-",
                 f"{mm.real_fidelity_score(n, kind):.2f}", "-"])
    return rows, uncached_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--end-aligned", action="store_true")
    parser.add_argument("--ks", default="2,3,4,5,8,10,15,20,25")
    parser.add_argument("--models", default="fashion,mnist")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    device = args.device
    machine = cpu_name() if device == "cpu" else torch.cuda.get_device_name(torch.device(device))
    print(f"# bench_cache_baselines: {datetime.date.today()}, {machine}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, device {device}")
    last = args.first_seed + args.samples - 1
    print(f"# {args.samples} samples, seeds {args.first_seed}..{last} (one per sample), 1000 steps"
          f"{', real calls end-aligned' if args.end_aligned else ''}\n")
    header = ["model", "schedule", "denoiser calls", "calls cut", "PSNR dB", "SSIM",
              "fidelity (FD)", "wall s"]
    rows, times = [], {}
    for kind in args.models.split(","):
        r, secs = run_model(kind, args.samples, args.first_seed, ks, device, args.end_aligned)
        rows += r
        times[kind] = secs
    print_table(header, rows)
    print()
    for kind, secs in times.items():
        print(f"uncached 1000-step sampling of {args.samples} images, {kind}: {secs:.1f} s")
    for kind in args.models.split(","):
        best = [r for r in rows if r[0] == kind and r[1].startswith("reuse")
                and float(r[4]) >= 33.0]
        if best:
            b = max(best, key=lambda r: float(r[3][:-1]))
            print(f"{kind}: largest cut at >= 33 dB: {b[1]} ({b[2]} calls, {b[3]}, {b[4]} dB)")
        else:
            print(f"{kind}: no reuse schedule reaches 33 dB")


if __name__ == "__main__":
    main()
