#!/usr/bin/env python3
"""QLoRA (NF4 base packed by mtq.compress + LoRA adapters through peft) against LoRA on a bf16
base, in one run, printing ratios.

Memory and step time: a ~100M-parameter Llama built from a config (random weights: memory and
time do not depend on the values), LoRA r=8 on every projection, AdamW on the adapters, one
sequence of --tokens tokens per step. Each arm runs in its own process; a sampling thread reads
the process's resident memory every 2 ms. "resident" is measured after the model is prepared
(weights + adapters), "peak" is the highest resident memory during the training steps, both
minus the process's resident memory before the model was built (torch and the libraries).

Quality: the shipped stories260K, LoRA r=8 trained for --steps steps on the TinyStories
fine-tuning text (disjoint from the evaluation text), perplexity on the default evaluation text
before and after, on the float base and on the packed NF4 base.

    PYTHONPATH=python python3 benchmarks/qlora.py [--tokens 256] [--steps 200] [--lr 2e-4]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LLAMA_100M = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048,
              "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
              "max_position_embeddings": 1024, "tie_word_embeddings": True}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakSampler:
    def __init__(self):
        self.peak, self._stop = _rss(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())


def _lora(model, r: int = 8):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS,
                                            lora_dropout=0.0))


def memory_arm(arm: str, tokens: int, steps: int) -> dict:
    """One arm in this process (called in a subprocess by main)."""
    import mopt.quantization as mtq
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    gc.collect()
    base_rss = _rss()
    cfg = LlamaConfig(**LLAMA_100M)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    if arm == "qlora_nf4":
        mtq.quantize(model, mtq.NF4_WEIGHT_ONLY_CFG, None)
        mtq.compress(model)
    model = _lora(model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    gc.collect()
    resident = _rss() - base_rss
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (1, tokens))
    times = []
    with _PeakSampler() as sampler:
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    return {"arm": arm, "params": params, "resident_bytes": resident,
            "peak_bytes": sampler.peak - base_rss, "step_seconds": sorted(times)[len(times) // 2],
            "loss": float(loss)}


def quality(steps: int, lr: float) -> list[dict]:
    import mopt.quantization as mtq
    from mopt import data as mdata
    from mopt.eval import perplexity, text_calibration_batches
    from mopt.models.llama2c import load_llama2c
    from mopt.ptq.models import resolve_model

    src = resolve_model("default")
    eval_ids = src.encode(mdata.default_eval_text())
    train = text_calibration_batches(src.encode(mdata.default_train_text()), steps, 256, 0)
    rows = []
    for arm in ("lora_float", "qlora_nf4"):
        torch.manual_seed(0)
        model = load_llama2c()
        if arm == "qlora_nf4":
            mtq.quantize(model, mtq.NF4_WEIGHT_ONLY_CFG, None)
            mtq.compress(model)
        before = perplexity(model, eval_ids, 256, progress=False)
        model = _lora(model)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        t0 = time.perf_counter()
        for i in range(steps):
            ids = train[i:i + 1]
            model(ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        after = perplexity(model, eval_ids, 256, progress=False)
        rows.append({"arm": arm, "before": before, "after": after, "train_seconds": seconds})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--mem-steps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        print(json.dumps(memory_arm(args.arm, args.tokens, args.mem_steps)))
        return 0
    mem = {}
    for arm in ("lora_bf16", "qlora_nf4"):
        # A fixed mmap threshold: glibc then maps every large block on its own and unmaps it
        # when freed, so resident memory follows the live tensors (with its default, a freed
        # float model stays resident and the packed model looked larger than the float one).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        out = subprocess.run([sys.executable, __file__, "--arm", arm, "--tokens",
                              str(args.tokens), "--mem-steps", str(args.mem_steps)],
                             capture_output=True, text=True, check=True, env=env)
        mem[arm] = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2.0 ** 20
    a, b = mem["lora_bf16"], mem["qlora_nf4"]
    print(f"Llama {a['params'] / 1e6:.0f}M parameters, {args.tokens} tokens per step, "
          f"LoRA r=8 on {len(TARGETS)} projections")
    print(f"{'arm':<10} {'resident MiB':>13} {'peak MiB':>10} {'step s':>8}")
    for r in (a, b):
        print(f"{r['arm']:<10} {r['resident_bytes'] / mib:>13.1f} {r['peak_bytes'] / mib:>10.1f} "
              f"{r['step_seconds']:>8.2f}")
    print(f"qlora/lora: resident {b['resident_bytes'] / a['resident_bytes']:.2f}x, peak "
          f"{b['peak_bytes'] / a['peak_bytes']:.2f}x, step time "
          f"{b['step_seconds'] / a['step_seconds']:.2f}x")
    rows = quality(args.steps, args.lr)
    print(f"stories260K, {args.steps} LoRA steps (lr {args.lr}): perplexity before -> after")
    for r in rows:
        print(f"{r['arm']:<10} {r['before']:.4f} -> {r['after']:.4f}  "
              f"({r['train_seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
