#!/usr/bin/env python3
"""The logit distillation loss (QAD): torch.ops.mopt.logits_distillation_loss against the
formulation a ModelOpt user runs (modelopt.torch.distill.LogitsDistillationLoss: log_softmax,
softmax, F.kl_div in Python), forward + backward, median of repeats after a warm-up, the two
interleaved. Both must give the same loss. Also the peak extra memory is the same order: both keep
one [tokens, vocab] probability tensor for the backward.

Run: PYTHONPATH=python python3 benchmarks/bench_distill.py [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mopt.distill as mtd

SHAPES = [(8, 128, 512), (4, 256, 8192), (2, 256, 32000)]  # batch, tokens, vocabulary


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from modelopt.torch.distill.losses import LogitsDistillationLoss as ModelOptLoss
    except ImportError:
        ModelOptLoss = None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; fp32 logits, "
          "reduction 'batchmean', T=2; forward + backward, median ms")
    print("| batch x tokens x vocab | mopt ms | ModelOpt ms | ModelOpt / mopt | same loss |")
    print("|---|---:|---:|---:|---|")
    g = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        s = torch.randn(*shape, generator=g).requires_grad_(True)
        t = torch.randn(*shape, generator=g)
        ours = mtd.LogitsDistillationLoss(2.0, "batchmean")

        def run_ours():
            ours(s, t).backward()
            s.grad = None

        row = [f"{shape[0]} x {shape[1]} x {shape[2]}"]
        run_ours()
        if ModelOptLoss is not None:
            theirs = ModelOptLoss(2.0, "batchmean")

            def run_theirs():
                theirs(s, t).backward()
                s.grad = None

            run_theirs()
            a, b = [], []
            for _ in range(args.repeats):
                a.append(timed(run_ours, 1))
                b.append(timed(run_theirs, 1))
            mo, mm = statistics.median(a) * 1e3, statistics.median(b) * 1e3
            same = torch.allclose(ours(s, t), theirs(s, t), rtol=1e-5, atol=1e-6)
            row += [f"{mo:.2f}", f"{mm:.2f}", f"{mm / mo:.2f}", str(same)]
        else:
            row += [f"{timed(run_ours, args.repeats) * 1e3:.2f}", "-", "-", "-"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
