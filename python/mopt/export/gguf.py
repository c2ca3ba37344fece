"""GGUF export for llama.cpp: ``export_gguf(model, path, *, tokenizer=None)``.

Writes a Llama (transformers ``LlamaForCausalLM``) as a GGUF v3 file that llama.cpp loads:
architecture ``llama`` metadata, the tokenizer (llama2.c / SentencePiece vocabulary), tensors
under llama.cpp's names with q/k rows back in llama.cpp's interleaved RoPE order, and each
linear weight in the type its quantizer asked for:

* a weight quantizer in a GGUF format (``block_sizes {"gguf": "q8_0" | "q4_0" | "q4_k"}``, the
  configs ``GGUF_Q8_0_CFG`` / ``GGUF_Q4_0_CFG`` / ``GGUF_Q4_K_CFG``): ggml blocks packed by mopt's
  C++ kernel (``torch.ops.mopt.gguf_pack``), in the type llama.cpp's own quantizer picks for the
  row length (``mopt._C.gguf_row_type``: Q4_K rows of 64 become Q5_0, rows that fit no block
  stay float). The fake-quantized model computes with exactly the values llama.cpp dequantizes.
* no weight quantizer, or a disabled one: F32.

Token embedding, norms and (unquantized) output stay F32. Anything else quantized - another
format, activation quantizers, a pre-quant scale - raises ExportError naming the layer, since
llama.cpp would compute a different function.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np
import torch

from .. import _C
from .files import ExportError, atomic_file

__all__ = ["export_gguf", "gguf_tensor_types"]

# ggml type ids of the block types mopt packs (GGMLQuantizationType values)
_GGML_TYPE = {"f32": 0, "q4_0": 2, "q5_0": 6, "q8_0": 8, "q4_k": 12}

# HF Llama module names -> llama.cpp tensor names (per layer)
_LAYER_LINEARS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LAYER_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}

# llama.cpp token types (llama_token_type)
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def _gguf():
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - gguf is in requirements.txt
        raise ImportError("export_gguf needs the 'gguf' package (pip install gguf)") from e
    return gguf


def _check_llama(model: torch.nn.Module) -> Any:
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) != "llama" or not hasattr(model, "model"):
        raise ExportError(
            f"export_gguf writes llama.cpp's 'llama' architecture and needs a transformers "
            f"LlamaForCausalLM; got {type(model).__name__}"
            + (f" (model_type {cfg.model_type!r})" if cfg is not None else "")
        )
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise ExportError(f"export_gguf writes plain RoPE; this model uses RoPE type {rope_type!r}")
    return cfg


def _quantizer_type(name: str, module: torch.nn.Module) -> str | None:
    """The GGUF type a linear's quantizers ask for, None for float; ExportError otherwise."""
    for attr in ("input_quantizer", "output_quantizer"):
        q = getattr(module, attr, None)
        if q is not None and q.is_enabled:
            raise ExportError(
                f"{name}.{attr} is enabled: GGUF stores weights only, llama.cpp does not "
                "quantize activations as mopt would; use a weight-only GGUF config"
            )
    q = getattr(module, "weight_quantizer", None)
    if q is None or not q.is_enabled:
        return None
    if isinstance(q, torch.nn.Sequential):
        raise ExportError(f"{name}.weight_quantizer has several stages; GGUF stores one format")
    fmt = q.format
    if fmt["family"] != "gguf":
        raise ExportError(
            f"{name}.weight_quantizer is in format {fmt['name']!r}, which GGUF cannot store; "
            "quantize with GGUF_Q8_0_CFG, GGUF_Q4_0_CFG or GGUF_Q4_K_CFG (mopt ptq gguf_q8_0, "
            "gguf_q4_0, gguf_q4_k)"
        )
    if q.pre_quant_scale is not None:
        raise ExportError(f"{name}.weight_quantizer has a pre_quant_scale, which GGUF cannot store")
    return fmt["name"].removeprefix("gguf_")


def _linears(model: torch.nn.Module, n_layers: int) -> list[tuple[str, str, torch.nn.Module]]:
    """(module name, GGUF tensor name, module) of every projection, in file order."""
    out = []
    for i in range(n_layers):
        layer = model.model.layers[i]
        for hf, gg in _LAYER_LINEARS.items():
            out.append((f"model.layers.{i}.{hf}", f"blk.{i}.{gg}.weight", layer.get_submodule(hf)))
    return out


def gguf_tensor_types(model: torch.nn.Module) -> dict[str, str]:
    """The GGUF type of every tensor export_gguf would write (its llama.cpp name -> "f32",
    "q8_0", "q4_0", "q5_0" or "q4_k"); raises ExportError where export_gguf would."""
    cfg = _check_llama(model)
    types = {"token_embd.weight": "f32", "output_norm.weight": "f32"}
    for i in range(cfg.num_hidden_layers):
        for gg in _LAYER_NORMS.values():
            types[f"blk.{i}.{gg}.weight"] = "f32"
    for name, gg, mod in _linears(model, cfg.num_hidden_layers):
        want = _quantizer_type(name, mod)
        types[gg] = "f32" if want is None else _C.gguf_row_type(want, mod.weight.shape[1])
    want = _quantizer_type("lm_head", model.lm_head)
    if want is not None or not _tied(model):
        row = model.lm_head.weight.shape[1]
        types["output.weight"] = "f32" if want is None else _C.gguf_row_type(want, row)
    return types


