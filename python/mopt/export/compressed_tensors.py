"""compressed-tensors export: llm-compressor's checkpoint format, loaded by vLLM and transformers.

``export_compressed_tensors(model, export_dir, tokenizer=None)`` writes a Hugging Face folder
(config.json with a ``quantization_config`` of ``quant_method: "compressed-tensors"``,
model.safetensors, the generation config and the tokenizer when given) that
``transformers.AutoModelForCausalLM.from_pretrained(export_dir)`` loads with the
``compressed-tensors`` package installed.

The quantized codes and scales come from mopt's C++ packing
(``mopt.quantization.pack_weight``); this module only maps mopt's quantizer attributes to
compressed-tensors' ``QuantizationArgs`` and rearranges the codes into the layouts its compressors
read (e.g. eight 4-bit codes per int32 for ``pack-quantized``). Which format each layer gets is
the one compressed-tensors itself infers for the scheme (``infer_module_format``).

What has no compressed-tensors equivalent raises ExportError naming the layer and the format
before anything is written (docs/export.md, "compressed-tensors").
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
from typing import Any

import torch
from torch import nn

from .files import ExportError, atomic_dir, check_output_dir

__all__ = ["export_compressed_tensors"]

# Llama-style decoder layers: which norm feeds which linears, and which linear's output rows feed
# another linear's input channels, so an input pre_quant_scale (SmoothQuant) can move into them.
_NORM_CONSUMERS = {
    "input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj"),
}
_ROW_PRODUCERS = {"mlp.down_proj": "mlp.up_proj", "self_attn.o_proj": "self_attn.v_proj"}


# Why a weight / input format of mopt's format table is not written.
_NOT_MAPPED = {
    "nf4": "a 16-entry lookup table with double-quantized block scales",
    "mxint8": "MX integer elements; compressed-tensors' MX formats are FP4/FP6/FP8",
    "mxfp6_e3m2": "E3M2 elements; compressed-tensors' MXFP6 is E2M3",
    "fp8_e5m2": "E5M2 elements; compressed-tensors' FP8 is E4M3",
}


@dataclasses.dataclass
class _Layer:
    """One quantized linear as it will be written."""

    name: str
    module: nn.Module
    weights: dict | None  # QuantizationArgs fields of the weight
    inputs: dict | None  # QuantizationArgs fields of the input activations
    packed: Any = None  # mopt PackedWeight
    input_tensors: dict = dataclasses.field(default_factory=dict)
    row_scale: torch.Tensor | None = None  # a folded pre_quant_scale of the next layer
    format: str = ""


def _quantizer_classes():
    from ..quantization.nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer

    return TensorQuantizer, SequentialQuantizer


def _enabled(q) -> bool:
    return q is not None and q.is_enabled


def _weight_args(name: str, wq, columns: int) -> dict:
    """compressed-tensors QuantizationArgs fields for mopt weight quantizer `wq` of a weight with
    `columns` input channels."""
    fmt = wq.format
    fname = fmt["name"]
    attr = wq.attribute_config
    block = fmt["block_size"]
    blocks = attr.block_sizes or {}
    dims = [k for k in blocks if isinstance(k, int) and blocks[k]]

    def no(why: str) -> ExportError:
        return ExportError(f"layer '{name}': weight format {fname} ({why}) has no "
                           "compressed-tensors equivalent")

    if attr.unsigned:  # (narrow range is only a subset of the signed codes: written as is)
        raise no("unsigned integer codes")
    if fname in ("int8", "int4", "int4_asym", "int8_asym") or fmt["family"] == "int":
        args = {"num_bits": fmt["element_bits"], "type": "int",
                "symmetric": not attr.asymmetric}
    elif fname == "fp8_e4m3":
        args = {"num_bits": 8, "type": "float", "symmetric": True}
    elif fname == "nvfp4":
        if block != 16:
            raise no(f"blocks of {block}; compressed-tensors' NVFP4 has blocks of 16 only")
        if columns % 16:
            raise no(f"{columns} input channels, not whole blocks of 16")
        return {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group",
                "group_size": 16, "dynamic": False, "scale_dtype": "torch.float8_e4m3fn"}
    elif fname in ("mxfp4", "mxfp8_e4m3"):
        if columns % 32:
            raise no(f"{columns} input channels, not whole blocks of 32")
        return {"num_bits": fmt["element_bits"], "type": "float", "symmetric": True,
                "strategy": "group", "group_size": 32, "dynamic": False,
                "scale_dtype": "torch.uint8"}
    else:
        raise no(_NOT_MAPPED.get(fname, "not mapped to a compressed-tensors scheme"))
    if block:
        if dims == [-1] or (len(dims) == 1 and dims[0] == 1):
            if block >= columns:  # one (zero-padded) block per row: one scale per channel
                args["strategy"] = "channel"
            elif columns % block:
                # compressed-tensors' group strategy needs whole groups; its block strategy pads
                # the last block with zeros as mopt does (vLLM's int4 kernels take groups only)
                args.update(strategy="block", block_structure=[1, block])
            else:
                args.update(strategy="group", group_size=block)
        elif sorted(dims) == [-2, -1] and fname == "fp8_e4m3":
            args.update(strategy="block", block_structure=[blocks[-2], blocks[-1]])
        else:
            raise no(f"blocks over dims {dims}")
    elif attr.axis is None:
        args["strategy"] = "tensor"
    elif attr.axis in (0, (0,), -2, (-2,)):
        args["strategy"] = "channel"
    else:
        raise no(f"amax per axis {attr.axis}")
    args["dynamic"] = False
    return args


def _input_args(name: str, iq) -> tuple[dict, dict]:
    """(QuantizationArgs fields, tensors to store) for mopt input quantizer `iq`."""
    fmt = iq.format
    fname = fmt["name"]
    attr = iq.attribute_config
    blocks = attr.block_sizes or {}

    def no(why: str) -> ExportError:
        return ExportError(f"layer '{name}': input activation format {fname} ({why}) has no "
                           "compressed-tensors equivalent")

    if attr.asymmetric or attr.unsigned or attr.narrow_range:
        raise no("asymmetric, unsigned or narrow-range codes")
    if fname == "nvfp4":
        if fmt["block_size"] != 16:
            raise no(f"blocks of {fmt['block_size']}")
        amax = iq.amax
        if amax is None:
            raise ExportError(f"layer '{name}': the NVFP4 input quantizer has no calibrated "
                              "tensor amax (calibrate the model with mtq.quantize first)")
        # compressed-tensors divides the per-block scales by a global scale: 1 / mopt's scale_2
        global_scale = (448.0 * 6.0) / amax.detach().float().reshape(1)
        return ({"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group",
                 "group_size": 16, "dynamic": "local", "scale_dtype": "torch.float8_e4m3fn"},
                {"input_global_scale": global_scale})
    if fname == "int8":
        args = {"num_bits": 8, "type": "int", "symmetric": True}
    elif fname == "fp8_e4m3":
        args = {"num_bits": 8, "type": "float", "symmetric": True}
    elif fmt["family"] == "mx" and fname not in _NOT_MAPPED:
        raise no("compressed-tensors derives dynamic MX activation scales with another rounding "
                 "rule than the OCP one mopt fake-quantizes with, ceil(log2(amax / element max))")
    else:
        raise no(_NOT_MAPPED.get(fname, "not mapped to a compressed-tensors scheme"))
    per_token = -1 in blocks and blocks[-1] is None and fmt["dynamic"]
    if per_token and len([k for k in blocks if isinstance(k, int)]) == 1:
        args.update(strategy="token", dynamic=True)
        return args, {}
    if fmt["dynamic"] or blocks or attr.axis is not None:
        raise no("only static per-tensor or dynamic per-token activations are written")
    if iq.amax is None:
        raise ExportError(f"layer '{name}': the static input quantizer was never calibrated "
                          "(no amax); calibrate with mtq.quantize(model, cfg, forward_loop)")
    args.update(strategy="tensor", dynamic=False)
    step = iq.step_size.detach().float().reshape(1)
    return args, {"input_scale": step}


def _collect_layers(model: nn.Module) -> tuple[list[_Layer], list[str]]:
    """The quantized linears (checked) and the names of the linears left unquantized."""
    tensor_q, seq_q = _quantizer_classes()
    layers, plain = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, (tensor_q, seq_q)) and _enabled(mod):
            base = name.rsplit(".", 1)[-1]
            if base in ("q_bmm_quantizer", "k_bmm_quantizer", "v_bmm_quantizer",
                        "softmax_quantizer", "bmm2_output_quantizer"):
                raise ExportError(f"quantizer '{name}' is enabled: attention/KV-cache "
                                  "quantization is not exported to compressed-tensors")
        if not hasattr(mod, "weight_quantizer"):
            if isinstance(mod, nn.Linear):
                plain.append(name)
            continue
        wq = mod.weight_quantizer
        iq = getattr(mod, "input_quantizer", None)
        oq = getattr(mod, "output_quantizer", None)
        if not isinstance(mod, nn.Linear):
            if _enabled(wq) or _enabled(iq):
                raise ExportError(f"layer '{name}': quantized {type(mod).__name__} modules have "
                                  "no compressed-tensors equivalent (Linear only)")
            continue
        if _enabled(oq):
            raise ExportError(f"layer '{name}': output quantization is not exported")
        if isinstance(wq, seq_q) and _enabled(wq):
            names = "+".join(q.format["name"] for q in wq)
            raise ExportError(f"layer '{name}': weight format {names} (two-level "
                              "SequentialQuantizer, e.g. W4A8 AWQ) has no compressed-tensors "
                              "equivalent")
        if not _enabled(wq):
            if _enabled(iq):
                raise ExportError(f"layer '{name}': activation-only quantization (weight "
                                  "quantizer disabled) is not exported")
            if iq is not None and iq.pre_quant_scale is not None:
                raise ExportError(f"layer '{name}': has a pre_quant_scale but no quantized "
                                  "weight; nothing to fold it with")
            plain.append(name)
            continue
        if wq.is_static and wq.format["calibrated"] and wq.amax is None:
            raise ExportError(f"layer '{name}': the weight quantizer was never calibrated (no "
                              "amax); calibrate with mtq.quantize(model, cfg, forward_loop)")
        inputs, tensors = (None, {})
        if _enabled(iq):
            inputs, tensors = _input_args(name, iq)
        layers.append(_Layer(name, mod, _weight_args(name, wq, mod.weight.shape[-1]), inputs,
                             input_tensors=tensors))
    if not layers:
        raise ExportError("the model has no quantized layer to export: quantize it first "
                          "(mtq.quantize(model, cfg, forward_loop))")
    return layers, plain


def _fold_pre_quant_scales(model: nn.Module, layers: list[_Layer],
                           state: dict[str, torch.Tensor]) -> None:
    """Moves every input pre_quant_scale into what produces that input: the RMSNorm weight
    before q/k/v and gate/up (all its consumers must carry the same scale), the output rows of
    up_proj before down_proj and of v_proj before o_proj. ExportError for any other."""
    by_name = {ly.name: ly for ly in layers}
    pending = {}
    for ly in layers:
        iq = getattr(ly.module, "input_quantizer", None)
        pqs = None if iq is None else iq.pre_quant_scale
        if pqs is not None:
            pending[ly.name] = pqs.detach().float().reshape(-1)
    done = set()
    for name, pqs in pending.items():
        if name in done:
            continue
        prefix, _, _ = name.rpartition(".")
        parent, _, kind = prefix.rpartition(".")
        suffix = f"{kind}.{name.rsplit('.', 1)[-1]}"
        layer_prefix = parent + "." if parent else ""
        norm = next((n for n, cons in _NORM_CONSUMERS.items() if suffix in cons), None)
        if norm is not None:
            consumers = [layer_prefix + c for c in _NORM_CONSUMERS[norm]]
            key = f"{layer_prefix}{norm}.weight"
            if key not in state:
                raise ExportError(f"layer '{name}': its pre_quant_scale cannot be folded: no "
                                  f"norm weight '{key}' feeds it")
            for c in consumers:
                other = pending.get(c)
                if other is None or not torch.equal(other, pqs):
                    raise ExportError(
                        f"layer '{name}': its pre_quant_scale differs from that of '{c}', which "
                        f"reads the same '{layer_prefix}{norm}' output, so it cannot be folded "
                        "into the norm (compressed-tensors has no pre_quant_scale; per-layer AWQ "
                        "scales are not exportable)")
            w = state[key]
            state[key] = (w.float() * pqs.to(w.device)).to(w.dtype)
            done.update(consumers)
            continue
        producer_suffix = _ROW_PRODUCERS.get(suffix)
        producer = by_name.get(layer_prefix + producer_suffix) if producer_suffix else None
        if producer is None:
            raise ExportError(f"layer '{name}': its pre_quant_scale (SmoothQuant/AWQ) cannot be "
                              "folded into a previous layer (compressed-tensors has no "
                              "pre_quant_scale)")
        rows = _rows_for_channels(model, producer, suffix, pqs, name)
        if producer.weights.get("strategy") == "tensor" or (
                producer.weights.get("strategy") == "tensor_group"):
            raise ExportError(
                f"layer '{name}': its pre_quant_scale would scale the output rows of "
                f"'{producer.name}', whose weight has one scale per tensor; it cannot be folded")
        producer.row_scale = rows if producer.row_scale is None else producer.row_scale * rows
        done.add(name)


def _rows_for_channels(model, producer: _Layer, suffix: str, pqs: torch.Tensor,
                       name: str) -> torch.Tensor:
    """The per-output-row factor of `producer` that multiplies `name`'s input channels by
    `pqs` (o_proj's channels come from v_proj's rows repeated over the heads of a group)."""
    out_rows = producer.module.weight.shape[0]
    if suffix == "mlp.down_proj" or pqs.numel() == out_rows:
        if pqs.numel() != out_rows:
            raise ExportError(f"layer '{name}': pre_quant_scale of {pqs.numel()} channels but "
                              f"'{producer.name}' has {out_rows} rows")
        return pqs
    cfg = getattr(model, "config", None)
    heads = getattr(cfg, "num_attention_heads", None)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if not heads or pqs.numel() % heads or out_rows % kv:
        raise ExportError(f"layer '{name}': cannot map its pre_quant_scale onto the rows of "
                          f"'{producer.name}'")
    head_dim = pqs.numel() // heads
    per_head = pqs.reshape(heads, head_dim)
    group = heads // kv
    grouped = per_head.reshape(kv, group, head_dim)
    if not torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
        raise ExportError(f"layer '{name}': its pre_quant_scale differs between attention heads "
                          f"that share a key/value head of '{producer.name}'; it cannot be "
                          "folded into v_proj")
    return grouped[:, 0].reshape(-1)


def _pack_codes_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """compressed-tensors' pack-quantized layout of signed `codes` [R, C]: code + 2^(bits-1)
    as an unsigned field, element i of a row at bit i*bits of the row's little-endian int32
    words (4- and 8-bit codes)."""
    if bits not in (4, 8):
        raise ExportError(f"pack-quantized {bits}-bit codes are not written (4 or 8 bits)")
    if sys.byteorder != "little":
        raise ExportError("pack-quantized export needs a little-endian host")
    rows, cols = codes.shape
    per_word = 32 // bits
    padded = -(-cols // per_word) * per_word
    u = (codes.to(torch.int16) + (1 << (bits - 1))).to(torch.uint8)
    if padded != cols:
        u = torch.nn.functional.pad(u, (0, padded - cols))
    if bits == 4:
        u = u[:, 0::2] | (u[:, 1::2] << 4)
    # through 1-D: a [1, n] tensor may keep stride 1 on its size-1 dim, which view rejects
    return u.contiguous().view(-1).view(torch.int32).reshape(rows, -1)


def _signed(packed, name: str, bits: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Signed int8 codes and zero points (compressed-tensors keeps both in the signed range:
    an unsigned code q with zero point z becomes q - 2^(b-1), z - 2^(b-1); (q-z) is unchanged)."""
    codes, zp = packed.codes, getattr(packed, "zero_point", None)
    if codes.dtype == torch.int8:
        return codes, None if zp is None else zp.to(torch.int8)
    if codes.dtype == torch.uint8:
        half = 1 << (bits - 1)
        if zp is None:
            raise ExportError(f"layer '{name}': unsigned codes without zero points have no "
                              "compressed-tensors equivalent")
        signed = (codes.to(torch.int16) - half).to(torch.int8)
        return signed, (zp.to(torch.int16) - half).to(torch.int8)
    raise ExportError(f"layer '{name}': integer codes of dtype {codes.dtype} are not written")


