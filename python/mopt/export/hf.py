"""ModelOpt's unified Hugging Face checkpoint: ``export_hf_checkpoint(model, export_dir=...)``.

The folder TensorRT-LLM, vLLM and SGLang load from ``nvidia-modelopt``'s export: the model's
``config.json`` with a ``quantization_config`` (``quant_method: "modelopt"``),
``hf_quant_config.json``, ``generation_config.json`` when the model has one, and
``model.safetensors`` holding each quantized Linear's packed weight and its scales under
ModelOpt's tensor names (``weight``, ``weight_scale``, ``weight_scale_2``, ``input_scale``,
``pre_quant_scale``). Formats (ModelOpt's ``quant_algo``): FP8, W8A8_SQ_PER_CHANNEL, W8A16,
W4A16_AWQ, W4A8_AWQ, NVFP4, NVFP4_AWQ.

As ModelOpt does before writing, Linears that read the same input (q/k/v, gate/up) are made to
share their scales so an engine can fuse them: one averaged ``pre_quant_scale`` (the weights
rescaled and their amax recalibrated), the largest per-tensor input amax and per-tensor weight
amax; with AWQ the shared ``pre_quant_scale`` is folded into the norm that feeds them, and with
NVFP4 AWQ every ``pre_quant_scale`` into the Linear before it. This happens on a copy: the
caller's model is never changed. Codes and scales come from ``mopt.quantization.pack_weight``
(C++); this module only names, lays out and writes them.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from mopt.export.files import ExportError, atomic_dir, check_output_dir

__all__ = ["export_hf_checkpoint", "hf_quant_format"]

# ModelOpt's per-layer format names -> the hf_quant_config.json entry of the layer.
_ALGO = {
    "fp8": {"quant_algo": "FP8"},
    "int8_sq": {"quant_algo": "W8A8_SQ_PER_CHANNEL"},
    "int8_wo": {"quant_algo": "W8A16"},
    "int4_awq": {"quant_algo": "W4A16_AWQ", "group_size": None, "has_zero_point": False,
                 "pre_quant_scale": True},
    "w4a8_awq": {"quant_algo": "W4A8_AWQ", "group_size": None, "has_zero_point": False,
                 "pre_quant_scale": True},
    "nvfp4": {"quant_algo": "NVFP4", "group_size": None},
    "nvfp4_awq": {"quant_algo": "NVFP4_AWQ", "group_size": None, "has_zero_point": False,
                  "pre_quant_scale": True},
}


@dataclass
class _Layer:
    name: str
    module: nn.Module
    format: str  # a key of _ALGO
    block_size: int


def _quantizers():
    from mopt.quantization.nn import SequentialQuantizer, TensorQuantizer

    return TensorQuantizer, SequentialQuantizer


def _fmt(q) -> dict | None:
    return q.format if q is not None and q.is_enabled else None


def _per_tensor(q) -> bool:
    a = q.attribute_config
    return a.axis is None and not a.block_sizes


def hf_quant_format(name: str, module: nn.Module) -> tuple[str | None, int]:
    """(ModelOpt's format name, block size) of a quantized Linear; (None, 0) when its weight is
    not quantized; ExportError naming the layer when the unified checkpoint cannot hold it."""
    _, SequentialQuantizer = _quantizers()
    wq = getattr(module, "weight_quantizer", None)
    iq = getattr(module, "input_quantizer", None)
    oq = getattr(module, "output_quantizer", None)
    if wq is None or not wq.is_enabled:
        return None, 0
    if oq is not None and oq.is_enabled:
        raise ExportError(f"{name}: an enabled output quantizer has no place in the unified "
                          "Hugging Face checkpoint")
    inp = _fmt(iq)
    has_pqs = iq is not None and iq.pre_quant_scale is not None

    def refuse(what: str) -> ExportError:
        return ExportError(f"{name}: {what} has no equivalent in ModelOpt's unified Hugging Face "
                           "checkpoint (formats: FP8, INT8 SmoothQuant / weight-only, INT4 AWQ, "
                           "W4A8 AWQ, NVFP4, NVFP4 AWQ)")

    if isinstance(wq, SequentialQuantizer):
        stages = [_fmt(q) for q in wq]
        if (len(stages) == 2 and stages[0] and stages[0]["name"] == "int4"
                and stages[0]["block_size"] and not wq[0].attribute_config.asymmetric
                and stages[1] and stages[1]["name"] == "fp8_e4m3" and _per_tensor(wq[1])
                and inp and inp["name"] == "fp8_e4m3" and _per_tensor(iq) and not inp["dynamic"]):
            return "w4a8_awq", int(stages[0]["block_size"])
        raise refuse("weight quantizer " + " then ".join(s["name"] if s else "disabled"
                                                         for s in stages))
    w = wq.format
    attr = wq.attribute_config
    if attr.asymmetric:
        raise refuse(f"weight format {w['name']} with zero points")
    if w["name"] == "fp8_e4m3" and _per_tensor(wq):
        if inp and inp["name"] == "fp8_e4m3" and _per_tensor(iq) and not inp["dynamic"]:
            return "fp8", 0
        raise refuse("FP8 weights without static per-tensor FP8 inputs")
    if w["name"] == "int8" and attr.axis == 0 and not attr.block_sizes:
        if inp is None:
            return "int8_wo", 0
        if inp["name"] == "int8" and _per_tensor(iq) and not inp["dynamic"]:
            return "int8_sq", 0
        raise refuse(f"INT8 per-channel weights with {inp['name']} inputs")
    if w["name"] == "int4" and w["block_size"] and not w["dynamic"]:
        if inp is None:
            return "int4_awq", int(w["block_size"])
        raise refuse(f"INT4 block weights with {inp['name']} inputs")
    if w["name"] == "nvfp4":
        if inp and inp["name"] == "nvfp4":
            return ("nvfp4_awq" if has_pqs else "nvfp4"), int(w["block_size"])
        raise refuse("NVFP4 weights without NVFP4 inputs")
    raise refuse(f"weight format {w['name']}"
                 + (f" in blocks of {w['block_size']}" if w["block_size"] else ""))


# -- checks on the caller's model --------------------------------------------------------------


def _check_model(model: nn.Module) -> list[_Layer]:
    from mopt.quantization.utils import uncalibrated_quantizers

    if not hasattr(model, "config") or not hasattr(model.config, "to_dict"):
        raise ExportError("export_hf_checkpoint needs a Hugging Face transformers model (with a "
                          f".config); got {type(model).__name__}")
    uncalibrated = uncalibrated_quantizers(model)
    if uncalibrated:
        shown = ", ".join(uncalibrated[:5]) + (" ..." if len(uncalibrated) > 5 else "")
        raise ExportError(f"{len(uncalibrated)} static quantizer(s) are not calibrated ({shown}): "
                          "run mtq.quantize with a forward_loop (or mtq.calibrate) first")
    layers = []
    for name, m in model.named_modules():
        if not hasattr(m, "weight_quantizer") or not isinstance(getattr(m, "weight", None),
                                                                torch.Tensor):
            continue
        fmt, block = hf_quant_format(name, m)
        if fmt is not None:
            layers.append(_Layer(name, m, fmt, block))
    if not layers:
        raise ExportError("the model has no quantized weights: quantize it with mtq.quantize "
                          "before exporting a quantized checkpoint")
    formats = sorted({(la.format, la.block_size) for la in layers})
    if len(formats) > 1:
        raise ExportError("layers use different formats ("
                          + ", ".join(f"{f}" + (f"/{b}" if b else "") for f, b in formats)
                          + "): mixed-precision unified checkpoints are not written yet")
    return layers


# -- fusion of Linears that share an input (as ModelOpt does before it writes) ------------------


def _shared_input_groups(model: nn.Module, layers: list[_Layer]):
    """Linears fed the same tensor, and the norm module (if any) that produced it, found by one
    forward of a two-token input with the quantizers as they are."""
    by_input: dict[int, list[nn.Module]] = {}
    produced_by: dict[int, nn.Module] = {}
    keep: list[torch.Tensor] = []  # ids stay unique while the tensors live
    hooks = []
    quantized = {id(la.module) for la in layers}

    def on_linear(mod, args):
        if args and isinstance(args[0], torch.Tensor):
            keep.append(args[0])
            by_input.setdefault(id(args[0]), []).append(mod)

    def on_norm(mod, args, out):
        if isinstance(out, torch.Tensor):
            keep.append(out)
            produced_by[id(out)] = mod

    for m in model.modules():
        if id(m) in quantized:
            hooks.append(m.register_forward_pre_hook(on_linear))
        elif "norm" in type(m).__name__.lower() and isinstance(getattr(m, "weight", None),
                                                                torch.Tensor):
            hooks.append(m.register_forward_hook(on_norm))
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.ones(1, 2, dtype=torch.long, device=device))
    finally:
        for h in hooks:
            h.remove()
    return [(mods, produced_by.get(key)) for key, mods in by_input.items() if len(mods) > 1]


def _recalibrate_weight(module: nn.Module) -> None:
    """The weight quantizer(s) recalibrated on the current weight by their own (C++)
    calibrator, as ModelOpt redoes weight amax after it rescales a weight."""
    _, SequentialQuantizer = _quantizers()
    wq = module.weight_quantizer
    for q in (list(wq) if isinstance(wq, SequentialQuantizer) else [wq]):
        if q.is_enabled and q.amax is not None:
            q.reset_amax()
            q.collect(module.weight.detach())
            q.load_calib_amax()


def _set_amax(q, value: torch.Tensor) -> None:
    q.amax = value.reshape(q.amax.shape).clone()


def _set_weight(module: nn.Module, w: torch.Tensor) -> None:
    module.weight = nn.Parameter(w.to(module.weight.dtype), requires_grad=False)


def _fuse_groups(model: nn.Module, layers: list[_Layer]) -> None:
    _, SequentialQuantizer = _quantizers()
    fmt = layers[0].format
    if fmt == "nvfp4_awq":
        _fold_pre_quant_scale_into_previous_linear(model)
    if fmt == "fp8":
        return
    for modules, norm in _shared_input_groups(model, layers):
        iq0 = modules[0].input_quantizer
        if iq0.pre_quant_scale is not None:
            avg = torch.stack([m.input_quantizer.pre_quant_scale for m in modules]).mean(0)
            for m in modules:
                old = m.input_quantizer.pre_quant_scale
                if not torch.equal(old, avg):
                    _set_weight(m, m.weight.float() * old.float() / avg.float())
                    m.input_quantizer.pre_quant_scale = avg
                    _recalibrate_weight(m)
        if iq0.is_enabled and iq0.amax is not None and iq0.amax.numel() == 1:
            amax = torch.stack([m.input_quantizer.amax.reshape(()) for m in modules]).max()
            for m in modules:
                _set_amax(m.input_quantizer, amax)
        wq0 = modules[0].weight_quantizer
        if isinstance(wq0, SequentialQuantizer):
            if wq0[-1].is_enabled:
                amax = torch.stack([m.weight_quantizer[-1].amax.reshape(())
                                    for m in modules]).max()
                for m in modules:
                    _set_amax(m.weight_quantizer[-1], amax)
        elif wq0.is_enabled and wq0.amax is not None and wq0.amax.numel() == 1:
            amax = torch.stack([m.weight_quantizer.amax.reshape(()) for m in modules]).max()
            for m in modules:
                _set_amax(m.weight_quantizer, amax)
        if "awq" in fmt and norm is not None and iq0.pre_quant_scale is not None:
            pqs = iq0.pre_quant_scale.to(norm.weight.device)
            norm.weight = nn.Parameter((norm.weight * pqs).to(norm.weight.dtype),
                                       requires_grad=False)
            if getattr(norm, "bias", None) is not None:
                norm.bias = nn.Parameter(norm.bias * pqs, requires_grad=False)
            for m in modules:
                m.input_quantizer.pre_quant_scale = None


# ModelOpt's PQS_FUSE_MODULE_MAPPING: (parent classes, (Linear fused into, Linear whose
# pre_quant_scale is fused)).
_PQS_FUSE = [(("LlamaAttention", "Qwen3Attention", "Qwen3MoeAttention"), ("v_proj", "o_proj")),
             (("LlamaMLP", "Qwen3MLP", "Qwen3MoeMLP"), ("up_proj", "down_proj"))]


def _fold_pre_quant_scale_into_previous_linear(model: nn.Module) -> None:
    """NVFP4 AWQ: o_proj's pre_quant_scale into v_proj's output rows and down_proj's into
    up_proj's (ModelOpt's fuse_prequant_to_linear): the receiving Linear's weight rows are
    scaled and its weight quantizer recalibrated. Skipped, as by ModelOpt, where the scale and
    the rows differ in length (grouped-query attention)."""
    for _, m in model.named_modules():
        for classes, (into_name, from_name) in _PQS_FUSE:
            if not any(c in type(m).__name__ for c in classes):
                continue
            into, src = m.get_submodule(into_name), m.get_submodule(from_name)
            iq = getattr(src, "input_quantizer", None)
            if iq is None or iq.pre_quant_scale is None:
                continue
            pqs = iq.pre_quant_scale
            if pqs.numel() != into.weight.shape[-2]:
                continue
            _set_weight(into, into.weight * pqs.view(-1, 1).to(into.weight.dtype))
            if getattr(into, "bias", None) is not None:
                into.bias = nn.Parameter(into.bias * pqs.to(into.bias.dtype), requires_grad=False)
            _recalibrate_weight(into)
            iq.pre_quant_scale = None


# -- tensors -----------------------------------------------------------------------------------


def _pack_int4_rows(codes: torch.Tensor) -> torch.Tensor:
    """ModelOpt's INT4 AWQ layout: two signed codes of neighbouring output rows per byte
    (row 2i in the low nibble), shape [R/2, C], uint8."""
    if codes.shape[0] % 2:
        raise ExportError(f"INT4 weights with an odd number of rows ({codes.shape[0]}) cannot be "
                          "packed in ModelOpt's layout (two rows per byte)")
    c = codes.to(torch.int16) & 0x0F
    return (c[0::2] | (c[1::2] << 4)).to(torch.uint8)


def _input_scale(iq) -> torch.Tensor:
    """ModelOpt's input_scale: amax / maxbound, NVFP4: amax / (6 * 448)."""
    amax = iq.amax.float().reshape(())
    if iq.format["name"] == "nvfp4":
        return amax / (6.0 * 448.0)
    return amax / float(iq.maxbound)


