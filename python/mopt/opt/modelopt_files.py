"""Reading the files nvidia-modelopt writes, without running code from them.

ModelOpt writes two pickled layouts with ``torch.save``:

* ``mto.save(model, f)``: ``{"modelopt_state": state, "model_state_dict": state_dict}``
* ``torch.save(mto.modelopt_state(model), f)``: the bare state,
  ``{"modelopt_state_dict": [(mode_name, {"config": ..., "metadata": ...}), ...],
  "modelopt_version": "0.47.0"}``

:func:`load_pickled_checkpoint` opens such a file with ``torch.load(weights_only=True)``: the
unpickler builds only tensors, plain containers and the few harmless types torch allows by default,
plus :data:`ALLOWED_GLOBALS`. Before that, the pickle's globals are listed statically (nothing is
unpickled) and checked against exactly those names, so types that other code in the process
registered with ``torch.serialization.add_safe_globals`` do not widen the list. Anything else is
refused with a ``ValueError`` naming it. :func:`split_modelopt_checkpoint` checks the layout and
:func:`to_plain` turns the state into JSON-able data for the C++ state reader.

This module is glue only: what ModelOpt's quantizer properties mean for mopt is decided in C++.
"""

# Every problem with a file is a ValueError naming it, wrong types included (one kind of error
# for callers that refuse bad files).
# ruff: noqa: TRY004

from __future__ import annotations

import _compat_pickle
import math
import os
import pickle
import pickletools
import re
import zipfile
from typing import Any

import torch

__all__ = [
    "ALLOWED_GLOBALS",
    "load_pickled_checkpoint",
    "split_modelopt_checkpoint",
    "to_plain",
]

#: What ModelOpt states need beyond torch's ``weights_only`` defaults (tensors, torch.Size,
#: dtypes, OrderedDict, ...). Found by writing the state of every predefined ModelOpt 0.47 config
#: that runs on the CPU, with layer widths that are and are not multiples of the block size:
#:
#: * ``slice``: a block quantizer whose input width is no multiple of its block size (INT4 blocks
#:   of 128 on 96 inputs, say) pads the blocks and keeps ``_slices``, a tuple of ``slice`` objects
#:   that cut the padding off again (INT4_AWQ, INT4_BLOCKWISE_WEIGHT_ONLY, W4A8_AWQ_BETA,
#:   FP8_2D_BLOCKWISE_WEIGHT_ONLY). A slice holds three plain values and runs nothing.
#:   ModelOpt itself registers it the same way (modelopt/torch/utils/serialization.py).
ALLOWED_GLOBALS: list[Any] = [slice]

_REFUSAL = ("{path}: refusing to load: the file holds '{name}', which is not a tensor or plain "
            "container; mopt never runs code from a file (it would run under "
            "torch.load(weights_only=False))")

_TENSOR_KEY = "__tensor__"
_SLICE_KEY = "__slice__"