def _scale_2d(scale: torch.Tensor, strategy: str) -> torch.Tensor:
    """Scale in the shape compressed-tensors initializes: [1] per tensor, [R,1] per channel."""
    scale = scale.detach().float()
    if strategy == "tensor":
        return scale.reshape(1)
    return scale


def _layer_tensors(ly: _Layer) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one layer (local names: weight_packed, weight_scale...)."""
    p, w, fmt = ly.packed, ly.weights, ly.format
    out: dict[str, torch.Tensor] = {}
    strategy = w["strategy"]
    rows = None if ly.row_scale is None else ly.row_scale.reshape(-1, 1)
    if rows is not None and fmt in ("nvfp4-pack-quantized", "mxfp4-pack-quantized",
                                    "mxfp8-quantized"):
        raise ExportError(f"layer '{ly.name}': the next layer's pre_quant_scale cannot be folded "
                          f"into its {fmt} block scales (FP8 / power-of-two scales would be "
                          "re-rounded)")
    if fmt in ("nvfp4-pack-quantized", "mxfp4-pack-quantized"):
        out["weight_packed"] = p.data.contiguous()
        if fmt == "nvfp4-pack-quantized":
            out["weight_scale"] = p.scale.contiguous()
            out["weight_global_scale"] = (1.0 / p.scale_2.detach().float()).reshape(1)
        else:
            out["weight_scale"] = _e8m0(p.scale, ly.name)
    elif fmt == "mxfp8-quantized":
        out["weight"] = p.codes.contiguous()
        out["weight_scale"] = _e8m0(p.scale, ly.name)
    elif w["type"] == "float":
        out["weight"] = p.codes.contiguous()
        scale = _scale_2d(p.scale, strategy)
        out["weight_scale"] = scale if rows is None else scale * rows
    else:
        codes, zp = _signed(p, ly.name, w["num_bits"])
        scale = _scale_2d(p.scale, strategy)
        out["weight_scale"] = scale if rows is None else scale * rows
        if fmt == "pack-quantized":
            out["weight_packed"] = _pack_codes_int32(codes, w["num_bits"])
            out["weight_shape"] = torch.tensor(list(codes.shape), dtype=torch.int64)
            if zp is not None:
                zp2 = zp.reshape(scale.shape)
                if strategy in ("group", "channel"):
                    zp2 = _pack_codes_int32(zp2.t().contiguous(), w["num_bits"]).t()
                out["weight_zero_point"] = zp2.contiguous()
        else:
            out["weight"] = codes.contiguous()
            if zp is not None:
                out["weight_zero_point"] = zp.reshape(scale.shape).contiguous()
    out.update(ly.input_tensors)
    return out


def _e8m0(scale: torch.Tensor, name: str) -> torch.Tensor:
    """MX block scales as compressed-tensors stores them: the biased exponent in a uint8."""
    if scale.dtype != torch.uint8:
        raise ExportError(f"layer '{name}': mopt packed MX scales as {scale.dtype}, expected "
                          "uint8 E8M0 exponents")
    return scale.contiguous()


def _group_schemes(layers: list[_Layer]) -> list[tuple[dict, list[_Layer]]]:
    groups: list[tuple[dict, list[_Layer]]] = []
    for ly in layers:
        key = {"weights": ly.weights, "input_activations": ly.inputs, "format": ly.format}
        for k, members in groups:
            if k == key:
                members.append(ly)
                break
        else:
            groups.append((key, [ly]))
    return groups


def _quantization_config(layers: list[_Layer], plain: list[str]) -> dict:
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationConfig

    groups = _group_schemes(layers)
    config_groups = {}
    for i, (key, members) in enumerate(groups):
        targets = ["Linear"] if len(groups) == 1 else [m.name for m in members]
        config_groups[f"group_{i}"] = {
            "targets": targets, "weights": key["weights"],
            "input_activations": key["input_activations"], "output_activations": None,
            "format": key["format"]}
    formats = {key["format"] for key, _ in groups}
    cfg = QuantizationConfig.model_validate({
        "config_groups": config_groups,
        "quant_method": "compressed-tensors",
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "ignore": list(plain),
    })
    out = cfg.model_dump()
    out["version"] = compressed_tensors.__version__
    return json.loads(json.dumps(out, default=str))


def _infer_format(ly: _Layer) -> str:
    """The format compressed-tensors picks for this scheme (its own priority order)."""
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=ly.weights,
                                input_activations=ly.inputs)
    return infer_module_format(nn.Linear, scheme).value


def _check_packed(ly: _Layer) -> None:
    """The packed weight's format agrees with the attributes the config will state."""
    p, w = ly.packed, ly.weights
    if w["type"] == "int" and p.codes.dtype not in (torch.int8, torch.uint8):
        raise ExportError(f"layer '{ly.name}': mopt packed an integer format as {p.format} "
                          f"with {p.codes.dtype} codes")
    if w["type"] == "float" and w["num_bits"] == 8 and p.codes.dtype != torch.float8_e4m3fn:
        raise ExportError(f"layer '{ly.name}': mopt packed FP8 as {p.format} "
                          f"({p.codes.dtype} codes)")


