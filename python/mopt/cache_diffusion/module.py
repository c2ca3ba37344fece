"""Cached blocks: a module's forward routed through its C++ cache policy.

``cachify.prepare`` turns a block into a cached one in place: the module keeps its class, name,
parameters and state_dict (so quantization before or after composes, and checkpoints do not
change), and gets an instance ``forward`` that asks its policy (``mopt._C.CachePolicy``) at every
call whether to run the block or to return the cached (or forecast) outputs. The policy decides;
this module only flattens a block's outputs to the tensors the policy keeps and rebuilds them.
"""

from __future__ import annotations

import json
import types
from typing import Any, Callable

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .. import _C

__all__ = ["CacheState", "CachedModule", "cache_state", "is_cached"]

_STATE_ATTR = "_mopt_cache"


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
    return None


class CacheState:
    """The cache of one block: its C++ policy, the config entry's step function, whether it is
    enabled, and what the adaptive decision probes."""

    def __init__(self, name: str, policy: dict, select: Callable[[int], bool] | None,
                 probe: str, space: str = "output",
                 alpha_bar: Callable[[int], float] | None = None) -> None:
        if space not in ("output", "sample"):
            raise ValueError(f"mopt: cached block '{name}': forecast_space must be 'output' or "
                             f"'sample', got {space!r}")
        if space == "sample" and alpha_bar is None:
            raise ValueError(f"mopt: cached block '{name}': forecast_space 'sample' needs the "
                             "noise level of every step")
        self.name = name
        # "sample": keep and forecast the denoised-sample estimate x0 of an epsilon prediction
        # (C++ epsilon_to_sample / sample_to_epsilon at the step's alpha_bar) instead of eps
        self.space = space
        self.alpha_bar = alpha_bar
        self.policy_config = dict(policy)
        self.policy = _C.CachePolicy(json.dumps(policy))
        self.select = select
        self.probe = probe
        self.enabled = True
        self.bypass = False  # set by a pipeline run that must not use the cache
        self.hook = None  # the forward hook on the probed module, if any
        self._probe_value: torch.Tensor | None = None
        self._spec: Any = None  # pytree spec of the last computed outputs
        self._leaves: list = []  # their leaves (tensors replaced on reuse)

    def __deepcopy__(self, memo: dict) -> "CacheState":
        new = CacheState(self.name, self.policy_config, self.select, self.probe, self.space,
                         self.alpha_bar)
        new.enabled = self.enabled
        return new

    def set_policy(self, policy: dict, select: Callable[[int], bool] | None = None) -> None:
        """Replaces the policy (a fresh one: nothing cached)."""
        self.policy = _C.CachePolicy(json.dumps(policy))
        self.policy_config = dict(policy)
        self.select = select
        self._spec, self._leaves = None, []

    def reset(self) -> None:
        self.policy.reset()
        self._probe_value = None
        self._spec, self._leaves = None, []

    def probe_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        leaves = [x for x in pytree.tree_leaves(output) if isinstance(x, torch.Tensor)]
        self._probe_value = leaves[0] if leaves else None

    def _probe(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        if self.probe == "input":
            return _first_tensor(args, kwargs)
        value, self._probe_value = self._probe_value, None
        if value is None:
            raise RuntimeError(f"mopt: cached block '{self.name}' probes the output of "
                               f"'{self.probe}', which did not run before it in this call; "
                               "probe a module that runs earlier in the forward, or 'input'")
        return value

    def call(self, run: Callable[[], Any], args: tuple, kwargs: dict) -> Any:
        """One call of the block: run it or serve it from the cache, as the policy decides."""
        if not self.enabled or self.bypass:
            return run()
        probe = self._probe(args, kwargs) if self.policy_config.get("decision") == "adaptive" \
            else None
        step = self.policy.step
        reuse = None if self.select is None else bool(self.select(step))
        convert = None
        if self.space == "sample":
            x = _first_tensor(args, kwargs)
            alpha_bar = float(self.alpha_bar(step))
            # the prediction leaves (those shaped as the input) move between eps and x0
            convert = (lambda t, f: f(t, x, alpha_bar) if isinstance(t, torch.Tensor)
                       and t.shape == x.shape else t)
        if self.policy.decide(probe, reuse):
            out = run()
            leaves, spec = pytree.tree_flatten(out)
            self._spec, self._leaves = spec, leaves
            kept = [x for x in leaves if isinstance(x, torch.Tensor)]
            if convert is not None:
                kept = [convert(t, _C.epsilon_to_sample) for t in kept]
            self.policy.store(kept)
            return out
        tensors = iter(self.policy.reuse())
        leaves = [next(tensors) if isinstance(x, torch.Tensor) else x for x in self._leaves]
        if convert is not None:
            leaves = [convert(t, _C.sample_to_epsilon) for t in leaves]
        return pytree.tree_unflatten(leaves, self._spec)

    def stats(self) -> dict:
        return {"calls": self.policy.step, "recomputes": self.policy.recomputes,
                "reuses": self.policy.reuses}


def _cached_forward(self: nn.Module, *args, **kwargs):
    state: CacheState = self.__dict__[_STATE_ATTR]
    inner = self.__dict__.get("_mopt_cache_inner_forward")
    if inner is None:  # the class's forward, looked up now (a later class change applies)
        return state.call(lambda: type(self).forward(self, *args, **kwargs), args, kwargs)
    return state.call(lambda: inner(*args, **kwargs), args, kwargs)


def make_cached(module: nn.Module, state: CacheState) -> None:
    """Routes `module`'s forward through `state` (in place)."""
    if _STATE_ATTR in module.__dict__:
        raise ValueError(f"mopt: block '{state.name}' is cached already")
    # a forward the instance already overrides (accelerate's hooks do) is kept and called
    module.__dict__["_mopt_cache_inner_forward"] = module.__dict__.get("forward")
    module.__dict__[_STATE_ATTR] = state
    module.__dict__["forward"] = types.MethodType(_cached_forward, module)


def remove_cached(module: nn.Module) -> None:
    """Undoes make_cached."""
    if _STATE_ATTR not in module.__dict__:
        return
    inner = module.__dict__.pop("_mopt_cache_inner_forward", None)
    del module.__dict__[_STATE_ATTR]
    if inner is None:
        module.__dict__.pop("forward", None)
    else:
        module.__dict__["forward"] = inner


def cache_state(module: nn.Module) -> CacheState | None:
    """The cache of a cached block, or None."""
    return module.__dict__.get(_STATE_ATTR)


def is_cached(module: nn.Module) -> bool:
    return _STATE_ATTR in module.__dict__


class CachedModule(nn.Module):
    """ModelOpt's wrapper form: ``CachedModule(block, select_cache_step_func)`` caches `block`
    with ModelOpt's semantics (recompute when select(step) is False) and forwards to it. mopt's
    ``prepare`` caches blocks in place instead (names and state_dict unchanged); this class is
    for scripts that build the wrapper themselves."""

    def __init__(self, block: nn.Module, select_cache_step_func: Callable[[int], bool],
                 name: str = "") -> None:
        super().__init__()
        self.module = block
        self.__dict__[_STATE_ATTR] = CacheState(name or type(block).__name__, {},
                                                select_cache_step_func, "input")

    def forward(self, *args, **kwargs):
        return self.__dict__[_STATE_ATTR].call(lambda: self.module(*args, **kwargs), args,
                                               kwargs)

    def enable_cache(self) -> None:
        self.__dict__[_STATE_ATTR].enabled = True

    def disable_cache(self) -> None:
        self.__dict__[_STATE_ATTR].enabled = False

    def reset_status(self) -> None:
        self.__dict__[_STATE_ATTR].reset()
