"""The mode registry of ``mopt.opt``: what each mode does to a model (SPEC §3).

The names, kinds and chaining rules live in C++ (``mopt._C.opt_modes``, ``check_next_mode``), so
the Python and C++ front ends agree on them; this module maps each mode name to the Python
functions that replay it on an ``nn.Module`` (``restore``) and refresh its metadata before a
save (``update_for_save``). Features register their modes when they are imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .. import _C

__all__ = ["ModeDescriptor", "register_mode", "get_mode_descriptor", "mode_names"]

# restore(model, config, metadata, undo) replays the mode; `undo` collects callables that put
# the model back if a later step fails. It may return {tensor name: shape} for file tensors that
# hold the same values in another layout and are reshaped before loading.
RestoreFn = Callable[[nn.Module, dict, dict, list], "dict[str, list[int]] | None"]
UpdateFn = Callable[[nn.Module, dict, dict], None]


@dataclass(frozen=True)
class ModeDescriptor:
    """One mode: its name, what it records and how it is replayed."""

    name: str
    restore: RestoreFn
    update_for_save: UpdateFn | None = None


_DESCRIPTORS: dict[str, ModeDescriptor] = {}


def mode_names() -> list[str]:
    """Every mode the C++ registry knows, in registration order."""
    return [name for name, _, _ in _C.opt_modes()]


def register_mode(descriptor: ModeDescriptor, kind: str | None = None,
                  description: str = "") -> None:
    """Registers the Python side of a mode; `kind` ("quantize", "calibrate", "sparsity") also
    registers the name with the C++ chaining rules when it is new there."""
    if descriptor.name not in mode_names():
        if kind is None:
            raise ValueError(f"mode '{descriptor.name}' is not in the C++ registry; give its kind")
        _C.register_mode(descriptor.name, kind, description)
    _DESCRIPTORS[descriptor.name] = descriptor


def get_mode_descriptor(name: str) -> ModeDescriptor:
    """The descriptor of mode `name`. ValueError for an unknown mode, NotImplementedError for a
    mode the C++ registry knows but no Python feature implements yet."""
    if name not in mode_names():
        _C.check_next_mode([], name)  # raises the C++ error naming the known modes
    if name not in _DESCRIPTORS:
        _load_features()
    if name not in _DESCRIPTORS:
        raise NotImplementedError(
            f"mopt: mode '{name}' is known but not implemented by this mopt (restoring it would "
            "need that feature)")
    return _DESCRIPTORS[name]


def _load_features() -> None:
    """Imports the packages that register modes."""
    from ..quantization import mode as _quantization_mode  # noqa: F401
    from ..sparsity import mode as _sparsity_mode  # noqa: F401

