"""Hugging Face checkpoints that carry the mode history (ModelOpt's
``modelopt.torch.opt.plugins.huggingface``).

After ``enable_huggingface_checkpointing()``, ``save_pretrained`` of a transformers model that
carries modes (``mto.is_converted``) also writes ``modelopt_state.json`` next to the weights: the
JSON document of ``mto.modelopt_state(model)``, written atomically (ModelOpt writes a pickled
``modelopt_state.pth`` instead; mopt never writes or runs pickles). The quantizer tensors
(``_amax``, ``_pre_quant_scale``) are in ``model.state_dict()``, so ``save_pretrained`` already
puts them in ``model.safetensors``.

``from_pretrained`` of a folder with that file replays the modes on the model right after
transformers constructed it and before it loads the weights, so the checkpoint's quantizer
tensors land in restored quantizers. transformers 5 builds the model in ``from_pretrained`` with
``cls(config)`` (under a meta-device context) and then loads the files into
``model.state_dict()``'s keys; the one point between the two that every model class goes through
is the end of ``cls.__init__``. So the patched ``from_pretrained`` (a classmethod on
``PreTrainedModel``: every subclass and the ``AutoModel*`` classes, which resolve to one, go
through it) wraps ``cls.__init__`` for the duration of the call, as ModelOpt does. The wrapper
acts only for the model that call builds (the first instance of exactly ``cls`` constructed by
the calling thread), so submodels, other threads and nested ``from_pretrained`` calls are left
alone, and the class gets its own ``__init__`` back when the last such call returns.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ... import _C

__all__ = [
    "disable_huggingface_checkpointing",
    "enable_huggingface_checkpointing",
    "is_huggingface_checkpointing_enabled",
]

logger = logging.getLogger(__name__)

MODELOPT_STATE_FILE = "modelopt_state.json"

_lock = threading.RLock()
_originals: dict[str, Any] = {}  # PreTrainedModel.__dict__ entries replaced while enabled
_patches: dict[str, Any] = {}  # what replaced them
_local = threading.local()  # .pending: stack of _Pending, one per from_pretrained in progress
_init_hooks: dict[type, list] = {}  # cls -> [active calls, cls's own __init__ or None, hook]


@dataclass
class _Pending:
    """One from_pretrained call that restores `state` on the model it builds."""

    cls: type
    state: dict
    path: str
    started: bool = False
    restored: bool = False
    undo: list = field(default_factory=list)
    model: Any = None


def _state_file(name_or_path: Any, kwargs: dict) -> str | None:
    """The modelopt_state.json of a from_pretrained source, or None when it has none."""
    if name_or_path is None:
        return None
    source = os.fspath(name_or_path)
    subfolder = kwargs.get("subfolder") or ""
    if os.path.isdir(source):
        path = os.path.join(source, subfolder, MODELOPT_STATE_FILE)
        return path if os.path.isfile(path) else None
    from transformers.utils import cached_file

    # A Hub model id: the file comes (or is found in the cache) like the config does.
    download = {k: kwargs[k] for k in ("cache_dir", "force_download", "proxies", "token",
                                       "revision", "local_files_only") if k in kwargs}
    try:
        path = cached_file(source, MODELOPT_STATE_FILE, subfolder=subfolder,
                           _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **download)
    except (OSError, ValueError):  # not a repo transformers can read: from_pretrained says so
        return None
    return path if isinstance(path, str) and os.path.isfile(path) else None


def _read_state(path: str) -> dict:
    """The mode state in `path`, parsed and checked by the C++ reader (ValueError naming the
    file for anything that is not a mode state)."""
    from ..conversion import _as_dict

    with open(path, "rb") as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"mopt: {path}: the mode state is not UTF-8 JSON text ({e})") from None
    return _as_dict(_C.state_from_json(text, path))


def _restore(model: Any, pending: _Pending) -> None:
    from ..conversion import restore_from_modelopt_state

    try:
        restore_from_modelopt_state(model, modelopt_state=pending.state)
    except ValueError as e:
        raise ValueError(f"mopt: cannot restore the modes of {pending.path} onto "
                         f"{type(model).__name__}: {e}") from e
    logger.info("mopt: restored the modes of %s", pending.path)


_loading_classes: dict[tuple[type, tuple[str, ...]], type] = {}


def _loading_class(cls: type, names: tuple[str, ...]) -> type:
    """`cls` with the parameters `names` read as the registered parameters themselves."""
    key = (cls, names)
    with _lock:
        if key not in _loading_classes:
            attrs = {name: property(lambda self, name=name: self._parameters[name])
                     for name in names}
            attrs.update(__module__=cls.__module__, __qualname__=cls.__qualname__,
                         __doc__=cls.__doc__)
            _loading_classes[key] = type(cls.__name__, (cls,), attrs)
        return _loading_classes[key]


def _expose_parameters_for_loading(model: Any, undo: list) -> None:
    """transformers 5 loads a checkpoint tensor into ``getattr(module, name)``'s place (shape
    check, then setattr) and finds parameters with ``get_parameter``. A quantized module may
    present a parameter through a property instead (``QuantConv1D.weight`` is the ``[out, in]``
    view of GPT-2's stored ``[in, out]`` parameter), which transformers would take for a
    mismatched, non-parameter attribute. Until the weights are loaded such modules read those
    names as the stored parameters, which ``state_dict`` and the checkpoint hold."""
    import inspect

    for module in model.modules():
        cls = type(module)
        names = tuple(name for name in module._parameters
                      if isinstance(inspect.getattr_static(cls, name, None), property))
        if names:
            module.__class__ = _loading_class(cls, names)
            undo.append(lambda module=module, cls=cls: setattr(module, "__class__", cls))


def _hooked_init(hook_cls: type, original: Any, model: Any, args: tuple, kwargs: dict) -> None:
    stack = getattr(_local, "pending", None)
    pending = stack[-1] if stack else None
    if (pending is None or pending.started or pending.cls is not hook_cls
            or type(model) is not hook_cls):
        original(model, *args, **kwargs)
        return
    pending.started = True
    original(model, *args, **kwargs)
    _restore(model, pending)
    _expose_parameters_for_loading(model, pending.undo)
    pending.model = model
    pending.restored = True


@contextmanager
def _restore_after_init(pending: _Pending):
    """Wraps ``pending.cls.__init__`` while the block runs (shared by concurrent calls)."""
    cls = pending.cls
    with _lock:
        entry = _init_hooks.get(cls)
        if entry is None:
            original = cls.__init__

            @functools.wraps(original)
            def __init__(self, *args, **kwargs):
                _hooked_init(cls, original, self, args, kwargs)

            entry = _init_hooks[cls] = [0, cls.__dict__.get("__init__"), __init__]
            cls.__init__ = __init__
        entry[0] += 1
    stack = _local.__dict__.setdefault("pending", [])
    stack.append(pending)
    try:
        yield
    finally:
        stack.pop()
        with _lock:
            entry[0] -= 1
            if entry[0] == 0:
                del _init_hooks[cls]
                if cls.__dict__.get("__init__") is entry[2]:
                    if entry[1] is None:
                        del cls.__init__
                    else:
                        cls.__init__ = entry[1]


def _from_pretrained(original_method: classmethod, cls, pretrained_model_name_or_path, *args,
                     **kwargs):
    original = original_method.__get__(None, cls)
    path = _state_file(pretrained_model_name_or_path, kwargs)
    if path is None:
        return original(pretrained_model_name_or_path, *args, **kwargs)
    pending = _Pending(cls, _read_state(path), path)  # a bad file fails before any work
    try:
        with _restore_after_init(pending):
            out = original(pretrained_model_name_or_path, *args, **kwargs)
    finally:
        for fn in reversed(pending.undo):
            fn()
    if not pending.restored:
        raise RuntimeError(
            f"mopt: {cls.__name__}.from_pretrained built the model without calling "
            f"{cls.__name__}.__init__, so the modes of {path} were not restored (an unsupported "
            "transformers version?); load it with mto.restore_from_modelopt_state and "
            "load_state_dict instead")
    _check_loaded_quantizers(pending.model, path)
    return out


def _check_loaded_quantizers(model: Any, path: str) -> None:
    """transformers put the checkpoint's quantizer tensors in place by setattr, past the checks
    ``load_state_dict`` runs: run them now (an amax that is negative, NaN or infinite; shapes
    transformers checked itself)."""
    from ...quantization.nn.modules.tensor_quantizer import TensorQuantizer

    for name, q in model.named_modules():
        if not isinstance(q, TensorQuantizer):
            continue
        for key in ("_amax", "_amax_pre"):  # _amax_pre: learned scales (lsq)
            amax = q._amax_tensor(key)
            try:
                if amax is not None:
                    q._core.amax_to_store(amax, None, True)
            except (ValueError, RuntimeError) as e:
                raise ValueError(f"mopt: the checkpoint of {path} holds a bad '{name}.{key}': "
                                 f"{e}") from e
        q._refresh()


def _main_process(model: Any, original: Any, save_directory: Any, args: tuple,
                  kwargs: dict) -> bool:
    import inspect

    try:
        bound = inspect.signature(original).bind(model, save_directory, *args, **kwargs)
        is_main = bound.arguments.get("is_main_process", True)
    except TypeError:  # the original call raised for these arguments already
        is_main = True
    should_save = getattr(model, "should_save_on_this_rank", None)
    return bool(should_save(is_main)) if callable(should_save) else bool(is_main)


def _save_pretrained(original, self, save_directory, *args, **kwargs):
    from ..conversion import _state_json, is_converted, modelopt_state

    save_state = kwargs.pop("save_modelopt_state", True)
    out = original(self, save_directory, *args, **kwargs)
    directory = os.fspath(save_directory)
    if not os.path.isdir(directory) or not _main_process(self, original, save_directory, args,
                                                         kwargs):
        return out
    path = os.path.join(directory, MODELOPT_STATE_FILE)
    if save_state and is_converted(self):
        _C.write_file_atomic(path, _state_json(modelopt_state(self)).encode("utf-8"))
        logger.info("mopt: saved the modes to %s", path)
    elif os.path.isfile(path):
        # A state left by an earlier save into this folder would describe other weights.
        os.remove(path)
    return out


def enable_huggingface_checkpointing() -> None:
    """Makes transformers' ``save_pretrained`` write the mode history of an optimized model to
    ``<dir>/modelopt_state.json`` and ``from_pretrained`` restore it before the weights load,
    for ``PreTrainedModel`` and every subclass. Idempotent; undone by
    ``mopt.opt.plugins.disable_huggingface_checkpointing()``.

    ``save_pretrained(..., save_modelopt_state=False)`` skips the file for one save.
    """
    from transformers import PreTrainedModel

    with _lock:
        if _originals:
            return
        found = {name: PreTrainedModel.__dict__.get(name)
                 for name in ("from_pretrained", "save_pretrained")}
        if not isinstance(found["from_pretrained"], classmethod) or not callable(
                found["save_pretrained"]):
            raise RuntimeError(  # noqa: TRY004 (an unsupported library version, not an argument)
                "mopt: transformers.PreTrainedModel has no from_pretrained classmethod or "
                "save_pretrained method of its own; this transformers version is not supported")
        original_from, original_save = found["from_pretrained"], found["save_pretrained"]

        @functools.wraps(original_from.__func__)
        def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
            return _from_pretrained(original_from, cls, pretrained_model_name_or_path, *args,
                                    **kwargs)

        @functools.wraps(original_save)
        def save_pretrained(self, save_directory, *args, **kwargs):
            return _save_pretrained(original_save, self, save_directory, *args, **kwargs)

        patches = {"from_pretrained": classmethod(from_pretrained),
                   "save_pretrained": save_pretrained}
        for name, patch in patches.items():
            _originals[name] = found[name]
            setattr(PreTrainedModel, name, patch)
        _patches.update(patches)
    logger.info("mopt: save/restore of modes enabled for transformers")


def disable_huggingface_checkpointing() -> None:
    """Undoes ``enable_huggingface_checkpointing`` (a no-op when it is not enabled)."""
    if not _originals:
        return
    from transformers import PreTrainedModel

    with _lock:
        if not _originals:
            return
        foreign = [n for n, p in _patches.items() if PreTrainedModel.__dict__.get(n) is not p]
        if foreign:
            raise RuntimeError(f"mopt: PreTrainedModel.{foreign[0]} was replaced after "
                               "enable_huggingface_checkpointing(); undo that patch first")
        for name, original in _originals.items():
            setattr(PreTrainedModel, name, original)
        _originals.clear()
        _patches.clear()


def is_huggingface_checkpointing_enabled() -> bool:
    """True between enable_huggingface_checkpointing() and disable_huggingface_checkpointing()."""
    return bool(_originals)