def _tied(model: torch.nn.Module) -> bool:
    return model.lm_head.weight is model.model.embed_tokens.weight


def _interleave_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's half-split q/k rows -> llama.cpp's interleaved (adjacent pair) RoPE order: the
    inverse of the permutation transformers' converters apply."""
    out_dim, in_dim = w.shape
    return w.reshape(n_heads, 2, out_dim // n_heads // 2, in_dim).transpose(1, 2).reshape(
        out_dim, in_dim)


def _tensor_data(w: torch.Tensor, gguf_type: str) -> tuple[np.ndarray, list[int] | None]:
    """(data, raw byte shape or None) for GGUFWriter.add_tensor."""
    w = w.detach().to(torch.float32).contiguous()
    if gguf_type == "f32":
        return w.cpu().numpy(), None
    packed = torch.ops.mopt.gguf_pack(w, gguf_type).cpu().numpy()
    return packed, list(packed.shape)


def _token_pieces(tokenizer: Any) -> tuple[list[bytes], list[float], list[int]]:
    """llama2.c vocabulary -> SentencePiece pieces ("▁" for space), scores and token types."""
    pieces, types = [], []
    for i, piece in enumerate(tokenizer.pieces):
        p = piece.strip(b"\n") if i in (tokenizer.bos_id, tokenizer.eos_id) else piece
        if i == 0:
            types.append(_UNKNOWN)
        elif i in (tokenizer.bos_id, tokenizer.eos_id):
            types.append(_CONTROL)
        elif len(p) == 6 and p.startswith(b"<0x") and p.endswith(b">"):
            types.append(_BYTE)
        else:
            types.append(_NORMAL)
            p = p.replace(b" ", "\u2581".encode())
        pieces.append(p)
    return pieces, list(tokenizer.scores), types


def export_gguf(model: torch.nn.Module, path: str | os.PathLike, *,
                tokenizer: Any = None) -> pathlib.Path:
    """Writes `model` (a transformers LlamaForCausalLM, float or quantized with a GGUF config)
    to the GGUF file `path` (which must not exist), with `tokenizer`'s vocabulary when given
    (a ``mopt.models.llama2c.Llama2cTokenizer`` or anything with ``pieces``, ``scores``,
    ``bos_id`` and ``eos_id``). Returns the path. Raises ExportError, before writing anything,
    for a model or quantization GGUF cannot hold."""
    gguf = _gguf()
    cfg = _check_llama(model)
    types = gguf_tensor_types(model)  # every check before the first byte
    n_layers = cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads or cfg.num_attention_heads
    if tokenizer is not None and len(tokenizer.pieces) != cfg.vocab_size:
        raise ExportError(f"tokenizer has {len(tokenizer.pieces)} tokens but the model's "
                          f"vocab_size is {cfg.vocab_size}")

    tensors: list[tuple[str, torch.Tensor]] = [
        ("token_embd.weight", model.model.embed_tokens.weight),
        ("output_norm.weight", model.model.norm.weight),
    ]
    if "output.weight" in types:
        tensors.append(("output.weight", model.lm_head.weight))
    linears = {gg: mod for _, gg, mod in _linears(model, n_layers)}
    for i in range(n_layers):
        layer = model.model.layers[i]
        for hf, gg in _LAYER_NORMS.items():
            tensors.append((f"blk.{i}.{gg}.weight", layer.get_submodule(hf).weight))
        for gg in _LAYER_LINEARS.values():
            name = f"blk.{i}.{gg}.weight"
            w = linears[name].weight
            if gg == "attn_q":
                w = _interleave_rope_rows(w.detach(), cfg.num_attention_heads)
            elif gg == "attn_k":
                w = _interleave_rope_rows(w.detach(), n_kv)
            tensors.append((name, w))

    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(getattr(cfg, "name_or_path", "") or "mopt-llama")
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_dimension_count(head_dim)
        writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        writer.add_rope_freq_base(float(_rope_theta(cfg)))
        writer.add_vocab_size(cfg.vocab_size)
        if tokenizer is not None:
            pieces, scores, token_types = _token_pieces(tokenizer)
            writer.add_tokenizer_model("llama")
            writer.add_token_list(pieces)
            writer.add_token_scores(scores)
            writer.add_token_types(token_types)
            writer.add_bos_token_id(tokenizer.bos_id)
            writer.add_eos_token_id(tokenizer.eos_id)
            writer.add_unk_token_id(0)
        with torch.no_grad():
            for name, w in tensors:
                data, raw_shape = _tensor_data(w, types[name])
                raw_dtype = None if raw_shape is None else gguf.GGMLQuantizationType(
                    _GGML_TYPE[types[name]])
                writer.add_tensor(name, data, raw_shape=raw_shape, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return pathlib.Path(path)


def _rope_theta(cfg: Any) -> float:
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        params = getattr(cfg, "rope_parameters", None) or {}
        theta = params.get("rope_theta", 10000.0)
    return theta