def _warn_loader_limits(layers: list[_Layer], dtypes: set[torch.dtype]) -> None:
    """Warns about checkpoints that are valid compressed-tensors but that transformers 5.24 with
    compressed-tensors 0.20 cannot run (vLLM reads them)."""
    import warnings

    fp4_mx = [ly.name for ly in layers if ly.format in (
        "nvfp4-pack-quantized", "mxfp4-pack-quantized", "mxfp8-quantized")]
    if fp4_mx and dtypes != {torch.bfloat16}:
        warnings.warn(f"compressed-tensors decompresses NVFP4/MX weights to bfloat16 whatever the "
                      f"model dtype ({sorted(str(d) for d in dtypes)} here), so transformers' "
                      f"forward fails on mixed dtypes (e.g. '{fp4_mx[0]}'); quantize and export "
                      "the model in bfloat16 to run it in transformers", stacklevel=3)
    asym = [ly.name for ly in layers if ly.format == "pack-quantized"
            and not ly.weights["symmetric"] and ly.weights["strategy"] in ("group", "channel")]
    if asym:
        warnings.warn(f"asymmetric pack-quantized layers (e.g. '{asym[0]}'): transformers 5.24 "
                      "with compressed-tensors 0.20 cannot load zero points packed per group or "
                      "channel (as llm-compressor writes them); vLLM and compressed-tensors' "
                      "decompressor read the file", stacklevel=3)