def _layer_tensors(layer: _Layer) -> dict[str, torch.Tensor]:
    from mopt.quantization import pack_weight

    _, SequentialQuantizer = _quantizers()
    m, fmt = layer.module, layer.format
    wq, iq = m.weight_quantizer, getattr(m, "input_quantizer", None)
    w = m.weight.detach()
    out: dict[str, torch.Tensor] = {}
    try:
        packed = pack_weight(w, wq[0] if isinstance(wq, SequentialQuantizer) else wq)
    except (ValueError, RuntimeError, NotImplementedError) as e:
        raise ExportError(f"{layer.name}: its weight cannot be packed: {e}") from e
    if fmt == "fp8":
        out["weight"] = packed.codes
        out["weight_scale"] = packed.scale.float().reshape(())
    elif fmt in ("int8_sq", "int8_wo"):
        out["weight"] = packed.codes
        out["weight_scale"] = packed.scale.float().reshape(-1)
    elif fmt in ("int4_awq", "w4a8_awq"):
        out["weight"] = _pack_int4_rows(packed.codes)
        out["weight_scale"] = packed.scale.float().reshape(w.shape[0], -1)
        if fmt == "w4a8_awq":
            out["weight_scale_2"] = wq[1].amax.float().reshape(()) / float(wq[1].maxbound)
    else:  # nvfp4, nvfp4_awq
        out["weight"] = packed.data
        out["weight_scale"] = packed.scale.reshape(w.shape[0], -1)
        out["weight_scale_2"] = packed.scale_2.float().reshape(())
    if iq is not None and iq.is_enabled and iq.amax is not None:
        out["input_scale"] = _input_scale(iq)
    if iq is not None and iq.pre_quant_scale is not None:
        out["pre_quant_scale"] = iq.pre_quant_scale.detach().float().reshape(-1)
    return out


