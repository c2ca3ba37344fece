"""Configs of the sparsity modes (ModelOpt's ``modelopt.torch.sparsity.config``).

A mode config maps a layer type's rule name to ``{name pattern: {} | None}``: a layer whose
name matches a pattern is sparsified (``{}``) or left dense (``None``); the last matching pattern
wins, and a type the config does not mention keeps its default rules, as in ModelOpt.
"""

from __future__ import annotations

import copy
import fnmatch

from torch import nn

from .module import SparseModuleRegistry

__all__ = [
    "DEFAULT_RULES",
    "SEARCH_DEFAULTS",
    "SparseGPTConfig",
    "SparseMagnitudeConfig",
    "WandaConfig",
    "resolve_rules",
    "selected",
]

_DEFAULT_TYPE_RULES = {"*": {}, "*lm_head*": None}
DEFAULT_RULES = {
    "nn.Linear": dict(_DEFAULT_TYPE_RULES),
    "nn.Conv1d": dict(_DEFAULT_TYPE_RULES),
    "nn.Conv2d": dict(_DEFAULT_TYPE_RULES),
    "Conv1D": dict(_DEFAULT_TYPE_RULES),
}
SparseMagnitudeConfig = copy.deepcopy(DEFAULT_RULES)
SparseGPTConfig = copy.deepcopy(DEFAULT_RULES)
WandaConfig = copy.deepcopy(DEFAULT_RULES)

# The search config (mts.sparsify's `config`): ModelOpt's keys and ours.
SEARCH_DEFAULTS = {
    "pattern": "2:4 sparsity",
    "forward_loop": None,
    "data_loader": None,
    "collect_func": None,
    "max_iter_data_loader": None,
    "verbose": False,
    # sparsegpt
    "col_block_size": 128,
    "hessian_damp": 0.1,
    "row_block_size": -1,    # ModelOpt's; rows are independent, so it changes nothing
    "calib_size": 256,       # ModelOpt's; the data is whatever forward_loop runs
    "device": None,          # ModelOpt's; the Hessians live on the inputs' device
    "update_weights": True,  # ours: keep SparseGPT's compensating update (ModelOpt: False)
    # ours
    "skip_incompatible": False,  # leave layers whose input dim is not a multiple of M dense
    "layerwise": None,           # decoder models one decoder layer at a time (None: when found)
}


def resolve_rules(config: dict | None) -> dict[str, dict]:
    """The full rule set: `config`'s types over the defaults. ValueError for an unknown type
    name or a rule value that is not {} / None."""
    rules = copy.deepcopy(DEFAULT_RULES)
    if config is None:
        return rules
    if not isinstance(config, dict):
        raise TypeError(f"mopt: a sparsity mode config must be a dict of layer type -> rules, "
                        f"got {type(config).__name__}")
    known = set(SparseModuleRegistry.names()) | set(DEFAULT_RULES)
    for type_name, type_rules in config.items():
        if type_name not in known:
            raise ValueError(f"mopt: unknown layer type '{type_name}' in the sparsity config; "
                             f"known: {sorted(known)}")
        if type_rules is None:
            type_rules = {"*": None}
        if not isinstance(type_rules, dict):
            raise ValueError(f"mopt: the rules of '{type_name}' must be a dict of name pattern "
                             f"-> {{}} or None, got {type_rules!r}")
        for pattern, value in type_rules.items():
            if not isinstance(pattern, str) or (value is not None and value != {}):
                raise ValueError(f"mopt: sparsity rule '{type_name}': {pattern!r}: {value!r} "
                                 "must map a name pattern to {} (sparsify) or None (dense)")
        rules[type_name] = dict(type_rules)
    return rules


def selected(model: nn.Module, rules: dict[str, dict]) -> list[tuple[str, nn.Module]]:
    """The layers the rules sparsify, in model order."""
    out = []
    for name, module in model.named_modules():
        type_name = SparseModuleRegistry.name_of(module)
        if type_name is None or type_name not in rules:
            continue
        decision = None
        for pattern, value in rules[type_name].items():
            if fnmatch.fnmatchcase(name, pattern):
                decision = value
        if decision is not None:
            out.append((name, module))
    return out