def _tied(model: nn.Module, key: str, first: str) -> bool:
    cfg = getattr(model, "config", None)
    tie = getattr(cfg, "tie_word_embeddings", False)
    return bool(tie) and key.endswith("lm_head.weight") and first.endswith("embed_tokens.weight")


def _plain_state(model: nn.Module, layers: list[_Layer]) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer outside the quantizers, minus quantized weights."""
    tensor_q, seq_q = _quantizer_classes()
    quantizer_prefixes = tuple(
        n + "." for n, m in model.named_modules() if isinstance(m, (tensor_q, seq_q)))
    quantized = {ly.name + ".weight" for ly in layers}
    # mtq.compress keeps a packed weight as buffers packed_<part>; they are written in
    # compressed-tensors' layout instead
    packed_prefixes = tuple(ly.name + ".packed_" for ly in layers
                            if hasattr(ly.module, "packed_weight"))
    state: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    for key, t in model.state_dict(keep_vars=False).items():
        if key.startswith(quantizer_prefixes) or key in quantized or (
                packed_prefixes and key.startswith(packed_prefixes)):
            continue
        t = t.detach()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ident in seen:
            if _tied(model, key, seen[ident]):
                continue  # transformers ties lm_head to the embedding again at load
            t = t.clone()
        else:
            seen[ident] = key
        state[key] = t.cpu().contiguous()
    return state


def export_compressed_tensors(model: nn.Module, export_dir: str | os.PathLike, *,
                              tokenizer: Any = None) -> dict:
    """Writes `model` (quantized with mtq.quantize and calibrated) as a compressed-tensors
    checkpoint in the new or empty folder `export_dir`; returns a summary (files with sizes,
    format, the layers per format, the ignore list).

    `tokenizer`: a transformers tokenizer saved beside the weights (``save_pretrained``), or None.
    Raises ExportError (a ValueError) naming the layer and format that compressed-tensors cannot
    express, an unquantized model, or an uncalibrated static quantizer; FileExistsError for an
    existing non-empty folder. Nothing is written on error, and the model is never modified.
    """
    check_output_dir(export_dir)
    if not isinstance(model, nn.Module) or not hasattr(getattr(model, "config", None),
                                                        "to_dict"):
        raise ExportError("export_compressed_tensors needs a Hugging Face model (an nn.Module "
                          "with a transformers `config`)")
    if tokenizer is not None and not callable(getattr(tokenizer, "save_pretrained", None)):
        raise TypeError(f"tokenizer must be a transformers tokenizer (with save_pretrained), "
                        f"got {type(tokenizer).__name__}")
    from ..quantization import pack_weight

    layers, plain = _collect_layers(model)
    state = _plain_state(model, layers)
    for ly in layers:
        ly.format = _infer_format(ly)
    _fold_pre_quant_scales(model, layers, state)
    with torch.no_grad():
        for ly in layers:
            try:
                # a model after mtq.compress holds its weights packed already: written as held
                ly.packed = getattr(ly.module, "packed_weight", None) or pack_weight(
                    ly.module.weight.detach(), ly.module.weight_quantizer)
            except (NotImplementedError, ValueError, RuntimeError) as e:
                raise ExportError(f"layer '{ly.name}': mopt cannot pack its weight "
                                  f"({ly.weights}): {e}") from e
            _check_packed(ly)
            for local, t in _layer_tensors(ly).items():
                state[f"{ly.name}.{local}"] = t.detach().cpu().contiguous()
    _warn_loader_limits(layers, {t.dtype for t in model.parameters() if t.is_floating_point()})
    qcfg = _quantization_config(layers, plain)
    config = copy.deepcopy(model.config)
    dtypes = {t.dtype for k, t in state.items() if k.endswith(".weight") and t.is_floating_point()}
    config.quantization_config = qcfg
    if len(dtypes) == 1:
        config.dtype = next(iter(dtypes))

    from safetensors.torch import save_file

    with atomic_dir(export_dir) as tmp:
        config.save_pretrained(tmp)
        gen = getattr(model, "generation_config", None)
        if gen is not None and callable(getattr(gen, "save_pretrained", None)):
            gen.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    per_format: dict[str, list[str]] = {}
    for ly in layers:
        per_format.setdefault(ly.format, []).append(ly.name)
    return {"export_dir": str(export_dir), "files": files, "format": qcfg["format"],
            "layers": per_format, "ignore": list(plain)}
