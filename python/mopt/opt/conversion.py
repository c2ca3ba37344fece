"""mto.modelopt_state / save / restore / restore_from_modelopt_state (SPEC §3).

A model optimized by mopt carries its mode history in ``model._modelopt_state`` (a list of
``(mode, {"config": ..., "metadata": ...})``, as ModelOpt keeps it). ``save`` writes the history
as JSON and ``model.state_dict()`` as tensors into one safetensors file, atomically; ``restore``
reads it without unpickling anything, checks everything it can before touching the model, replays
each mode and loads the tensors. ``restore`` also reads the pickled ``.pth`` files nvidia-modelopt
writes, through an allow-list that builds only tensors and plain containers. The file format,
the checks and the chaining rules are C++ (``mopt._C``); this module walks the ``nn.Module``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any, BinaryIO

import torch
from torch import nn

from .. import _C, __version__
from .mode import get_mode_descriptor

__all__ = [
    "ModeloptStateManager",
    "apply_mode",
    "is_converted",
    "modelopt_state",
    "save",
    "restore",
    "restore_from_modelopt_state",
    "load_modelopt_state",
]

_STATE_KEY = "_modelopt_state"
_VERSION_KEY = "_modelopt_state_version"
_SAFETENSORS_FORMAT = {"format": "pt"}  # what transformers expects of a weights file


def _history(model: nn.Module) -> list:
    return model.__dict__.get(_STATE_KEY, [])


def is_converted(model: nn.Module) -> bool:
    """True when a mode was applied to `model` (it carries a mode history)."""
    return bool(_history(model))


def _applied_modes(model: nn.Module) -> list[str]:
    return [mode for mode, _ in _history(model)]


class ModeloptStateManager:
    """Read access to a model's mode history, as ModelOpt's manager offers it."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model

    @classmethod
    def is_converted(cls, model: nn.Module, is_root: bool = False) -> bool:
        return is_converted(model)

    @property
    def has_state(self) -> bool:
        return is_converted(self._model)

    def state_dict(self) -> list:
        return _history(self._model)

    @property
    def last_mode(self) -> str | None:
        modes = _applied_modes(self._model)
        return modes[-1] if modes else None

    @property
    def state_version(self) -> str:
        return self._model.__dict__.get(_VERSION_KEY, [__version__])[0]


def check_mode(model: nn.Module, mode: str) -> None:
    """ValueError when `mode` cannot be applied after the modes `model` carries (the C++ chaining
    rules); raised before a feature touches the model."""
    _C.check_next_mode(_applied_modes(model), mode)


def _refresh_last(model: nn.Module) -> None:
    history = _history(model)
    if history:
        mode, state = history[-1]
        update = get_mode_descriptor(mode).update_for_save
        if update is not None:
            update(model, state["config"], state["metadata"])


def apply_mode(model: nn.Module, mode: str, config: dict, metadata: dict | None = None) -> None:
    """Records that `mode` with `config` was applied to `model` (features call this after they
    converted the model; the chaining rules were checked with check_mode before). The metadata
    of the previous mode is brought up to date first, as ModelOpt does."""
    _C.check_next_mode(_applied_modes(model), mode)
    _refresh_last(model)
    entry = (mode, {"config": _plain(config, f"{mode} config"), "metadata": dict(metadata or {})})
    if _STATE_KEY not in model.__dict__:
        model.__dict__[_STATE_KEY] = []
        model.__dict__[_VERSION_KEY] = [__version__]
    model.__dict__[_STATE_KEY].append(entry)
    _refresh_last(model)


