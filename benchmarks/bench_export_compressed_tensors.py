#!/usr/bin/env python3
"""compressed-tensors export (issue 13 item 3): what it costs and what transformers makes of it.

For stories260K (real weights, calibrated on 16 x 256 tokens of the TinyStories calibration text)
and each config: export time (median of 3), the checkpoint's model.safetensors bytes against
the same model saved by transformers in bf16, perplexity on the TinyStories evaluation text of
mopt's fake-quantized model and of the folder loaded with
``AutoModelForCausalLM.from_pretrained`` (compressed-tensors decompresses the weights; W8A8
layers fake-quantize their inputs with compressed-tensors' own code), and that loaded model's
forward throughput in tokens/s next to the float model in transformers (batch 8 x 256, median of
repeats after a warm-up, models interleaved).

``--scale`` adds a Llama built from a config (~85M parameters, random weights: sizes and speed
only) exported weight-only.

Run: PYTHONPATH=python python3 benchmarks/bench_export_compressed_tensors.py [--scale]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
import warnings

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from _bench_common import print_table, time_interleaved  # noqa: E402

CONFIGS = [
    ("int8_wo", "INT8_WEIGHT_ONLY_CFG"),
    ("int8 W8A8", "INT8_DEFAULT_CFG"),
    ("int8 W8A8 dyn", "INT8_DYNAMIC_CFG"),
    ("fp8", "FP8_DEFAULT_CFG"),
    ("int4 g128", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"),
    ("int4 g32", "INT4_B32_WEIGHT_ONLY_CFG"),
    ("int4 g32 asym", "INT4_B32_ASYM_CFG"),
]


def _quiet(fn, *args):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return fn(*args)


def _bf16_bytes(model, tmp: pathlib.Path) -> int:
    out = tmp / "bf16"
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(str(out))
    return sum(p.stat().st_size for p in out.glob("*.safetensors"))


def _export_timed(model, tmp: pathlib.Path, tag: str, repeats: int = 3):
    from mopt.export import export_compressed_tensors

    times, summary = [], None
    for i in range(repeats):
        out = tmp / f"{tag}_{i}"
        t0 = time.perf_counter()
        summary = export_compressed_tensors(model, out)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), summary, tmp / f"{tag}_0"


def _tokens_per_s(models: dict, ids: torch.Tensor, repeats: int) -> dict:
    def run(m):
        def f():
            with torch.no_grad():
                m(ids)
        return f

    secs = time_interleaved({k: run(m) for k, m in models.items()}, repeats, warmup=1)
    return {k: ids.numel() / s for k, s in secs.items()}


def stories(tmp: pathlib.Path, repeats: int) -> None:
    import mopt.quantization as mtq
    from mopt import data as mdata
    from mopt.eval import make_forward_loop, perplexity, text_calibration_batches
    from mopt.models.llama2c import Llama2cTokenizer, load_llama2c
    from transformers import AutoModelForCausalLM

    tok = Llama2cTokenizer.from_file()
    loop = make_forward_loop(
        text_calibration_batches(tok.encode(mdata.default_calib_text()), 16, 256, 0), 4)
    eval_ids = tok.encode(mdata.default_eval_text())
    batch = torch.tensor(eval_ids[: 8 * 256]).reshape(8, 256)
    base = load_llama2c().eval()
    bf16 = _bf16_bytes(base, tmp)
    float_ppl = perplexity(base, eval_ids, 256, progress=False)
    print(f"stories260K: float perplexity {float_ppl:.4f}; bf16 model.safetensors {bf16} bytes")
    rows = []
    for label, cfg in CONFIGS:
        model = copy.deepcopy(base)
        _quiet(mtq.quantize, model, getattr(mtq, cfg), loop)
        secs, summary, folder = _export_timed(model, tmp, label.replace(" ", "_"))
        size = summary["files"]["model.safetensors"]
        ppl_m = perplexity(model, eval_ids, 256, progress=False)
        try:
            loaded = _quiet(AutoModelForCausalLM.from_pretrained, str(folder)).eval()
            ppl_c = perplexity(loaded, eval_ids, 256, progress=False)  # also decompresses
        except (RuntimeError, ValueError) as e:  # asymmetric zero points: docs/export.md
            rows.append([label, summary["format"], f"{secs * 1e3:.0f}", f"{size}",
                         f"{size / bf16:.3f}", f"{ppl_m:.4f}",
                         f"load fails: {type(e).__name__}", "", "", "", "", ""])
            continue
        diff = _max_rel_weight_diff(model, loaded)
        tps = _tokens_per_s({"float": base, "ct": loaded}, batch, repeats)
        rows.append([label, summary["format"], f"{secs * 1e3:.0f}", f"{size}",
                     f"{size / bf16:.3f}", f"{ppl_m:.4f}", f"{ppl_c:.4f}",
                     f"{100 * (ppl_c / ppl_m - 1):+.3f}", f"{diff:.1e}", f"{tps['float']:.0f}",
                     f"{tps['ct']:.0f}", f"{tps['ct'] / tps['float']:.2f}"])
    print_table(["config", "format", "export ms", "bytes", "x bf16", "ppl mopt", "ppl CT",
                 "CT vs mopt %", "max rel dW", "float tok/s", "CT tok/s", "CT/float"], rows)


def _max_rel_weight_diff(model, loaded) -> float:
    """Largest |W_CT - W_mopt| / |W_mopt| over the quantized weights (nonzero ones)."""
    worst = 0.0
    with torch.no_grad():
        for name, mod in model.named_modules():
            if hasattr(mod, "weight_quantizer") and mod.weight_quantizer.is_enabled:
                w = mod.weight_quantizer(mod.weight).float()
                lw = loaded.get_submodule(name).weight.float()
                nz = w != 0
                worst = max(worst, float(((lw - w).abs()[nz] / w.abs()[nz]).max()))
                worst = max(worst, float(lw[~nz].abs().max()) if (~nz).any() else 0.0)
    return worst


def scale(tmp: pathlib.Path, repeats: int) -> None:
    import mopt.quantization as mtq
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=4, vocab_size=512,
                      max_position_embeddings=512, tie_word_embeddings=True)
    base = LlamaForCausalLM(cfg).eval()
    n = sum(p.numel() for p in base.parameters())
    bf16 = _bf16_bytes(base, tmp)
    ids = torch.randint(0, 512, (1, 128), generator=torch.Generator().manual_seed(0))
    print(f"\nLlama from config: {n / 1e6:.1f}M parameters (random weights); bf16 "
          f"model.safetensors {bf16} bytes")
    rows = []
    for label, name in [("int8_wo", "INT8_WEIGHT_ONLY_CFG"),
                        ("int4 g128", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG")]:
        model = copy.deepcopy(base)
        _quiet(mtq.quantize, model, getattr(mtq, name), lambda m: m(ids))
        secs, summary, folder = _export_timed(model, tmp, "scale_" + label.replace(" ", "_"), 1)
        size = summary["files"]["model.safetensors"]
        loaded = _quiet(AutoModelForCausalLM.from_pretrained, str(folder)).eval()
        tps = _tokens_per_s({"float": base, "ct": loaded}, ids, repeats)
        rows.append([label, summary["format"], f"{secs:.2f}", f"{size}", f"{size / bf16:.3f}",
                     f"{tps['float']:.0f}", f"{tps['ct']:.0f}",
                     f"{tps['ct'] / tps['float']:.2f}"])
        del model, loaded
    print_table(["config", "format", "export s", "bytes", "x bf16", "float tok/s", "CT tok/s",
                 "CT/float"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", action="store_true", help="also the ~85M-parameter Llama")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import compressed_tensors
    import transformers

    print(f"# {platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{a.threads} thread(s), transformers {transformers.__version__}, compressed-tensors "
          f"{compressed_tensors.__version__}, load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as d:
        stories(pathlib.Path(d), a.repeats)
        if a.scale:
            scale(pathlib.Path(d), a.repeats)


if __name__ == "__main__":
    main()
