"""``mopt export``: quantize a model with a ``mopt ptq`` config and export it for an engine.

    mopt export --model default --config fp8 --format hf --out out/export/fp8_hf

The model is calibrated exactly as ``mopt ptq`` calibrates it (same texts, windows and seed),
its fake-quantized perplexity is measured on the evaluation text (the number to compare with the
engine that loads the export), and the exporter of the format writes the folder: all of it or
nothing (``mopt.export.files.atomic_dir``). Prints the files written, their sizes against the
model's bf16 weights, and how to load the folder; writes ``results.json`` (``mopt ptq``'s schema)
into it.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import time
from typing import Callable

import torch

from .files import ExportError, atomic_dir, check_output_dir

__all__ = ["EXPORT_FORMATS", "run_export"]

logger = logging.getLogger("mopt.export")

# format -> (file the exporter writes, or None for a folder; how an engine loads it)
EXPORT_FORMATS = {
    "hf": (None, "TensorRT-LLM: tensorrt_llm.LLM(model='{out}'); vLLM: "
                 "vllm.LLM(model='{out}', quantization='modelopt')"),
    "compressed-tensors": (None, "transformers.AutoModelForCausalLM.from_pretrained('{out}') "
                                 "(pip install compressed-tensors); vLLM: vllm.LLM('{out}')"),
    "onnx": ("model.onnx", "onnxruntime.InferenceSession('{out}/model.onnx'); TensorRT: "
                           "trtexec --onnx={out}/model.onnx"),
    "gguf": ("model.gguf", "llama_cpp.Llama(model_path='{out}/model.gguf'); llama.cpp: "
                           "llama-cli -m {out}/model.gguf"),
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json")


class _LogitsOnly(torch.nn.Module):
    """A causal LM as input_ids -> logits (no cache object in the outputs), for ONNX."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


def _check_source(fmt: str, source) -> None:
    """What a format needs from the model source, before the model is loaded."""
    from mopt.models.llama2c import Llama2cTokenizer

    if fmt == "gguf" and not isinstance(source.tokenizer, Llama2cTokenizer):
        raise ExportError("GGUF export writes the vocabulary of a llama2.c tokenizer (a llama2.c "
                          "checkpoint, or --tokenizer tokenizer.bin); a Hugging Face tokenizer "
                          "is not converted, and llama.cpp refuses a file without one")


def _export(fmt: str, model: torch.nn.Module, stage: pathlib.Path, example: torch.Tensor,
            tokenizer: object) -> None:
    """Runs the exporter of `fmt` into the (empty) folder `stage`."""
    from mopt import export as mexp

    if fmt == "hf":
        mexp.export_hf_checkpoint(model, export_dir=str(stage / "ckpt"))
    elif fmt == "compressed-tensors":
        mexp.export_compressed_tensors(model, str(stage / "ckpt"))
    elif fmt == "onnx":  # input_ids -> logits, without the KV cache a decoding loop keeps
        mexp.export_onnx(_LogitsOnly(model), (example,), str(stage / EXPORT_FORMATS[fmt][0]),
                         input_names=["input_ids"], output_names=["logits"],
                         dynamic_shapes={"input_ids": {0: "batch", 1: "sequence"}})
    else:  # GGUF carries the vocabulary (checked by _check_source)
        mexp.export_gguf(model, str(stage / EXPORT_FORMATS[fmt][0]), tokenizer=tokenizer)
    inner = stage / "ckpt"
    if inner.is_dir():  # a folder format: its files become the output folder's
        for p in inner.iterdir():
            shutil.move(str(p), str(stage / p.name))
        inner.rmdir()