def _state_dict(model: nn.Module, layers: list[_Layer], dtype: torch.dtype) -> dict:
    TensorQuantizer, SequentialQuantizer = _quantizers()
    by_name = {la.name: la for la in layers}
    skip = {n for n, m in model.named_modules() if isinstance(m, (TensorQuantizer,
                                                                  SequentialQuantizer))}
    sd: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for mod_name, m in model.named_modules():
        if mod_name in skip or any(mod_name.startswith(s + ".") for s in skip):
            continue
        prefix = mod_name + "." if mod_name else ""
        if mod_name in by_name:
            for k, v in _layer_tensors(by_name[mod_name]).items():
                sd[prefix + k] = v.contiguous()
            if getattr(m, "bias", None) is not None:
                sd[prefix + "bias"] = m.bias.detach().to(dtype).contiguous()
            continue
        for k, p in list(m.named_parameters(recurse=False)) + list(
                m.named_buffers(recurse=False)):
            if p is None or k.startswith("_") or k in getattr(m, "_non_persistent_buffers_set",
                                                                set()):
                continue
            if id(p) in seen:  # a tied weight is written once, under its first name
                continue
            seen[id(p)] = prefix + k
            sd[prefix + k] = (p.detach().to(dtype) if p.is_floating_point()
                              else p.detach()).contiguous()
    return sd


