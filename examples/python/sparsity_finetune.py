#!/usr/bin/env python3
"""Recover the quality a 2:4-sparse language model lost, by fine-tuning with the masks in place.

The model is stories260K (a real 260K-parameter Llama trained on TinyStories, shipped in
mopt/data). The script prunes every linear layer but lm_head to 2:4 with SparseGPT, calibrated on
the shipped TinyStories calibration text, then fine-tunes all parameters for a few hundred AdamW
steps (next-token loss) on other TinyStories text (mopt.data, disjoint from both the
calibration and the evaluation text). The sparse modules hold their masks: a forward reads
``weight * mask``, so a pruned weight gets no gradient and stays zero through every step.

It prints the perplexity on the evaluation text (the first 20,000 characters of the shipped
TinyStories slice, as ``mopt ptq`` and ``mopt sparsify`` use) of the dense model, after SparseGPT
and after fine-tuning, and the fraction of the gap that fine-tuning recovered; then it checks that
every sparsified weight still has at most N nonzeros in each group of M along the input dimension,
and exits non-zero when a weight breaks the pattern or a perplexity is not finite:

    PYTHONPATH=python python3 examples/python/sparsity_finetune.py [--steps 300] [--lr 5e-4]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import mopt.sparsity as mts
from mopt import data as mdata
from mopt.eval import make_forward_loop, perplexity, text_calibration_batches
from mopt.ptq.models import resolve_model

import torch
from torch import nn

# Every linear layer but the output projection (tied to the token embedding), as ModelOpt does.
RULES = {"nn.Linear": {"*": {}, "*lm_head*": None}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (default 300)")
    p.add_argument("--lr", type=float, default=5e-4, help="AdamW peak learning rate (5e-4)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per step (8)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per training window (256)")
    p.add_argument("--pattern", default="2:4", help="N:M sparsity pattern (2:4)")
    p.add_argument("--calib-samples", type=int, default=16, help="SparseGPT windows of 512 (16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dense-baseline",
        action="store_true",
        help="also fine-tune a dense copy the same way: how much of the gain is the text itself",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: the model's ops are too small to split across threads)",
    )
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "seq_len", "calib_samples", "threads"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        p.error("--lr must be a positive number")
    try:
        args.n, args.m = mts.parse_pattern(args.pattern)
    except ValueError as e:
        p.error(str(e).removeprefix("mopt: "))
    return args


def sparsegpt(model: nn.Module, calib_ids: list[int], args) -> float:
    """Prunes `model` in place to N:M with SparseGPT; returns the seconds it took."""
    batches = text_calibration_batches(calib_ids, args.calib_samples, 512, args.seed)
    t0 = time.perf_counter()
    mts.sparsify(
        model,
        [("sparsegpt", RULES)],
        config={
            "forward_loop": make_forward_loop(batches, batch_size=4),
            "pattern": f"{args.n}:{args.m} sparsity",
        },
    )
    return time.perf_counter() - t0


def finetune(model: nn.Module, train_ids: torch.Tensor, args) -> list[float]:
    """`args.steps` AdamW steps of next-token loss on random windows of `train_ids`, linear
    warm-up then cosine decay; returns the loss of each step."""
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    n_starts = train_ids.numel() - args.seq_len - 1
    losses = []
    model.train()
    for step in range(args.steps):
        starts = torch.randint(0, n_starts, (args.batch_size,), generator=gen)
        windows = torch.stack([train_ids[s : s + args.seq_len + 1] for s in starts.tolist()])
        logits = model(windows[:, :-1], use_cache=False).logits
        loss = nn.functional.cross_entropy(logits.transpose(1, 2), windows[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach().item())
        if (step + 1) % max(1, args.steps // 10) == 0 or step + 1 == args.steps:
            recent = losses[-max(1, args.steps // 10) :]
            print(f"  step {step + 1:4d}/{args.steps}  loss {sum(recent) / len(recent):.4f}")
    model.eval()
    return losses


def pattern_violations(model: nn.Module, n: int, m: int) -> tuple[int, list[str]]:
    """(sparsified layers, the names of those with a group of M input weights holding more than N
    nonzeros), for the weight a forward uses and the stored parameter alike."""
    layers, bad = 0, []
    for name, module in model.named_modules():
        if not mts.is_sparse(module):
            continue
        layers += 1
        for weight in (module.weight, mts.dense_weight(module)):
            w = weight.detach()
            if w.dim() != 2 or w.shape[1] % m:
                bad.append(f"{name} (shape {tuple(w.shape)} is not [out, k*{m}])")
                break
            nonzeros = (w.reshape(w.shape[0], -1, m) != 0).sum(-1)
            if int(nonzeros.max()) > n:
                bad.append(f"{name} ({int((nonzeros > n).sum())} groups over {n} nonzeros)")
                break
    return layers, bad


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    source = resolve_model("default")  # stories260K and its tokenizer, as `mopt ptq` loads them
    eval_ids = source.encode(mdata.default_eval_text())
    calib_ids = source.encode(mdata.default_calib_text())
    train_ids = torch.tensor(source.encode(mdata.default_train_text()))
    model = source.load()
    dense_copy = copy.deepcopy(model) if args.dense_baseline else None

    def ppl(m: nn.Module = model) -> float:
        return perplexity(m, eval_ids, 512, progress=False)

    print(
        f"stories260K; eval {len(eval_ids)} tokens, SparseGPT calibration {args.calib_samples} x "
        f"512 tokens, fine-tuning text {train_ids.numel()} tokens (disjoint from both)"
    )
    dense = ppl()
    print(f"dense                 perplexity {dense:.4f}")
    seconds = sparsegpt(model, calib_ids, args)
    sparse = ppl()
    print(f"SparseGPT {args.n}:{args.m}         perplexity {sparse:.4f}  ({seconds:.1f} s)")
    t0 = time.perf_counter()
    tokens = args.steps * args.batch_size * args.seq_len
    print(
        f"fine-tuning: {args.steps} steps x {args.batch_size} x {args.seq_len} tokens, lr {args.lr}"
    )
    finetune(model, train_ids, args)
    tuned = ppl()
    print(
        f"after fine-tuning     perplexity {tuned:.4f}  ({time.perf_counter() - t0:.1f} s, "
        f"{tokens} tokens)"
    )
    if dense_copy is not None:
        print("fine-tuning the dense model the same way (--dense-baseline):")
        finetune(dense_copy, train_ids, args)
        print(f"dense, fine-tuned     perplexity {ppl(dense_copy):.4f}")
    gap = sparse - dense
    recovered = (sparse - tuned) / gap if gap > 0 else float("nan")
    print(
        f"recovered {recovered:.1%} of the perplexity gap SparseGPT opened ({sparse - dense:+.4f})"
    )

    layers, bad = pattern_violations(model, args.n, args.m)
    ok = True
    if layers == 0:
        print("error: no layer is sparsified", file=sys.stderr)
        ok = False
    elif bad:
        print(
            f"error: {len(bad)} of {layers} sparsified layers break {args.n}:{args.m}: "
            + "; ".join(bad[:5]),
            file=sys.stderr,
        )
        ok = False
    else:
        print(f"pattern check: all {layers} sparsified layers hold {args.n}:{args.m}")
    if not all(math.isfinite(v) for v in (dense, sparse, tuned)):
        print("error: a perplexity is not finite", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
