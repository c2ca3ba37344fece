"""Integrations of ``mopt.opt`` with optional libraries. Nothing here imports them at import time:
``huggingface.py`` imports transformers only when checkpointing is enabled."""

from .huggingface import (
    disable_huggingface_checkpointing,
    enable_huggingface_checkpointing,
    is_huggingface_checkpointing_enabled,
)

__all__ = [
    "disable_huggingface_checkpointing",
    "enable_huggingface_checkpointing",
    "is_huggingface_checkpointing_enabled",
]
