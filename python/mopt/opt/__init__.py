"""mopt.opt (``import mopt.opt as mto``): the mode history of optimized models and safe
save/restore, with the API of ``modelopt.torch.opt``.

``mto.save(model, path)`` writes one safetensors file (tensors, plus the mode history as JSON in
its metadata) atomically; ``mto.restore(model, path)`` replays the modes on a fresh model and loads
the tensors without unpickling anything. nvidia-modelopt's pickled state files are read through
an allow-list of plain types. ``mto.enable_huggingface_checkpointing()`` makes ``save_pretrained``
/ ``from_pretrained`` carry the state.
"""

from . import mode
from .conversion import (
    ModeloptStateManager,
    apply_mode,
    is_converted,
    load_modelopt_state,
    modelopt_state,
    restore,
    restore_from_modelopt_state,
    save,
)
from .plugins import enable_huggingface_checkpointing

__all__ = [
    "mode",
    "ModeloptStateManager",
    "apply_mode",
    "enable_huggingface_checkpointing",
    "is_converted",
    "load_modelopt_state",
    "modelopt_state",
    "restore",
    "restore_from_modelopt_state",
    "save",
]