def run_export(
    model: str = "default",
    config: str = "int8",
    fmt: str = "hf",
    out_dir: str | os.PathLike = "out/export",
    *,
    calib_text: str | os.PathLike | None = None,
    eval_text: str | os.PathLike | None = None,
    tokenizer: str | None = None,
    seq_len: int | None = None,
    calib_samples: int = 16,
    calib_seq_len: int | None = None,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = logger.info,
    device: str = "cpu",
) -> dict:
    """Quantizes `model` with the ``mopt ptq`` config `config` (calibrated as ``mopt ptq``
    does), exports it in `fmt` (a key of EXPORT_FORMATS) into the new folder `out_dir` and
    returns the results dict (also ``out_dir/results.json``). Every argument is checked before
    the model is loaded (ValueError / FileNotFoundError / FileExistsError, nothing written)."""
    from mopt.eval import perplexity
    from mopt.ptq.configs import config_availability, resolve_configs
    from mopt.ptq.run import _check_device, prepare_llm_run
    from mopt.ptq.size import deployed_weight_bytes

    log = log or (lambda s: None)
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of "
                         + ", ".join(EXPORT_FORMATS))
    entries = resolve_configs([config])
    if len(entries) != 1:
        raise ValueError(f"--config names one mopt ptq config, got {config!r}")
    entry = entries[0]
    reason = config_availability(entry)
    if reason is not None:
        raise NotImplementedError(f"config {entry.name} cannot run: {reason}")
    out = check_output_dir(out_dir)
    if model == "minilm":
        raise ValueError("mopt export takes a causal LLM (--model default, a llama2.c .bin, a "
                         "Hugging Face folder or smollm2-135m); minilm is an encoder")
    dev = _check_device(device)
    run = prepare_llm_run(model, tokenizer, calib_text, eval_text, seq_len, calib_samples,
                          calib_seq_len, seed)
    _check_source(fmt, run.source)

    import mopt.quantization as mtq

    base = run.source.load().to(dev)
    float_bytes = sum(p.numel() for p in base.parameters()) * 2  # bf16
    t0 = time.perf_counter()
    mtq.quantize(base, entry.build(), run.forward_loop)
    calib_s = time.perf_counter() - t0
    log(f"model: {run.source.description}; config {entry.name} ({entry.description}); "
        f"calibrated in {calib_s:.1f} s")
    ppl = perplexity(base, run.eval_ids, run.seq_len, batch_size=8, progress=progress)
    t0 = time.perf_counter()
    with atomic_dir(out) as stage:
        if tokenizer is None and os.path.isdir(model):
            for name in _TOKENIZER_FILES:  # so the folder loads with its tokenizer
                if os.path.isfile(os.path.join(model, name)):
                    shutil.copy2(os.path.join(model, name), stage / name)
        _export(fmt, base, stage, torch.tensor([run.eval_ids[:run.seq_len]], device=dev),
                run.source.tokenizer)
        export_s = time.perf_counter() - t0
        files = sorted((p.name, p.stat().st_size) for p in stage.iterdir() if p.is_file())
        total = sum(b for _, b in files)
        results = {
            "setup": {**run.setup, "command": "export", "config": entry.name, "format": fmt,
                      "out": str(out), "bf16_weight_bytes": float_bytes},
            "rows": [{"config": entry.name, "metric": ppl, "metric_name": "perplexity",
                      "format": fmt, "status": "ok", "files": dict(files),
                      "total_bytes": total, "ratio_to_bf16": total / float_bytes,
                      "weight_bytes_as_deployed": deployed_weight_bytes(base).total_bytes,
                      "calib_seconds": calib_s, "export_seconds": export_s}],
        }
        (stage / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log(_table(files, total, float_bytes))
    log(f"fake-quantized perplexity (mopt, {entry.name}): {ppl:.4f}; exported in "
        f"{export_s:.1f} s to {out}")
    log("load it with: " + EXPORT_FORMATS[fmt][1].format(out=out))
    return results


def _table(files: list[tuple[str, int]], total: int, float_bytes: int) -> str:
    width = max([len(n) for n, _ in files] + [len("total")])
    lines = [f"{'file':<{width}}  {'bytes':>12}", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{n:<{width}}  {b:>12,}" for n, b in files]
    lines.append(f"{'total':<{width}}  {total:>12,}  ({total / float_bytes:.2f}x the bf16 "
                 f"weights, {float_bytes:,} bytes)")
    return "\n".join(lines)