def _global_name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _allowed_global_names() -> set[str] | None:
    """The names the pre-scan accepts: torch's weights_only defaults and ALLOWED_GLOBALS, or None
    when this torch does not expose its defaults (the load then relies on weights_only alone)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        defaults = set(_get_allowed_globals())
    except (ImportError, AttributeError, TypeError):
        return None
    return defaults | {_global_name(g) for g in ALLOWED_GLOBALS}


_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
               "SHORT_BINUNICODE", "BINUNICODE8"}


def _pickle_globals(data: bytes) -> list[str]:
    """The globals (``module.name``) a pickle refers to, in order, found by disassembling it:
    nothing is unpickled. Raises ValueError for bytes that are not a whole pickle."""
    found: list[str] = []
    strings: list[Any] = []  # the values pushed lately, for STACK_GLOBAL's two operands
    memo: dict[int, Any] = {}
    last: Any = None
    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in ("GLOBAL", "INST"):
            # Python 2 names, as pickle protocols 0-2 write them, mapped the way the unpickler
            # (torch's too) maps them: "__builtin__ eval" is builtins.eval.
            module, _, attr = str(arg).partition(" ")
            module, attr = _compat_pickle.NAME_MAPPING.get((module, attr), (module, attr))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            found.append(f"{module}.{attr}")
        elif name == "STACK_GLOBAL":
            if len(strings) >= 2 and isinstance(strings[-2], str) and isinstance(strings[-1], str):
                found.append(f"{strings[-2]}.{strings[-1]}")
            else:
                found.append("<a global built from computed names>")
        if name in _STRING_OPS:
            last = arg if isinstance(arg, str) else arg.decode("latin-1")
            strings.append(last)
        elif name == "MEMOIZE":
            memo[len(memo)] = last
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = last
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            last = memo.get(int(arg))
            strings.append(last)
        elif op.stack_after and name not in ("MEMOIZE", "FRAME", "PROTO"):
            last = None
            strings.append(None)
        del strings[:-2]
    return found


def _refuse(path: str, name: str) -> ValueError:
    return ValueError(_REFUSAL.format(path=path, name=name))


def _check_globals(path: str, data: bytes, what: str) -> None:
    try:
        names = _pickle_globals(data)
    except Exception as e:  # noqa: BLE001  (pickletools raises ValueError and others on garbage)
        raise ValueError(f"{path}: {what} is not a valid pickle ({e}); the file is truncated "
                         "or corrupt") from None
    allowed = _allowed_global_names()
    if allowed is None:
        return
    for name in names:
        if name not in allowed:
            raise _refuse(path, name)


def _torch_error_to_value_error(path: str, err: BaseException) -> ValueError:
    """Turns torch.load's refusal or failure into a ValueError that names the file and, where
    torch's message says which global was refused, that global."""
    msg = str(err)
    m = (re.search(r"GLOBAL ([\w.]+)", msg)
         or re.search(r"unrecognized function ([^\s]+(?: [^\s]+)??)(?: which|$|\n)", msg))
    if isinstance(err, pickle.UnpicklingError) and m:
        return _refuse(path, m.group(1))
    first = next((line.strip() for line in msg.splitlines() if line.strip()), type(err).__name__)
    if "WeightsUnpickler error:" in msg:  # the useful part of torch's long message
        rest = msg.split("WeightsUnpickler error:", 1)[1]
        detail = next((line.strip() for line in rest.splitlines() if line.strip()), first)
        return ValueError(f"{path}: refusing to load: torch's weights_only unpickler rejected it: "
                          f"{detail}")
    return ValueError(f"{path}: cannot read the file ({type(err).__name__}: {first}); it is "
                      "truncated, corrupt or not a torch.save checkpoint")


