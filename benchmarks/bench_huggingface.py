#!/usr/bin/env python3
"""Hugging Face plugin: mopt against nvidia-modelopt (the reference a user would use instead) on
transformers models, in one run.

* Quality. stories260K (real, ``mopt.models.load_llama2c``) quantized with FP8_KV_CFG alone,
  FP8_DEFAULT_CFG + FP8_KV_CFG and INT8_DEFAULT_CFG + FP8_KV_CFG: perplexity on the first
  ``--eval-tokens`` tokens of the TinyStories evaluation text (calibration: 16 windows of 256
  tokens of the disjoint calibration text) by both libraries, and the largest difference of
  their k/v bmm amaxes. all-MiniLM-L6-v2 (real) with FP8_DEFAULT_CFG + FP8_KV_CFG: mean cosine
  similarity of quantized to float sentence embeddings of WikiText-2 rows (modelopt 0.47 also
  quantizes LayerNorm inputs, which SPEC's modules do not: switched off). A GPT-2-shaped model
  (random weights, Conv1D layers) with INT8_DEFAULT_CFG: relative difference of the two
  libraries' logits (mopt keeps Conv1D's [in, out] weight, modelopt transposes it).
* Speed. Forward latency (median of repeats after a warm-up, libraries interleaved) of the
  quantized stories260K (batch 4 x 256 tokens) and GPT-2-shaped model (batch 2 x 128), and
  greedy ``generate()`` throughput of stories260K with FP8 W/A + FP8 KV (48 new tokens, KV cache);
  the float model's time is the floor. Calibration time of each ``quantize`` call.

Run: MOPT_EXT_DIR=build PYTHONPATH=python python3 benchmarks/bench_huggingface.py
"""

from __future__ import annotations

import argparse
import copy
import os
import pathlib
import platform
import sys
import time
import warnings

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

from _bench_common import time_interleaved  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _quantize_timed(lib, model, cfg, loop) -> float:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib.quantize(model, cfg, loop)
    return time.perf_counter() - t0