def _exclude_modules(model: nn.Module, layers: list[_Layer]) -> list[str]:
    """Linear and Embedding modules left in float (ModelOpt's exclude_modules)."""
    quantized = {la.name for la in layers}
    return sorted(n for n, m in model.named_modules()
                  if isinstance(m, (nn.Linear, nn.Embedding)) and n and n not in quantized)


def _quant_configs(layers: list[_Layer], exclude: list[str]) -> tuple[dict, dict]:
    import mopt

    fmt, block = layers[0].format, layers[0].block_size
    entry = {k: (block if k == "group_size" else v) for k, v in _ALGO[fmt].items()}
    producer = {"name": "mopt", "version": mopt.__version__}
    hf_quant = {"producer": producer,
                "quantization": {"quant_algo": entry["quant_algo"], "kv_cache_quant_algo": None,
                                 **{k: v for k, v in entry.items() if k != "quant_algo"},
                                 "exclude_modules": exclude}}
    qc: dict = {}
    if fmt == "fp8":
        qc["config_groups"] = {"group_0": {
            "input_activations": {"dynamic": False, "num_bits": 8, "type": "float"},
            "weights": {"dynamic": False, "num_bits": 8, "type": "float"},
            "targets": ["Linear"]}}
    elif fmt == "nvfp4":
        qc["config_groups"] = {"group_0": {
            "input_activations": {"dynamic": False, "num_bits": 4, "type": "float",
                                  "group_size": block},
            "weights": {"dynamic": False, "num_bits": 4, "type": "float", "group_size": block},
            "targets": ["Linear"]}}
    qc.update({"ignore": exclude, "quant_algo": entry["quant_algo"], "producer": producer,
               "quant_method": "modelopt"})
    return hf_quant, qc