def _plain(value: Any, where: str) -> Any:
    """A config as JSON-able data: tuples become lists and int keys strings; objects JSON cannot
    hold (a filter function, a calibrator class) are recorded by their repr, since a restore
    never re-runs a config (the metadata carries every quantizer's state)."""
    if hasattr(value, "model_dump"):  # a QuantizerAttributeConfig
        value = value.model_dump()
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _plain(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return repr(value)


def modelopt_state(model: nn.Module) -> dict[str, Any]:
    """The mode history of `model`: ``{"modelopt_state_dict": [(mode, {"config", "metadata"})],
    "modelopt_version"}``, with the last mode's metadata (quantizer properties) brought up to
    date. Tensors are not in it: they live in ``model.state_dict()``. NotImplementedError for a
    model with packed weights (mtq.compress): no mode records the packing, so a restore could
    not rebuild it."""
    _check_not_compressed(model)
    _refresh_last(model)
    return {"modelopt_state_dict": copy.deepcopy(_history(model)), "modelopt_version": __version__}


def _check_not_compressed(model: nn.Module) -> None:
    packed = [n for n, m in model.named_modules() if "_mopt_packed_meta" in m.__dict__]
    if packed:
        raise NotImplementedError(
            f"mopt: the model holds packed weights (mtq.compress: {len(packed)} modules, e.g. "
            f"'{packed[0]}'); mopt.opt cannot save or restore a compressed model: save the "
            "quantized model before mtq.compress and compress again after mto.restore, or "
            "export it with mopt.export")


def _state_json(state: dict) -> str:
    entries = [(mode, json.dumps(s["config"]), json.dumps(s["metadata"]))
               for mode, s in state["modelopt_state_dict"]]
    return _C.state_to_json(entries, state["modelopt_version"])


def _named_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    tensors = []
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"mopt: cannot save '{name}': it is a {type(value).__name__} (extra "
                             "state), and mopt's state files hold only tensors")
        tensors.append((name, value))
    return tensors


def save(model: nn.Module, f: str | os.PathLike | BinaryIO) -> None:
    """Writes `model`'s tensors (``state_dict``) and mode history to one safetensors file whose
    ``__metadata__["mopt_state"]`` holds the history as JSON. A path is written atomically (a
    temporary file renamed over it: a crash leaves any old file intact); a writable binary
    stream receives the same bytes."""
    text = _state_json(modelopt_state(model))
    metadata = {**_SAFETENSORS_FORMAT, _C.state_metadata_key(): text}
    tensors = _named_tensors(model)
    if hasattr(f, "write"):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "state.safetensors")
            _C.save_safetensors(path, tensors, metadata)
            with open(path, "rb") as src:
                f.write(src.read())
        return
    _C.save_safetensors(os.fspath(f), tensors, metadata)


class _Checkpoint:
    """A state file read and checked: the mode state (parsed by C++) and the tensors."""

    def __init__(self, state: dict, tensors: list[tuple[str, torch.Tensor]] | None,
                 source: str) -> None:
        self.state = state
        self.tensors = tensors
        self.source = source


