"""The model, data shards and configs shared by test_distributed.py and its torchrun worker."""

import copy

import mopt.quantization as mtq
import torch
from torch import nn

IN, STEPS, TOKENS = 32, 3, 24

# case name -> (predefined config, algorithm)
_CASES = {
    "int8_max": ("INT8_DEFAULT_CFG", "max"),
    "int8_entropy": ("INT8_DEFAULT_CFG", "entropy"),
    "int8_percentile": ("INT8_DEFAULT_CFG", {"method": "percentile", "percentile": 99.0}),
    "int8_mse": ("INT8_DEFAULT_CFG", "mse"),
    "int8_smoothquant": ("INT8_DEFAULT_CFG", "smoothquant"),
    "int4_awq_lite": ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", {"method": "awq_lite", "alpha_step": 0.25}),
    "int4_gptq": ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", {"method": "gptq", "block_size": 16}),
}
CASES = list(_CASES)


def config_of(name: str) -> dict:
    base, algorithm = _CASES[name]
    cfg = copy.deepcopy(getattr(mtq.config, base))
    cfg["algorithm"] = algorithm
    if base.startswith("INT4"):
        for attrs in cfg["quant_cfg"].values():
            if isinstance(attrs, dict) and attrs.get("block_sizes"):
                attrs["block_sizes"] = {**attrs["block_sizes"], -1: 16}
    return cfg


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                         nn.Linear(32, 16))


def _batch(rank: int, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(TOKENS, IN, generator=gen) * torch.linspace(0.3, 2.0, IN)
    if step == 0:
        # the first batch of every rank holds the largest values, so histogram bins never grow
        x = x * 3.0
    return x


def shard(rank: int, world: int) -> list[torch.Tensor]:
    """Rank `rank`'s calibration batches."""
    return [_batch(rank, step) for step in range(STEPS)]


def union_batches(world: int) -> list[torch.Tensor]:
    """The union of the shards as one process sees a data-parallel run: global batch k is every
    rank's batch k."""
    return [torch.cat([_batch(r, step) for r in range(world)]) for step in range(STEPS)]
