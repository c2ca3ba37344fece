#!/usr/bin/env python3
"""Trains the small classifiers whose features mopt.cache_diffusion.metrics.fidelity_score uses,
and writes them with the feature statistics of real test images to
python/mopt/data/fid_classifier_<kind>.safetensors.

* fashion: trained on the 60,000 Fashion-MNIST training images (Debian package
  dataset-fashion-mnist), tested on the 10,000 test images; reference statistics from the test
  images.
* mnist: MNIST's training set is not available here, so it is trained on the shipped MNIST test
  images 0-4999 and tested on 5000-9999, which also give the reference statistics.

Deterministic (fixed seeds, one thread pool of fixed size): a rerun writes the same weights on the
same machine and torch build. A few minutes on 2 CPU cores.

    PYTHONPATH=python python tools/train_fid_classifier.py [--kinds fashion mnist] [--out DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from mopt import _C  # noqa: E402
from mopt.cache_diffusion.metrics import FidClassifier  # noqa: E402
from mopt.data import fashion_mnist, mnist_test_set  # noqa: E402

# Per kind: epochs over the training images (the MNIST half is 12x smaller, so more of them); the
# learning rate falls from LR to 0 along a cosine over all steps.
EPOCHS = {"fashion": 4, "mnist": 20}
MNIST_SPLIT = 5000
FEATURE_DIM = 64
BATCH = 128
LR = 1e-3
SEED = 1234


def splits(kind: str):
    if kind == "fashion":
        train_x, train_y = fashion_mnist("train")
        test_x, test_y = fashion_mnist("test")
        train_desc = "Fashion-MNIST training images (60,000)"
        test_desc = "Fashion-MNIST test images (10,000)"
    else:
        x, y = mnist_test_set()
        train_x, train_y = x[:MNIST_SPLIT], y[:MNIST_SPLIT]
        test_x, test_y = x[MNIST_SPLIT:], y[MNIST_SPLIT:]
        train_desc = f"MNIST test images 0-{MNIST_SPLIT - 1}"
        test_desc = f"MNIST test images {MNIST_SPLIT}-9999"

    def as_tensors(images, labels):
        x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).unsqueeze(1) / 255.0
        return x, torch.from_numpy(labels.astype(np.int64))

    return as_tensors(train_x, train_y), as_tensors(test_x, test_y), train_desc, test_desc


@torch.no_grad()
def accuracy(model: FidClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    pred = torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).to(torch.float64).mean())


def train(kind: str, out_dir: pathlib.Path) -> float:
    (train_x, train_y), (test_x, test_y), train_desc, test_desc = splits(kind)
    torch.manual_seed(SEED)
    model = FidClassifier(feature_dim=FEATURE_DIM)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    steps = EPOCHS[kind] * ((len(train_x) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for epoch in range(EPOCHS[kind]):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        total = 0.0
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            loss = torch.nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        model.eval()
        print(
            f"{kind}: epoch {epoch + 1}/{EPOCHS[kind]} loss {total / len(order):.4f} "
            f"test accuracy {accuracy(model, test_x, test_y):.4f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    model.eval()
    acc = accuracy(model, test_x, test_y)
    with torch.no_grad():
        feats = torch.cat(
            [model.features(test_x[i : i + 1000]) for i in range(0, len(test_x), 1000)]
        )
    mean, cov = _C.feature_statistics(feats)
    tensors = [(f"model.{k}", v.contiguous()) for k, v in model.state_dict().items()]
    tensors += [("reference.mean", mean.contiguous()), ("reference.cov", cov.contiguous())]
    metadata = {
        "kind": kind,
        "trained_by": "mopt (tools/train_fid_classifier.py)",
        "train_images": train_desc,
        "test_images": test_desc,
        "test_accuracy": f"{acc:.4f}",
        "reference_images": test_desc,
        "reference_count": str(len(test_x)),
        "reference_first": str(MNIST_SPLIT if kind == "mnist" else 0),
        "features": f"output of the {FEATURE_DIM}-unit linear feature layer (before its ReLU)",
        "input": "1x28x28 images in [0, 1] (pixel / 255)",
        "epochs": str(EPOCHS[kind]),
        "seed": str(SEED),
        "torch": torch.__version__,
    }
    path = out_dir / f"fid_classifier_{kind}.safetensors"
    _C.save_safetensors(str(path), tensors, metadata)
    print(f"{kind}: test accuracy {acc:.4f} on {test_desc}; wrote {path}", flush=True)
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kinds", nargs="+", default=["fashion", "mnist"], choices=["fashion", "mnist"]
    )
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "python" / "mopt" / "data")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    for kind in args.kinds:
        train(kind, args.out)


if __name__ == "__main__":
    main()
