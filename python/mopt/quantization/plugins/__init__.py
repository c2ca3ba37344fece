"""Integrations with optional libraries (SPEC §1 "Plugins"), each loaded only when in use.

* transformers (``huggingface.py``): GPT-2 ``Conv1D`` and the attention quantizers
  ``q/k/v_bmm_quantizer``. A model built with transformers can only exist once the process has
  imported transformers, so the plugin is imported then: right away if transformers is already
  imported, otherwise by a conversion hook the first time a model is quantized after it is.
  ``import mopt.quantization`` thus never pays for importing transformers (seconds), and without
  transformers installed mtq works the same.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

from torch import nn

from ..conversion import CUSTOM_MODEL_PLUGINS

__all__ = ["huggingface_plugin"]

_failed: set[str] = set()


def _load(name: str, library: str) -> ModuleType | None:
    """Imports plugin `name` if `library` is imported; a plugin that fails to import (an
    incompatible library version) is reported once and skipped, so mtq keeps working."""
    if sys.modules.get(library) is None or name in _failed:
        return None
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError as e:
        _failed.add(name)
        warnings.warn(
            f"mopt: the {library} plugin could not be loaded ({e}); {library} modules will not "
            "get their quantized versions",
            stacklevel=3,
        )
        return None


def huggingface_plugin() -> ModuleType | None:
    """The transformers plugin module, or None while transformers is not imported."""
    return _load("huggingface", "transformers")


def _register_hf_modules(model: nn.Module) -> None:
    plugin = huggingface_plugin()
    if plugin is not None:
        plugin.register_hf_modules(model)


CUSTOM_MODEL_PLUGINS.append(_register_hf_modules)
huggingface_plugin()  # registers Conv1D now when transformers is already imported