def export_hf_checkpoint(model: nn.Module, dtype: torch.dtype | None = None,
                         export_dir: str = "/tmp", save_modelopt_state: bool = False,
                         components=None, extra_state_dict: dict | None = None) -> None:
    """Writes `model` (quantized with mtq.quantize) as ModelOpt's unified Hugging Face
    checkpoint into `export_dir` (a new or empty folder; the files appear together or not at
    all). `dtype`: of the unquantized weights (default: the model config's dtype). The model is
    not changed. ModelOpt's signature; `save_modelopt_state` and `components` (diffusers
    pipelines) are not supported."""
    if save_modelopt_state:
        raise NotImplementedError("export_hf_checkpoint(save_modelopt_state=True): save the state "
                                  "with mopt.opt.save instead")
    if components is not None:
        raise NotImplementedError("export_hf_checkpoint(components=...): diffusers pipelines are "
                                  "not exported yet")
    check_output_dir(export_dir)
    layers = _check_model(model)
    if dtype is None:
        dtype = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype",
                                                                 None) or torch.float32
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
    from safetensors.torch import save_file

    work = copy.deepcopy(model)
    names = [la.name for la in layers]
    wl = [_Layer(n, work.get_submodule(n), la.format, la.block_size)
          for n, la in zip(names, layers)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _fuse_groups(work, wl)
    sd = _state_dict(work, wl, dtype)
    if extra_state_dict:
        sd.update(extra_state_dict)
    exclude = _exclude_modules(work, wl)
    hf_quant, qc = _quant_configs(wl, exclude)
    with atomic_dir(export_dir) as tmp:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        work.config.save_pretrained(str(tmp))  # what the config differs from its defaults in
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["dtype"] = str(dtype).removeprefix("torch.")
        if not cfg.get("architectures"):
            cfg["architectures"] = [type(model).__name__]
        cfg["quantization_config"] = qc
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        (tmp / "hf_quant_config.json").write_text(json.dumps(hf_quant, indent=4) + "\n")
        gen = getattr(work, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(str(tmp))
