"""Refusals: ModelOpt names that mopt deliberately does not implement.

A script that ports from ModelOpt by changing its imports must not fail at import time because
it names something mopt lacks; it must fail, clearly, when it uses it. Each refused name is an
object that resolves at the ModelOpt path and raises ``NotImplementedError`` naming the ModelOpt
name and what mopt lacks when called, instantiated or used. Every refusal carries
``__mopt_refused__`` (the message), which the inventory test (tests/python/compat) reads.
"""

from __future__ import annotations

from typing import Any

__all__ = ["refused_function", "refused_class", "refused_object", "refused_method",
           "refusal_message", "define_refusals"]


def refusal_message(path: str, lacks: str) -> str:
    return f"mopt does not implement ModelOpt's `{path}`: {lacks}"


def refused_function(path: str, lacks: str):
    """A function that raises NotImplementedError when called."""
    msg = refusal_message(path, lacks)
    name = path.rpartition(".")[2]

    def refused(*args: Any, **kwargs: Any):
        raise NotImplementedError(msg)

    refused.__name__ = refused.__qualname__ = name
    refused.__doc__ = msg
    refused.__mopt_refused__ = msg
    return refused


def refused_method(path: str, lacks: str):
    """A method (in a class body) that raises NotImplementedError when called."""
    return refused_function(path, lacks)


def refused_class(path: str, lacks: str, bases: tuple[type, ...] = (), module: str | None = None):
    """A class that raises NotImplementedError when instantiated (subclassing is allowed, so a
    script's class definitions still import; instantiating a subclass raises too)."""
    msg = refusal_message(path, lacks)
    name = path.rpartition(".")[2]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(msg)

    def __new__(cls, *args: Any, **kwargs: Any):
        raise NotImplementedError(msg)

    ns = {"__init__": __init__, "__doc__": msg, "__mopt_refused__": msg}
    if not bases:
        ns["__new__"] = __new__
    if module is not None:
        ns["__module__"] = module
    return type(name, bases or (object,), ns)


class _RefusedObject:
    """A constant mopt lacks: any use but printing it raises NotImplementedError."""

    def __init__(self, path: str, lacks: str) -> None:
        object.__setattr__(self, "__mopt_refused__", refusal_message(path, lacks))

    def _refuse(self, *args: Any, **kwargs: Any):
        raise NotImplementedError(object.__getattribute__(self, "__mopt_refused__"))

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):  # copy/inspect/pickle probes
            raise AttributeError(name)
        self._refuse()

    def __repr__(self) -> str:
        return f"<refused: {object.__getattribute__(self, '__mopt_refused__')}>"

    __call__ = __getitem__ = __setitem__ = __iter__ = __len__ = __contains__ = _refuse
    __bool__ = __int__ = __float__ = __index__ = _refuse
    __or__ = __ror__ = __add__ = __radd__ = _refuse

    def __setattr__(self, name: str, value: Any) -> None:
        self._refuse()


def refused_object(path: str, lacks: str) -> Any:
    """A constant that raises NotImplementedError when used (indexed, iterated, called...)."""
    return _RefusedObject(path, lacks)


def define_refusals(namespace: dict, prefix: str, refusals: dict[str, tuple[str, str]]) -> list:
    """Adds ``{name: (kind, lacks)}`` refusals to a module namespace (kind: 'function', 'class'
    or 'object'); returns the names."""
    makers = {"function": refused_function, "class": refused_class, "object": refused_object}
    for name, (kind, lacks) in refusals.items():
        obj = makers[kind](f"{prefix}.{name}", lacks)
        if kind == "class":
            obj.__module__ = namespace.get("__name__", obj.__module__)
        namespace[name] = obj
    return list(refusals)