def _is_pickle_container(path: str) -> bool:
    """True for torch.save's zip format or a raw pickle; a safetensors file (an 8-byte header
    length that fits the file, then the JSON header's "{") is never taken for one, whatever its
    length bytes happen to be."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") + 8 <= size:
        return False
    return head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05")


def _read(f: str | os.PathLike | BinaryIO, quantizer_states: bool = False) -> _Checkpoint:
    """The checkpoint in `f`; `quantizer_states` also parses each mode's quantizer_state (what
    a restore applies) from the same parse of the state."""
    if hasattr(f, "read"):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "state")
            with open(path, "wb") as dst:
                dst.write(f.read())
            ckpt = _read(path, quantizer_states)
        ckpt.source = getattr(f, "name", "<stream>")
        return ckpt
    path = os.fspath(f)
    if not os.path.exists(path):
        raise FileNotFoundError(f"mopt: no state file at {path}")
    if _is_pickle_container(path):
        from .modelopt_files import load_pickled_checkpoint, split_modelopt_checkpoint

        # tensors inside the metadata (SmoothQuant's _amax_for_smoothing statistic) are set aside
        state, tensors = split_modelopt_checkpoint(load_pickled_checkpoint(path), path,
                                                   tensors={})
        parsed = _C.state_from_json(json.dumps(state), path, quantizer_states)
        named = None if tensors is None else list(tensors.items())
        return _Checkpoint(parsed, named, path)
    tensors, metadata = _C.load_safetensors(path)
    key = _C.state_metadata_key()
    if key not in metadata:
        raise ValueError(f"mopt: {path} is a safetensors file without a mode state "
                         f"(__metadata__ has no '{key}'): it was not written by mto.save; load "
                         "plain weights with model.load_state_dict")
    return _Checkpoint(_C.state_from_json(metadata[key], path, quantizer_states), tensors, path)


def load_modelopt_state(modelopt_state_path: str | os.PathLike) -> dict[str, Any]:
    """The mode state in a file written by mto.save (mopt's, or nvidia-modelopt's
    modelopt_state.pth / checkpoint), read without running code from it."""
    return _as_dict(_read(modelopt_state_path).state)


def _as_dict(parsed: dict) -> dict[str, Any]:
    return {
        "modelopt_state_dict": [(mode, {"config": json.loads(c), "metadata": json.loads(m)})
                                for mode, c, m in parsed["modes"]],
        "modelopt_version": parsed["version"],
    }


def _parse_state(modelopt_state: dict, source: str) -> dict:
    from .modelopt_files import to_plain

    return _C.state_from_json(json.dumps(to_plain(modelopt_state, tensors={})), source, True)


def _check_fresh(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"mopt: restore needs an nn.Module, got {type(model).__name__}")
    from ..quantization.nn.modules.quant_module import QuantModule
    from ..quantization.nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer

    if is_converted(model):
        raise ValueError(f"mopt: cannot restore onto a model that is already optimized (modes "
                         f"{_applied_modes(model)}); restore into a fresh model")
    from ..sparsity.module import SparseModule

    for name, m in model.named_modules():
        if isinstance(m, SparseModule):
            raise ValueError(f"mopt: cannot restore onto a model that is already optimized "
                             f"('{name or type(m).__name__}' is sparsified); restore into a "
                             "fresh model")
        if isinstance(m, (QuantModule, TensorQuantizer, SequentialQuantizer)):
            raise ValueError(f"mopt: cannot restore onto a model that is already optimized "
                             f"('{name or type(m).__name__}' is quantized); restore into a "
                             "fresh model")


class _ParsedMetadata(dict):
    """A mode's metadata as restore functions get it: the dict, plus its quantizer_state as C++
    parsed it while reading the state (``parsed_quantizer_states``: ``_C.parse_quantizer_states``
    of it, or None), so a restore does not serialize and parse it again."""

    def __init__(self, metadata: dict, parsed_quantizer_states: dict | None) -> None:
        super().__init__(metadata)
        self.parsed_quantizer_states = parsed_quantizer_states


def _replay(model: nn.Module, parsed: dict, undo: list) -> dict[str, list[int]]:
    """Replays the modes; returns the file tensors to reshape (name -> shape in the model) where
    the file stores the same values in another layout (nvidia-modelopt's block amax)."""
    entries = [(mode, {"config": json.loads(c), "metadata": json.loads(m)})
               for mode, c, m in parsed["modes"]]
    descriptors = [get_mode_descriptor(mode) for mode, _ in entries]  # all known before touching
    reshapes: dict[str, list[int]] = {}
    quantizer_states = parsed.get("quantizer_states") or [None] * len(entries)
    for descriptor, (_, state), states in zip(descriptors, entries, quantizer_states):
        metadata = _ParsedMetadata(state["metadata"], states)
        reshapes.update(descriptor.restore(model, state["config"], metadata, undo) or {})
    model.__dict__[_STATE_KEY] = entries
    model.__dict__[_VERSION_KEY] = [parsed["version"]]
    undo.append(lambda: (model.__dict__.pop(_STATE_KEY, None),
                         model.__dict__.pop(_VERSION_KEY, None)))
    return reshapes


def _plain_loading(model: nn.Module) -> bool:
    """True when no module customizes state_dict loading (hooks, or a _load_from_state_dict of its
    own beyond the quantizer's amax handling, which the restore has done already)."""
    from ..quantization.nn.modules.tensor_quantizer import TensorQuantizer

    plain = (nn.Module._load_from_state_dict, TensorQuantizer._load_from_state_dict)
    for m in model.modules():
        if type(m)._load_from_state_dict not in plain:
            return False
        if m._load_state_dict_pre_hooks or m._load_state_dict_post_hooks:
            return False
    return True


def _same_names_and_shapes(targets: dict, tensors: list[tuple[str, torch.Tensor]]) -> bool:
    """True when the file's tensors are exactly the model's tensors, name for name and shape for
    shape (the common case, decided without building the lists an error message needs)."""
    if len(targets) != len(tensors) or len({k for k, _ in tensors}) != len(tensors):
        return False
    for k, v in tensors:
        t = targets.get(k)
        if not isinstance(t, torch.Tensor) or t.shape != v.shape:
            return False
    return True


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _undo_all(undo: list) -> None:
    for fn in reversed(undo):
        try:
            fn()
        except Exception:  # keep undoing; the original error is what the caller sees
            pass


def restore_from_modelopt_state(model: nn.Module, modelopt_state: dict | None = None,
                                modelopt_state_path: str | os.PathLike | None = None) -> nn.Module:
    """Replays the modes of `modelopt_state` (or of the file `modelopt_state_path`) on a fresh
    `model`: the architecture is restored, the tensors (weights, amax) are not; load them with
    ``model.load_state_dict``. On any error the model is left as it was."""
    if (modelopt_state is None) == (modelopt_state_path is None):
        raise ValueError("mopt: give exactly one of modelopt_state and modelopt_state_path")
    _check_fresh(model)
    if modelopt_state_path is not None:
        parsed = _read(modelopt_state_path, quantizer_states=True).state
    else:
        if not isinstance(modelopt_state, dict):
            raise TypeError(f"mopt: modelopt_state must be a dict, got "
                            f"{type(modelopt_state).__name__}")
        parsed = _parse_state(modelopt_state, "modelopt_state")
    undo: list = []
    try:
        _replay(model, parsed, undo)
    except BaseException:
        _undo_all(undo)
        raise
    return model


def restore(model: nn.Module, f: str | os.PathLike | BinaryIO) -> nn.Module:
    """Restores a model saved with ``save`` (or nvidia-modelopt's ``mto.save``) into a fresh
    `model` of the same architecture: replays its modes, then loads its tensors. Nothing is
    computed again (no calibration). Every check runs before the tensors are copied (file
    layout and version, mode names and order, quantizer names and properties, tensor names and
    shapes, amax values); on any error the model is left as it was."""
    _check_fresh(model)
    ckpt = _read(f, quantizer_states=True)
    if ckpt.tensors is None:
        raise ValueError(f"mopt: {ckpt.source} holds only a mode state (no model tensors); use "
                         "mto.restore_from_modelopt_state and load the weights yourself")
    _C.check_quantizer_tensors(ckpt.tensors, ckpt.source)
    undo: list = []
    try:
        reshapes = _replay(model, ckpt.state, undo)
        tensors = [(k, v.reshape(reshapes[k]) if k in reshapes and v.numel() == _numel(reshapes[k])
                    else v) for k, v in ckpt.tensors]
        targets = model.state_dict(keep_vars=True)
        if not _same_names_and_shapes(targets, tensors):  # C++ lists the differences
            expected = [(k, list(v.shape)) for k, v in targets.items()
                        if isinstance(v, torch.Tensor)]
            _C.check_tensors_match(expected, [(k, list(v.shape)) for k, v in tensors],
                                   ckpt.source)
        if _plain_loading(model):
            # names and shapes match exactly and every amax was checked: what load_state_dict
            # would do is one copy per tensor, without its per-module walk
            with torch.no_grad():
                for k, v in tensors:
                    targets[k].copy_(v)
        else:
            model.load_state_dict(dict(tensors), strict=True)
    except BaseException:
        _undo_all(undo)
        raise
    return model
