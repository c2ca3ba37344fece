#!/usr/bin/env python3
"""Quantize a small CNN trained on real handwritten digits with INT8, FP8 and INT4 weight-only.

The data is scikit-learn's bundled `load_digits()` (1,797 real 8x8 grey-level scans of
handwritten digits, from the UCI "Optical Recognition of Handwritten Digits" set). The script
trains a CNN in-process (a few seconds on a CPU), quantizes a copy per config with
`mopt.quantization`, prints each quant summary and a table of test accuracy and output error
against the float model, and exits non-zero when a result is off:

    PYTHONPATH=python python3 examples/python/digits_cnn_demo.py [--epochs N] [--seed S]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import mopt.quantization as mtq

# INT4 is weight-only: need_calibration() is False and no forward_loop is passed.
CONFIGS = [
    ("INT8", mtq.INT8_DEFAULT_CFG),
    ("FP8", mtq.FP8_DEFAULT_CFG),
    ("INT4 weight-only", mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG),
]

# Largest accuracy drop (points) accepted against the float model.
MAX_DROP = {"INT8": 3.0, "FP8": 3.0, "INT4 weight-only": 10.0}
MIN_FLOAT_ACCURACY = 90.0


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, a max-pool and a two-layer classifier for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_data(seed: int):
    """Real digits as [N, 1, 8, 8] in [0, 1]; a seeded 75/25 train/test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = len(x) // 4
    test, train = perm[:n_test], perm[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def train(model: nn.Module, data, epochs: int, seed: int) -> None:
    x, y = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(128):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    logits = model(x)
    return logits, 100.0 * (logits.argmax(1) == y).float().mean().item()


def check(float_acc: float, rows: list[tuple]) -> list[str]:
    """What is off in the results: rows are (name, accuracy %, mean |logit error|, ...)."""
    problems = []
    if float_acc < MIN_FLOAT_ACCURACY:
        problems.append(f"float accuracy {float_acc:.2f}% is below {MIN_FLOAT_ACCURACY}%")
    for name, acc, err, *_ in rows:
        if acc < float_acc - MAX_DROP[name]:
            problems.append(f"{name} accuracy {acc:.2f}% is more than {MAX_DROP[name]} points "
                            f"below float ({float_acc:.2f}%)")
        if not err > 0.0:
            problems.append(f"{name} output is identical to float: nothing was quantized")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12, help="float training epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_data(args.seed)
    model = DigitsCNN()
    train(model, (x_train, y_train), args.epochs, args.seed)
    float_logits, float_acc = evaluate(model, x_test, y_test)
    print(f"trained DigitsCNN on {len(x_train)} real digits ({args.epochs} epochs, "
          f"{time.perf_counter() - start:.1f} s); {len(x_test)} held-out test digits\n")

    calib = x_train[:512]
    rows = []
    for name, config in CONFIGS:
        print(f"--- {name}")
        qmodel = copy.deepcopy(model)
        forward_loop = (lambda m: m(calib)) if mtq.need_calibration(config) else None
        mtq.quantize(qmodel, config, forward_loop)
        mtq.print_quant_summary(qmodel)
        print()
        logits, acc = evaluate(qmodel, x_test, y_test)
        err = (logits - float_logits).abs().mean().item()
        rel = err / float_logits.abs().mean().item()
        agree = 100.0 * (logits.argmax(1) == float_logits.argmax(1)).float().mean().item()
        rows.append((name, acc, err, rel, agree))

    header = (f"{'model':<18} {'test acc %':>10} {'vs float':>9} {'mean |logit err|':>17} "
              f"{'relative':>9} {'same top-1 %':>13}")
    print(header)
    print("-" * len(header))
    print(f"{'float32':<18} {float_acc:>10.2f} {'':>9} {'-':>17} {'-':>9} {'-':>13}")
    for name, acc, err, rel, agree in rows:
        print(f"{name:<18} {acc:>10.2f} {acc - float_acc:>+9.2f} {err:>17.4f} {rel:>8.2%} "
              f"{agree:>13.2f}")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")

    problems = check(float_acc, rows)
    for p in problems:
        print(f"FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