def _kv_amaxes(model) -> list[float]:
    out = []
    for name, m in model.named_modules():
        if name.endswith(("k_bmm_quantizer", "v_bmm_quantizer")) and getattr(m, "amax", None) \
                is not None and m.is_enabled:
            out.append(float(m.amax))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-tokens", type=int, default=4097)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import mopt.quantization as mtq
    from mopt import data
    from mopt.eval import embeddings as emb
    from mopt.eval import make_forward_loop, perplexity, text_calibration_batches
    from mopt.models import Llama2cTokenizer, load_llama2c

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import modelopt
            import modelopt.torch.quantization as mq
    except ImportError:
        print("nvidia-modelopt is not installed; nothing to compare against", file=sys.stderr)
        return 1

    def ours(base, kv=True):
        cfg = copy.deepcopy(base)
        if kv:
            cfg["quant_cfg"] = {**cfg["quant_cfg"], **copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"])}
        return cfg

    def theirs(base, kv=True):
        cfg = copy.deepcopy(base)
        if kv:
            cfg["quant_cfg"] = list(cfg["quant_cfg"]) + copy.deepcopy(mq.FP8_KV_CFG["quant_cfg"])
        return cfg

    # modelopt's FP8_KV_CFG is a fragment to merge (it neither disables the other quantizers nor
    # names an algorithm); its stand-alone equivalent of mopt's FP8_KV_CFG:
    mq_kv_only = {
        "quant_cfg": [{"quantizer_name": "*", "enable": False},
                      *copy.deepcopy(mq.FP8_KV_CFG["quant_cfg"])],
        "algorithm": "max",
    }
    cases = [
        ("FP8_KV_CFG", mtq.FP8_KV_CFG, mq_kv_only),
        ("FP8_DEFAULT + FP8_KV", ours(mtq.FP8_DEFAULT_CFG), theirs(mq.FP8_DEFAULT_CFG)),
        ("INT8_DEFAULT + FP8_KV", ours(mtq.INT8_DEFAULT_CFG), theirs(mq.INT8_DEFAULT_CFG)),
    ]
    libs = {"mopt": mtq, "modelopt": mq}

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__},"
        f" {args.threads} thread(s), load average {', '.join(f'{x:.1f}' for x in os.getloadavg())};"
        f" mopt vs nvidia-modelopt {modelopt.__version__}\n"
    )

    # -- stories260K quality -------------------------------------------------------------------
    tok = Llama2cTokenizer.from_file()
    eval_ids = tok.encode(data.default_eval_text())[: args.eval_tokens]
    loop = make_forward_loop(
        text_calibration_batches(tok.encode(data.default_calib_text()), 16, 256, seed=0), 4
    )
    base = load_llama2c()
    float_ppl = perplexity(base, eval_ids, 256, progress=False)
    print(f"stories260K, {len(eval_ids) - 1} predicted tokens (windows of 256); float perplexity "
          f"{float_ppl:.4f}\n")
    print("| config | mopt ppl | modelopt ppl | difference | max k/v amax difference |"
          " mopt calib s | modelopt calib s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    quantized = {}
    for label, cfg in (("mopt", cases[0][1]), ("modelopt", cases[0][2])):
        _quantize_timed(libs[label], copy.deepcopy(base), cfg, loop)  # warm-up (first-call costs)
    for name, cfg_ours, cfg_theirs in cases:
        res = {}
        for label, cfg in (("mopt", cfg_ours), ("modelopt", cfg_theirs)):
            model = copy.deepcopy(base)
            t = _quantize_timed(libs[label], model, cfg, loop)
            res[label] = (perplexity(model, eval_ids, 256, progress=False), t, _kv_amaxes(model))
            quantized[(name, label)] = model
        (p1, t1, a1), (p2, t2, a2) = res["mopt"], res["modelopt"]
        amax_diff = max(abs(x - y) for x, y in zip(a1, a2)) if a1 and len(a1) == len(a2) else \
            float("nan")
        print(f"| {name} | {p1:.4f} | {p2:.4f} | {p1 - p2:+.2e} | {amax_diff:.1e} | {t1:.2f} |"
              f" {t2:.2f} |", flush=True)

    # -- stories260K speed ---------------------------------------------------------------------
    ids = torch.tensor(eval_ids[: 4 * 256]).view(4, 256)
    prompt = torch.tensor([tok.encode("Once upon a time")])
    key = "FP8_DEFAULT + FP8_KV"
    models = {"float": base, "mopt": quantized[(key, "mopt")],
              "modelopt": quantized[(key, "modelopt")]}

    def fwd(m):
        return lambda: m(ids, use_cache=False)

    def gen(m):
        return lambda: m.generate(prompt, max_new_tokens=48, min_new_tokens=48, do_sample=False,
                                  pad_token_id=0)

    with torch.no_grad():
        f = time_interleaved({k: fwd(m) for k, m in models.items()}, args.repeats)
        g = time_interleaved({k: gen(m) for k, m in models.items()}, args.repeats)
    print(f"\nstories260K with {key}: median of {args.repeats} after a warm-up\n")
    print("| measurement | float | mopt | modelopt | mopt / float | modelopt / mopt |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| forward 4 x 256 tokens, ms | {f['float'] * 1e3:.1f} | {f['mopt'] * 1e3:.1f} |"
          f" {f['modelopt'] * 1e3:.1f} | {f['mopt'] / f['float']:.2f}x |"
          f" {f['modelopt'] / f['mopt']:.2f}x |")
    tps = {k: 48 / v for k, v in g.items()}
    print(f"| generate 48 tokens, tokens/s | {tps['float']:.0f} | {tps['mopt']:.0f} |"
          f" {tps['modelopt']:.0f} | {tps['mopt'] / tps['float']:.2f}x |"
          f" {tps['mopt'] / tps['modelopt']:.2f}x faster |", flush=True)

    # -- GPT-2-shaped model: Conv1D ------------------------------------------------------------
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=768, n_head=12, vocab_size=50257,
                                     n_positions=256)).eval()
    gids = torch.randint(0, 50257, (2, 128), generator=torch.Generator().manual_seed(1))
    def gloop(m):
        m(gids, use_cache=False)

    g_models = {"float": gpt}
    g_calib = {}
    # modelopt 0.47 also quantizes LayerNorm inputs (SPEC's input-only modules do not include
    # LayerNorm); switched off so that both quantize the same tensors
    mq_int8 = copy.deepcopy(mq.INT8_DEFAULT_CFG)
    mq_int8["quant_cfg"] = [*mq_int8["quant_cfg"],
                            {"quantizer_name": "*ln_*input_quantizer", "enable": False}]
    for label, cfg in (("mopt", mtq.INT8_DEFAULT_CFG), ("modelopt", mq_int8)):
        m = copy.deepcopy(gpt)
        g_calib[label] = _quantize_timed(libs[label], m, cfg, gloop)
        g_models[label] = m
    with torch.no_grad():
        lo = {k: m(gids, use_cache=False).logits for k, m in g_models.items()}
        gf = time_interleaved({k: (lambda m=m: m(gids, use_cache=False))
                            for k, m in g_models.items()}, args.repeats)
    rel = ((lo["mopt"] - lo["modelopt"]).norm() / (lo["modelopt"] - lo["float"]).norm()).item()
    print(f"\nGPT-2 shape (4 layers, 768 wide, random weights, Conv1D) with INT8_DEFAULT_CFG; "
          f"||mopt - modelopt|| / ||modelopt - float|| of the logits = {rel:.1e}\n")
    print("| measurement | float | mopt | modelopt | mopt / float | modelopt / mopt |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| forward 2 x 128 tokens, ms | {gf['float'] * 1e3:.1f} | {gf['mopt'] * 1e3:.1f} |"
          f" {gf['modelopt'] * 1e3:.1f} | {gf['mopt'] / gf['float']:.2f}x |"
          f" {gf['modelopt'] / gf['mopt']:.2f}x |")
    print(f"| quantize (calibrate on 2 x 128), s | | {g_calib['mopt']:.2f} |"
          f" {g_calib['modelopt']:.2f} | | {g_calib['modelopt'] / g_calib['mopt']:.2f}x |",
          flush=True)

    # -- MiniLM ---------------------------------------------------------------------------------
    try:
        rows, calib_rows = emb.wikitext_sentences(32), emb.wikitext_sentences(32, skip=32)
        minilm = emb.load_minilm()
    except (ImportError, FileNotFoundError) as e:
        print(f"\nMiniLM skipped: {e}")
        return 0
    enc = emb.tokenize(minilm, calib_rows)
    def mloop(m):
        m(enc["input_ids"], enc["attention_mask"])

    float_e = emb.sentence_embeddings(minilm, rows)
    print("\nall-MiniLM-L6-v2, 32 WikiText-2 rows (calibration: 32 other rows); modelopt's"
          " LayerNorm input quantizers off\n")
    print("| config | mopt mean cosine | modelopt mean cosine | mopt min | modelopt min |")
    print("|---|---:|---:|---:|---:|")
    for name, cfg_ours, cfg_theirs in cases[:2]:
        cos = {}
        cfg_theirs = copy.deepcopy(cfg_theirs)
        cfg_theirs["quant_cfg"] = [*cfg_theirs["quant_cfg"],
                                   {"quantizer_name": "*LayerNorm.input_quantizer", "enable": False}]
        for label, cfg in (("mopt", cfg_ours), ("modelopt", cfg_theirs)):
            m = copy.deepcopy(minilm)
            # modelopt adds attention quantizers only when handed a transformers PreTrainedModel,
            # so it gets the BERT encoder inside the sentence-embedding wrapper; mopt takes the
            # wrapper itself
            target = m if label == "mopt" else m.encoder
            _quantize_timed(libs[label], target, cfg, lambda _, m=m: mloop(m))
            cos[label] = emb.cosine_similarity(emb.sentence_embeddings(m, rows), float_e)
        print(f"| {name} | {cos['mopt'].mean():.5f} | {cos['modelopt'].mean():.5f} |"
              f" {cos['mopt'].min():.5f} | {cos['modelopt'].min():.5f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
