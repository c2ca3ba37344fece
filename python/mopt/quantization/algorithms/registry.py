"""The calibration algorithm registry (SPEC §1 ``calibrate``).

The built-in methods and their options are defined once in C++ (``mopt._C.parse_algorithm``
checks every option and fills in the defaults); each has a Python driver registered here, and
users may register more with ``register_calibration_algorithm(name, fn)``, where
``fn(model, forward_loop, **options)``.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["register_calibration_algorithm", "calibration_algorithms", "algorithm_function"]

_ALGORITHMS: dict[str, Callable[..., None]] = {}


def register_calibration_algorithm(name: str, fn: Callable[..., None]) -> None:
    """Makes ``algorithm=name`` (or ``{"method": name, **options}``) call ``fn``."""
    _ALGORITHMS[name] = fn


def calibration_algorithms() -> list[str]:
    """Names accepted by ``algorithm``."""
    return sorted(_ALGORITHMS)


def algorithm_function(name: str) -> Callable[..., None]:
    """The driver registered for `name`."""
    return _ALGORITHMS[name]
