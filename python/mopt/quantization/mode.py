"""The quantize mode of ``mopt.opt`` (ModelOpt's ``modelopt.torch.quantization.mode``).

``quantize`` records the config and, as metadata, every quantizer's properties in ModelOpt's
layout (``quantizer_state``: ``{name: {"_num_bits": ..., "_disabled": ..., ...}}``), computed by
the C++ core (``_C.quantizer_state_json``). Restoring converts the model's layers, then sets each
quantizer from its recorded properties (parsed and checked in C++) and creates its buffers with
the recorded shapes for ``load_state_dict`` to fill. nvidia-modelopt's ``<algorithm>_calibrate``
entries carry the same metadata and restore by re-applying it.
"""

from __future__ import annotations

import json

from torch import nn

from .. import _C
from ..opt.mode import ModeDescriptor, register_mode
from .conversion import replace_quant_module
from .nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer
from .utils import parent_of

__all__ = ["quantizer_state", "restore_quantizer_state", "QUANTIZE_MODE"]

QUANTIZE_MODE = "quantize"


def quantizer_state(model: nn.Module) -> dict:
    """Properties of every quantizer in `model` by full name (ModelOpt's layout)."""
    return {name: m.get_modelopt_state() for name, m in model.named_modules()
            if isinstance(m, (TensorQuantizer, SequentialQuantizer))}


def _update_quantize_metadata(model: nn.Module, config: dict, metadata: dict) -> None:
    metadata["quantizer_state"] = quantizer_state(model)


def restore_quantizer_state(model: nn.Module, metadata: dict, undo: list) -> dict[str, list[int]]:
    """Sets every quantizer of a converted `model` from ``metadata["quantizer_state"]``. Every
    entry is parsed and the names are matched before any quantizer changes. Returns the amax
    tensors a file stores in another layout (name -> mopt's shape)."""
    states = metadata.get("quantizer_state")
    if not isinstance(states, dict):
        raise ValueError("mopt: the quantize mode's metadata has no quantizer_state")
    parsed = getattr(metadata, "parsed_quantizer_states", None)  # parsed with the state file
    if parsed is None:
        parsed = _C.parse_quantizer_states(json.dumps(states))
    quantizers = _quantizers(model)
    # SequentialQuantizers first: their children are quantizers of the state too.
    replaced = False
    for name, p in parsed.items():
        if not p["sequential"]:
            continue
        module = quantizers.get(name)
        if module is None:
            continue  # reported by the name check below
        if isinstance(module, SequentialQuantizer) and len(module) == p["num_quantizers"]:
            continue
        new = SequentialQuantizer(*[TensorQuantizer() for _ in range(p["num_quantizers"])])
        for i, q in enumerate(new):
            q.name = f"{name}.{i}"
        parent, attr = parent_of(model, name)
        setattr(parent, attr, new)
        undo.append(lambda parent=parent, attr=attr, old=module: setattr(parent, attr, old))
        replaced = True
    if replaced:
        quantizers = _quantizers(model)
    parsed = _without_absent_disabled(parsed, quantizers)
    _C.check_tensors_match([(n, []) for n in quantizers], [(n, []) for n in parsed],
                           "quantizer_state")
    reshapes = {}
    attribute_configs: dict[str, object] = {}  # immutable: quantizers with equal ones share it
    for name, q in quantizers.items():
        if isinstance(q, TensorQuantizer):
            p = parsed[name]
            _apply(q, p, undo, attribute_configs)
            if p["file_amax_shape"] is not None:
                reshapes[f"{name}._amax"] = p["buffers"]["_amax"][1]
    return reshapes


def _without_absent_disabled(parsed: dict, quantizers: dict) -> dict:
    """`parsed` less the entries of quantizers the model does not have that are disabled and
    hold no tensors (with their SequentialQuantizer parent when every child is such): ModelOpt
    inserts them where mopt inserts none (an Embedding's quantizers, attention's softmax bmm
    quantizer), and a disabled quantizer computes nothing, so the model is the same without it.
    Any other absent entry stays and fails the name check."""

    def inert(name: str) -> bool:
        p = parsed[name]
        if name in quantizers or p["buffers"]:
            return False
        if p["sequential"]:
            children = [f"{name}.{i}" for i in range(p["num_quantizers"])]
            return all(c in parsed and inert(c) for c in children)
        return json.loads(p["attributes_json"]).get("enable") is False

    drop = {name for name in parsed if inert(name)}
    drop |= {c for name in drop if parsed[name]["sequential"]
             for c in (f"{name}.{i}" for i in range(parsed[name]["num_quantizers"]))}
    return {n: p for n, p in parsed.items() if n not in drop}


def _quantizers(model: nn.Module) -> dict[str, nn.Module]:
    """Every TensorQuantizer and SequentialQuantizer of `model` by full name, in module order."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (TensorQuantizer, SequentialQuantizer))}


def _apply(q: TensorQuantizer, p: dict, undo: list, attribute_configs: dict) -> None:
    attr, mode = q.attribute_config, q.mode
    buffers = {k: q._buffers.get(k) for k in ("_amax", "_pre_quant_scale", "_zero_point")}

    def put_back() -> None:
        q.set_from_attribute_config(attr)
        q.set_mode(mode)
        for k, v in buffers.items():
            if v is None:
                q._buffers.pop(k, None)
            else:
                q._buffers[k] = v
        q._refresh()

    undo.append(put_back)
    q.apply_parsed_state(p, attribute_configs=attribute_configs)


def _restore_quantize(model: nn.Module, config: dict, metadata: dict, undo: list) -> dict:
    converted: list[nn.Module] = []
    undo.append(lambda: [m._unsetup() for m in converted])
    replace_quant_module(model, converted)
    return restore_quantizer_state(model, metadata, undo)


def _restore_calibrate(model: nn.Module, config: dict, metadata: dict, undo: list) -> dict:
    return restore_quantizer_state(model, metadata, undo)


register_mode(ModeDescriptor(QUANTIZE_MODE, _restore_quantize, _update_quantize_metadata))
for _name, _kind, _ in _C.opt_modes():
    if _kind == "calibrate":
        register_mode(ModeDescriptor(_name, _restore_calibrate, _update_quantize_metadata))
