"""Resident memory of mtq.compress: weight bytes of the quantized layers in bf16 against their
packed form, the whole model's parameter and buffer bytes, and the process RSS, for stories260K,
all-MiniLM-L6-v2 and a ~100M-parameter LlamaForCausalLM built from a config (random init).

Each (model, format) runs in a fresh process (glibc's mmap threshold fixed at 128 KiB, so freed
tensors leave the RSS): load the model in bf16, record RSS, quantize it with the `mopt ptq`
config (calibrated on random token windows: memory does not depend on them), compress, record
RSS again.

    PYTHONPATH=python python3 benchmarks/compress_memory.py [--models stories,minilm,llama100m]
        [--formats int8_wo,fp8,...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys

FORMATS = ["int8_wo", "fp8", "int4", "int4_b32", "int4_b32_asym", "nvfp4", "mxfp4", "mxfp8",
           "nf4"]
MODELS = ["stories", "minilm", "llama100m"]
FOUR_BIT = {"int4", "int4_b32", "int4_b32_asym", "nvfp4", "mxfp4", "nf4"}


def rss_bytes() -> int:
    """Resident set size after returning freed heap pages to the OS (malloc_trim)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def resident_bytes(model) -> int:
    """Bytes of the model's parameters and buffers, each storage once (a packed amax shares the
    weight quantizer's storage)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def build(model_name: str):
    import torch

    if model_name == "stories":
        from mopt.models.llama2c import load_llama2c

        model = load_llama2c().to(torch.bfloat16).eval()
        vocab = model.config.vocab_size
        return model, lambda m: m(torch.randint(0, vocab, (2, 32)))
    if model_name == "minilm":
        from mopt.eval.embeddings import load_minilm

        model = load_minilm(torch.bfloat16)
        vocab = model.encoder.config.vocab_size
        return model, lambda m: m(torch.randint(1000, vocab, (2, 32)))
    if model_name == "llama100m":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=8192, hidden_size=768, intermediate_size=2048,
                          num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                          max_position_embeddings=512, tie_word_embeddings=False)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
        return model, lambda m: m(torch.randint(0, cfg.vocab_size, (1, 32)))
    raise ValueError(f"unknown model {model_name!r}; choose from {MODELS}")


def measure(model_name: str, fmt: str) -> dict:
    import torch

    import mopt.quantization as mtq
    from mopt.ptq.configs import resolve_configs

    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    model, run = build(model_name)
    gc.collect()
    rss_float = rss_bytes()
    params = sum(p.numel() for p in model.parameters())
    model_bytes_float = resident_bytes(model)
    with torch.no_grad():
        mtq.quantize(model, resolve_configs(fmt)[0].build(), lambda m: run(m))
    layers = [m for _, m in model.named_modules()
              if getattr(m, "weight_quantizer", None) is not None and m.weight_quantizer.is_enabled]
    weight_bf16 = sum(m.weight.numel() * 2 for m in layers)
    mtq.compress(model)
    gc.collect()
    rss_packed = rss_bytes()
    packed = sum(t.numel() * t.element_size() for n, t in model.named_buffers()
                 if n.rpartition(".")[2].startswith("packed_"))
    model_bytes_packed = resident_bytes(model)  # with the quantizers' own buffers
    with torch.no_grad():
        run(model)  # the compressed model still runs
    return {"model": model_name, "format": fmt, "params": params, "layers": len(layers),
            "weight_bf16": weight_bf16, "weight_packed": packed,
            "model_bytes_bf16": model_bytes_float, "model_bytes_packed": model_bytes_packed,
            "rss_bf16": rss_float, "rss_packed": rss_packed}


def mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "FORMAT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    rows = []
    for model_name in args.models.split(","):
        for fmt in args.formats.split(","):
            # large tensors in their own mappings, so freeing one returns its pages at once
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            done = subprocess.run([sys.executable, __file__, "--one", model_name, fmt],
                                  capture_output=True, text=True, env=env)
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{model_name} {fmt}: failed: {tail}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"weights of the quantized layers (lm_head and embeddings stay bf16)")
    head = ("| model | params | format | quantized weights bf16 MiB | packed MiB | packed / bf16 "
            "| model bf16 MiB | model compressed MiB | RSS bf16 MiB | RSS compressed MiB |")
    print(head)
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r["weight_packed"] / r["weight_bf16"]
        flag = " (> 0.3)" if r["format"] in FOUR_BIT and ratio > 0.3 else ""
        print(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['format']} | "
              f"{mib(r['weight_bf16'])} | {mib(r['weight_packed'])} | {ratio:.3f}{flag} | "
              f"{mib(r['model_bytes_bf16'])} | {mib(r['model_bytes_packed'])} | "
              f"{mib(r['rss_bf16'])} | {mib(r['rss_packed'])} |")


if __name__ == "__main__":
    main()
