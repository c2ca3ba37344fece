"""The recipes of ``mopt ptq``: short names (``int8``, ``int4_awq``, ...) for predefined configs.

The recipe table lives once, in C++ (``mopt::recipes()``, include/mopt/torch/configs.h), next to
the predefined configs; ``PTQ_CONFIGS`` is built from ``mopt._C.recipes()`` in table order. A
config is *runnable* when mopt.quantization defines it and each of its calibration algorithms is
in ``mtq.calibration_algorithms()`` (``config_availability`` says why not otherwise).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Sequence

from .. import _C

__all__ = [
    "PtqConfig",
    "PTQ_CONFIGS",
    "config_names",
    "resolve_configs",
    "config_availability",
]

_KEEP = object()  # "use the predefined config's own algorithm"


@dataclass(frozen=True)
class PtqConfig:
    """A short name for a predefined mtq config, optionally with another algorithm."""

    name: str
    cfg_name: str  # attribute of mopt.quantization.config
    description: str
    algorithm: Any = _KEEP
    needs_kv_quantizers: bool = False

    def build(self) -> dict:
        """The quantize config dict (a deep copy); KeyError when mtq does not define it."""
        from .. import quantization as mtq

        if not hasattr(mtq.config, self.cfg_name):
            raise KeyError(self.cfg_name)
        cfg = copy.deepcopy(getattr(mtq.config, self.cfg_name))
        if self.algorithm is not _KEEP:
            cfg["algorithm"] = copy.deepcopy(self.algorithm)
        return cfg


def _from_recipe(recipe: dict) -> PtqConfig:
    # The recipe's algorithm is JSON ("null" would mean no calibration); None keeps the config's.
    algorithm = _KEEP if recipe["algorithm"] is None else json.loads(recipe["algorithm"])
    return PtqConfig(
        recipe["name"],
        recipe["config"],
        recipe["description"],
        algorithm,
        bool(recipe["needs_kv_quantizers"]),
    )


PTQ_CONFIGS: dict[str, PtqConfig] = {r["name"]: _from_recipe(r) for r in _C.recipes()}


def config_names() -> list[str]:
    """Every short name, in table order."""
    return list(PTQ_CONFIGS)


def resolve_configs(spec: str | Sequence[str]) -> list[PtqConfig]:
    """Configs named by `spec`: "all", or comma-separated short names / mtq config names
    (e.g. "int8,fp8" or "INT8_DEFAULT_CFG"). Raises ValueError naming unknown names."""
    from .. import quantization as mtq

    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    if not names:
        raise ValueError("no config given; use e.g. --configs int8,fp8 or --configs all")
    if names == ["all"]:
        return list(PTQ_CONFIGS.values())
    out, unknown = [], []
    for n in names:
        if n in PTQ_CONFIGS:
            out.append(PTQ_CONFIGS[n])
        elif n in mtq.config.choices or (n.endswith("_CFG") and hasattr(mtq.config, n)):
            out.append(PtqConfig(n, n, f"mtq.{n}"))
        else:
            unknown.append(n)
    if unknown:
        raise ValueError(
            f"unknown config name(s) {unknown}; known short names: {', '.join(PTQ_CONFIGS)} "
            "(or 'all', or an mtq config name such as INT8_DEFAULT_CFG)"
        )
    seen, unique = set(), []
    for c in out:
        if c.name not in seen:
            seen.add(c.name)
            unique.append(c)
    return unique


def _algorithm_names(algorithm: Any) -> list[str]:
    if algorithm is None:
        return []
    if isinstance(algorithm, str):
        return [algorithm]
    if isinstance(algorithm, dict):
        m = algorithm.get("method")
        return [] if m is None else [m]
    if isinstance(algorithm, (list, tuple)):
        return [n for a in algorithm for n in _algorithm_names(a)]
    return []


def config_availability(cfg: PtqConfig) -> str | None:
    """None when the config can be tried, else why not (mtq lacks it or an algorithm)."""
    from .. import quantization as mtq

    try:
        built = cfg.build()
    except KeyError:
        return f"mopt.quantization has no {cfg.cfg_name}"
    registered = set(mtq.calibration_algorithms())
    missing = [a for a in _algorithm_names(built.get("algorithm")) if a not in registered]
    if missing:
        return f"calibration algorithm {missing[0]!r} is not registered in this build"
    return None
