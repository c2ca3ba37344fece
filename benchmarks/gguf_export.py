"""GGUF export of stories260K: file size, export time, llama.cpp vs mopt perplexity, llama.cpp
speed, for F32 and mopt's GGUF configs (Q8_0, Q4_0, Q4_K).

    PYTHONPATH=python python3 benchmarks/gguf_export.py [--windows 4] [--threads 1]

Perplexity: the default evaluation text (mopt.data.default_eval_text) encoded with one BOS,
scored in non-overlapping 512-token windows; mopt runs the fake-quantized HF model, llama.cpp
(llama-cpp-python) the exported file on the same token ids. Speed: llama.cpp prompt processing
of one 512-token window and greedy decoding of 128 tokens, median of 3 runs.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

import mopt.quantization as mtq
from mopt.data import default_eval_text
from mopt.export import export_gguf
from mopt.models.llama2c import Llama2cTokenizer, load_llama2c

CONFIGS = {
    "f32": None,
    "q8_0": mtq.GGUF_Q8_0_CFG,
    "q4_0": mtq.GGUF_Q4_0_CFG,
    "q4_k": mtq.GGUF_Q4_K_CFG,
}
WINDOW = 512


def windows(tokens, n):
    return [tokens[i * WINDOW: (i + 1) * WINDOW] for i in range(n)
            if len(tokens[i * WINDOW: (i + 1) * WINDOW]) > 1]


def nll_mopt(model, win):
    ids = torch.tensor([win])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].double()
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()


def nll_llama(llm, win):
    llm.reset()
    llm.eval(win)
    logits = np.asarray(llm.scores[: len(win) - 1], dtype=np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return -logp[np.arange(len(win) - 1), win[1:]].sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import llama_cpp

    torch.set_num_threads(args.threads)
    tok = Llama2cTokenizer.from_file()
    tokens = tok.encode(default_eval_text(), bos=True)
    wins = windows(tokens, args.windows)
    n_pred = sum(len(w) - 1 for w in wins)
    base = load_llama2c()
    n_weights = sum(p.numel() for p in base.parameters())
    f16_bytes = 2 * n_weights
    print(f"# stories260K, {n_pred} predicted tokens in {len(wins)} windows of {WINDOW}; "
          f"{platform.processor() or platform.machine()}, {args.threads} threads, "
          f"llama-cpp-python {llama_cpp.__version__}")
    print(f"# F16 reference size: {f16_bytes} bytes (2 bytes x {n_weights} parameters)")
    print("| format | file bytes | vs F32 | vs F16 | export s | mopt ppl | llama.cpp ppl | diff "
          "| llama.cpp prompt tok/s | llama.cpp decode tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in CONFIGS.items():
            model = copy.deepcopy(base)
            if cfg is not None:
                model = mtq.quantize(model, cfg)
            path = os.path.join(tmp, f"{name}.gguf")
            t0 = time.perf_counter()
            export_gguf(model, path, tokenizer=tok)
            export_s = time.perf_counter() - t0
            size = os.path.getsize(path)
            ppl_mopt = math.exp(sum(nll_mopt(model, w) for w in wins) / n_pred)
            llm = llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=WINDOW,
                                  n_batch=WINDOW, n_threads=args.threads,
                                  n_threads_batch=args.threads, verbose=False)
            ppl_llama = math.exp(sum(nll_llama(llm, w) for w in wins) / n_pred)
            prompt, decode = [], []
            for _ in range(3):
                llm.reset()
                t0 = time.perf_counter()
                llm.eval(wins[0])
                prompt.append(len(wins[0]) / (time.perf_counter() - t0))
                llm.reset()
                llm.eval(wins[0][:1])
                t0 = time.perf_counter()
                for _ in range(128):
                    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                    llm.eval([nxt])
                decode.append(128 / (time.perf_counter() - t0))
            llm.close()
            rows[name] = size
            print(f"| {name.upper()} | {size} | {size / rows['f32']:.3f} | {size / f16_bytes:.3f} "
                  f"| {export_s:.3f} | {ppl_mopt:.4f} | {ppl_llama:.4f} "
                  f"| {100 * (ppl_llama - ppl_mopt) / ppl_mopt:+.3f}% "
                  f"| {statistics.median(prompt):.0f} | {statistics.median(decode):.0f} |")


if __name__ == "__main__":
    main()