def load_pickled_checkpoint(path: str | os.PathLike) -> Any:
    """Loads a ``torch.save`` file written by nvidia-modelopt without running code from it.

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for a file that
    holds anything but tensors, plain containers and :data:`ALLOWED_GLOBALS` (the error names
    the refused global), and for a truncated, corrupt or non-torch file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a checkpoint file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(b"PK"):
        # torch.save has written zip archives since PyTorch 1.6 and ModelOpt never writes the
        # legacy format; a bare pickle is never unpickled, only disassembled to say what it holds.
        with open(path, "rb") as f:
            data = f.read()
        try:
            names = _pickle_globals(data)
        except Exception:  # noqa: BLE001  (not a pickle at all)
            names = []
        allowed = _allowed_global_names() or set()
        refused = next((n for n in names if n not in allowed), None)
        if refused is not None:
            raise _refuse(path, refused)
        raise ValueError(f"{path}: not a torch.save checkpoint (a zip archive is expected, as "
                         f"torch.save writes; the file starts with {head!r})")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            data = z.read(pkl[0]) if len(pkl) == 1 else b""
    except Exception as e:  # noqa: BLE001  (zipfile raises BadZipFile, EOFError, zlib.error, ...)
        raise ValueError(f"{path}: the zip archive is truncated or corrupt "
                         f"({type(e).__name__}: {e})") from None
    if any(n.endswith("/constants.pkl") for n in names):
        raise ValueError(f"{path}: is a TorchScript archive, not a torch.save checkpoint")
    if len(pkl) != 1:
        raise ValueError(f"{path}: not a torch.save checkpoint (the zip archive holds "
                         f"{len(pkl)} top-level data.pkl records, expected 1)")
    _check_globals(path, data, "data.pkl")

    extra = [g for g in ALLOWED_GLOBALS if g not in torch.serialization.get_safe_globals()]
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001  (torch raises many types for bad files)
        raise _torch_error_to_value_error(path, e) from None


def _key_path(prefix: str, key: Any) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{prefix}.{key}" if prefix else key
    return f"{prefix}[{key!r}]"


def to_plain(obj: Any, path: str = "", *, tensors: dict[str, torch.Tensor] | None = None) -> Any:
    """Converts a loaded ModelOpt state into JSON-able plain data.

    dict keys that are str stay, int keys become ``str(int)``; list/tuple -> list;
    torch.Size -> list of int; torch.dtype -> its short name ("float32"); slice ->
    ``{"__slice__": [start, stop, step]}``; bool/int/float/str/None stay. A tensor is an error
    naming its key path, unless ``tensors`` is a dict: the tensor is then stored there under its
    key path and replaced by ``{"__tensor__": "<key path>"}``. ``path`` is the key path of ``obj``
    in the file, used in error messages.
    """
    where = path or "the state"
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{where}: {obj!r} cannot be stored in JSON")
        return float(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    if isinstance(obj, torch.Size):
        return [int(d) for d in obj]
    if isinstance(obj, slice):
        parts = []
        for name in ("start", "stop", "step"):
            v = getattr(obj, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"{where}: slice {name} {v!r} is not an int or None")
            parts.append(v)
        return {_SLICE_KEY: parts}
    if isinstance(obj, torch.Tensor):
        if tensors is None:
            raise ValueError(f"{where}: a tensor of shape {tuple(obj.shape)} in the mode "
                             "metadata; tensors belong in the model state dict")
        tensors[where] = obj
        return {_TENSOR_KEY: where}
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if isinstance(key, str):
                if key in (_TENSOR_KEY, _SLICE_KEY):
                    raise ValueError(f"{where}: the key {key!r} is reserved for mopt's encoding")
                skey = key
            elif isinstance(key, int) and not isinstance(key, bool):
                skey = str(key)
            else:
                raise ValueError(f"{_key_path(path, key)}: a dict key of type "
                                 f"{type(key).__name__} ({key!r}); only str and int keys are "
                                 "supported")
            if skey in out:
                raise ValueError(f"{where}: the keys {skey!r} and {key!r} collide once int keys "
                                 "become strings")
            out[skey] = to_plain(value, _key_path(path, key), tensors=tensors)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, f"{path}[{i}]", tensors=tensors) for i, v in enumerate(obj)]
    raise ValueError(f"{where}: a value of type {type(obj).__module__}.{type(obj).__qualname__}, "
                     "which is not plain data (dict, list, tuple, str, int, float, bool, None, "
                     "torch.Size, torch.dtype, slice)")


def _check_state(state: Any, path: str, where: str) -> None:
    """The schema ModelOpt's _validate_modelopt_state checks, plus each entry's shape."""
    at = f"{path}: {where}" if where else f"{path}:"
    if not isinstance(state, dict):
        raise ValueError(f"{at} expected a dict, got {type(state).__name__}")
    missing = [k for k in ("modelopt_state_dict", "modelopt_version") if k not in state]
    if missing:
        raise ValueError(f"{at} missing required key(s) {missing}; expected "
                         "'modelopt_state_dict' and 'modelopt_version'")
    sd, version = state["modelopt_state_dict"], state["modelopt_version"]
    if not isinstance(sd, list):
        raise ValueError(f"{at} 'modelopt_state_dict' must be a list, got {type(sd).__name__}")
    if not isinstance(version, str):
        raise ValueError(f"{at} 'modelopt_version' must be a str, got {type(version).__name__}")
    for i, entry in enumerate(sd):
        e = f"{at} modelopt_state_dict[{i}]"
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ValueError(f"{e} must be a (mode_name, {{'config', 'metadata'}}) pair, got "
                             f"{type(entry).__name__}")
        mode, mstate = entry
        if not isinstance(mode, str):
            raise ValueError(f"{e}[0], the mode name, must be a str, got {type(mode).__name__}")
        if not isinstance(mstate, dict):
            raise ValueError(f"{e}[1] (mode {mode!r}) must be a dict, got "
                             f"{type(mstate).__name__}")
        for key in ("config", "metadata"):
            if key not in mstate:
                raise ValueError(f"{e}[1] (mode {mode!r}) lacks '{key}'")
            if not isinstance(mstate[key], dict):
                raise ValueError(f"{e}[1].{key} (mode {mode!r}) must be a dict, got "
                                 f"{type(mstate[key]).__name__}")


def _to_plain_in(path: str, obj: Any, where: str, tensors: dict | None) -> Any:
    try:
        return to_plain(obj, where, tensors=tensors)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def split_modelopt_checkpoint(obj: Any, path: str | os.PathLike, *,
                              tensors: dict[str, torch.Tensor] | None = None
                              ) -> tuple[dict, dict | None]:
    """Recognizes the layout of a loaded ModelOpt file and returns ``(state, state_dict)``.

    ``state`` is the ModelOpt state converted with :func:`to_plain`; ``state_dict`` is the
    model's tensors for a full checkpoint (``mto.save``) and None for a bare state. ``tensors``
    is passed to :func:`to_plain`: ModelOpt keeps some tensors in the mode metadata (SmoothQuant
    and AWQ input quantizers keep ``_amax_for_smoothing``), so without a dict such states are a
    ValueError naming the tensor's key path. Errors are ValueError naming ``path``.
    """
    path = os.fspath(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a ModelOpt checkpoint: the file holds a "
                         f"{type(obj).__name__}, expected a dict with 'modelopt_state' and "
                         "'model_state_dict' (mto.save) or with 'modelopt_state_dict' and "
                         "'modelopt_version' (mto.modelopt_state)")
    if "modelopt_state" in obj and "modelopt_state_dict" not in obj:
        extra = sorted(map(str, set(obj) - {"modelopt_state", "model_state_dict"}))
        if "model_state_dict" not in obj:
            raise ValueError(f"{path}: a full ModelOpt checkpoint lacks 'model_state_dict'")
        if extra:
            raise ValueError(f"{path}: a full ModelOpt checkpoint holds unexpected keys {extra}")
        _check_state(obj["modelopt_state"], path, "modelopt_state:")
        sd = obj["model_state_dict"]
        if not isinstance(sd, dict):
            raise ValueError(f"{path}: model_state_dict must be a dict, got {type(sd).__name__}")
        for key, value in sd.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: model_state_dict key {key!r} is not a str")
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{path}: model_state_dict[{key!r}] is a "
                                 f"{type(value).__name__}, not a tensor")
        return _to_plain_in(path, obj["modelopt_state"], "modelopt_state", tensors), dict(sd)
    if "modelopt_state_dict" in obj or "modelopt_version" in obj:
        extra = sorted(map(str, set(obj) - {"modelopt_state_dict", "modelopt_version"}))
        _check_state(obj, path, "")
        if extra:
            raise ValueError(f"{path}: a ModelOpt state holds unexpected keys {extra}")
        return _to_plain_in(path, obj, "", tensors), None
    keys = sorted(map(str, obj))[:8]
    raise ValueError(f"{path}: not a ModelOpt checkpoint: a dict with keys {keys}, expected "
                     "'modelopt_state' and 'model_state_dict' (mto.save) or 'modelopt_state_dict' "
                     "and 'modelopt_version' (mto.modelopt_state)")
