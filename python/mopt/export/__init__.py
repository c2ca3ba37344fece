"""Export a quantized model in the formats serving engines load (``import mopt.export``).

One module per target, each a thin writer over the packed weights of
``mopt.quantization.compress`` (the numerics live in C++):

* ``export_hf_checkpoint(model, export_dir)``: ModelOpt's unified Hugging Face checkpoint
  (TensorRT-LLM, vLLM, SGLang), in ``mopt.export.hf``.
* ``export_compressed_tensors(model, export_dir)``: llm-compressor's format (vLLM, transformers),
  in ``mopt.export.compressed_tensors``.
* ``export_onnx(model, args, path)``: ONNX with QuantizeLinear / DequantizeLinear nodes
  (TensorRT, onnxruntime), in ``mopt.export.onnx``.
* ``export_gguf(model, path)``: GGUF for llama.cpp, in ``mopt.export.gguf``.

Every writer fills a temporary folder beside the target and renames it into place, so a failed
export leaves nothing half-written (``mopt.export.files``).
"""

from __future__ import annotations

import importlib

__all__ = ["export_hf_checkpoint", "export_compressed_tensors", "export_onnx", "export_gguf"]

_WHERE = {
    "export_hf_checkpoint": "hf",
    "export_compressed_tensors": "compressed_tensors",
    "export_onnx": "onnx",
    "export_gguf": "gguf",
}


def __getattr__(name: str):
    """Imports a writer's module on first use (onnx and gguf pull in their own packages)."""
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
