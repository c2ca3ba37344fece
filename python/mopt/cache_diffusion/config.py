"""Cache configs: ModelOpt's ``config_list`` form and its default configs (SPEC §4).

A config list holds entries ``{"wildcard_or_filter_func": str | name -> bool,
"select_cache_step_func": step -> bool}``: every cacheable block whose name (relative to the
denoiser) matches an entry is cached; at each of its calls it recomputes when
``select_cache_step_func(step)`` is False and otherwise reuses its previous output. mopt's own
keys, all optional:

* ``"policy"``: the C++ cache policy's settings (``include/mopt/cache/policy.h``), e.g.
  ``{"decision": "adaptive", "threshold": 0.1}``, ``{"interval": 3, "order": 2}`` (Taylor
  forecasting), ``{"recompute_steps": [...], "num_steps": 1000}`` (a calibrated schedule). Used
  when the entry has no ``select_cache_step_func``.
* ``"level"``: ``"block"`` (default: cache the matching blocks) or ``"step"`` (cache whole
  denoiser calls; no wildcard needed).
* ``"probe"``: what the adaptive decision measures: ``"input"`` (default: the block's first
  tensor argument) or the name of a submodule that runs before the block in the same forward
  (its output, as FirstBlockCache uses the first block's).
* ``"forecast_space"``: what a level ``"step"`` cache keeps, reuses and forecasts: ``"output"``
  (default: the denoiser's prediction) or ``"sample"`` (the denoised-sample estimate x0 of an
  epsilon prediction, converted back to eps at each reused step with the step's noise level; the
  pipeline must expose its noise schedule: ``alphas_cumprod`` and ``timesteps``, on itself or on
  its ``scheduler``).

The defaults below are ModelOpt's schedules for the three block layouts; each carries the layout
it was written for (``.layout``), and ``prepare`` refuses it for a denoiser of another layout.
"""

from __future__ import annotations

import re
from typing import Any, Callable

__all__ = [
    "CacheConfigList",
    "SDXL_DEFAULT_CONFIG",
    "PIXART_DEFAULT_CONFIG",
    "SD3_DEFAULT_CONFIG",
    "normalize_config_list",
]

_ENTRY_KEYS = {"wildcard_or_filter_func", "select_cache_step_func", "policy", "level", "probe",
               "forecast_space"}


class CacheConfigList(list):
    """A config list written for one block layout ("unet", "dit" or "sd3")."""

    def __init__(self, entries: list[dict], layout: str) -> None:
        super().__init__(entries)
        self.layout = layout


# SDXL-style UNets: every down/mid/up block but the highest-resolution up block, cached on odd
# steps.
SDXL_DEFAULT_CONFIG = CacheConfigList([{
    "wildcard_or_filter_func": lambda name: "up_blocks.2" not in name,
    "select_cache_step_func": lambda step: (step % 2) != 0,
}], layout="unet")

# PixArt / DiT: every transformer block but the last ones (21-27), reused on steps not divisible
# by 3.
PIXART_DEFAULT_CONFIG = CacheConfigList([{
    "wildcard_or_filter_func":
        lambda name: not re.search(r"transformer_blocks\.(2[1-7])(\.|$)", name),
    "select_cache_step_func": lambda step: (step % 3) != 0,
}], layout="dit")

# SD3: every joint transformer block but the last ones (16-23), cached on odd steps.
SD3_DEFAULT_CONFIG = CacheConfigList([{
    "wildcard_or_filter_func":
        lambda name: not re.search(r"transformer_blocks\.(1[6-9]|2[0-3])(\.|$)", name),
    "select_cache_step_func": lambda step: (step % 2) != 0,
}], layout="sd3")


def normalize_config_list(config_list: Any) -> list[dict]:
    """The entries of `config_list` checked: ValueError naming the entry and key otherwise."""
    if isinstance(config_list, dict):
        config_list = [config_list]
    if not isinstance(config_list, (list, tuple)) or not config_list:
        raise ValueError("mopt: cachify needs a non-empty list of config entries, got "
                         f"{type(config_list).__name__}")
    out = []
    for i, entry in enumerate(config_list):
        if not isinstance(entry, dict):
            raise ValueError(f"mopt: cache config entry {i} must be a dict, got "
                             f"{type(entry).__name__}")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ValueError(f"mopt: cache config entry {i} has unknown key(s) {sorted(unknown)} "
                             f"(known: {sorted(_ENTRY_KEYS)})")
        level = entry.get("level", "block")
        if level not in ("block", "step"):
            raise ValueError(f"mopt: cache config entry {i}: level must be 'block' or 'step', "
                             f"got {level!r}")
        pattern = entry.get("wildcard_or_filter_func")
        if level == "block" and not (isinstance(pattern, str) or callable(pattern)):
            raise ValueError(f"mopt: cache config entry {i} needs 'wildcard_or_filter_func' (a "
                             "wildcard string or a function of the block name)")
        select: Callable | None = entry.get("select_cache_step_func")
        if select is not None and not callable(select):
            raise ValueError(f"mopt: cache config entry {i}: select_cache_step_func must be a "
                             "function of the step")
        policy = entry.get("policy", {})
        if not isinstance(policy, dict):
            raise ValueError(f"mopt: cache config entry {i}: policy must be a dict of cache "
                             f"policy settings, got {type(policy).__name__}")
        probe = entry.get("probe", "input")
        if not isinstance(probe, str) or not probe:
            raise ValueError(f"mopt: cache config entry {i}: probe must be 'input' or a module "
                             "name")
        space = entry.get("forecast_space", "output")
        if space not in ("output", "sample"):
            raise ValueError(f"mopt: cache config entry {i}: forecast_space must be 'output' or "
                             f"'sample', got {space!r}")
        if space == "sample" and level != "step":
            raise ValueError(f"mopt: cache config entry {i}: forecast_space 'sample' converts "
                             "the whole denoiser's prediction; it needs level 'step'")
        out.append({**entry, "level": level, "policy": policy, "probe": probe,
                    "forecast_space": space})
    return out
