"""Real data for the calibration and algorithm tests: seeded calibration windows of the shipped
TinyStories text (disjoint from the evaluation text) and the inputs that linear layers of the
real stories260K model see on them."""

from __future__ import annotations

import functools

import torch
from torch import nn

from mopt.data import default_calib_text
from mopt.eval import text_calibration_batches
from mopt.models import Llama2cTokenizer


@functools.lru_cache(maxsize=1)
def tokenizer() -> Llama2cTokenizer:
    return Llama2cTokenizer.from_file()


@functools.lru_cache(maxsize=4)
def calib_batches(n_samples: int, seq_len: int) -> torch.Tensor:
    """[n_samples, seq_len] token ids, seed 0."""
    ids = tokenizer().encode(default_calib_text())
    return text_calibration_batches(ids, n_samples=n_samples, seq_len=seq_len, seed=0)


def layer_inputs(model: nn.Module, names: list[str], batches: torch.Tensor,
                 batch_size: int) -> dict[str, list[torch.Tensor]]:
    """{name: [the input of module `name` for each run of `batch_size` windows]}, as the model
    computes them in float."""
    acts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda mod, args, name=name: acts[name].append(args[0].detach().clone()))
        for name in names]
    try:
        with torch.no_grad():
            for b in batches.split(batch_size):
                model(b)
    finally:
        for h in hooks:
            h.remove()
    return acts
