#!/usr/bin/env python3
"""The public names of NVIDIA ModelOpt's quantization and utils modules, read from its source.

ModelOpt is parsed with ``ast``, never imported (it need not be installed, and importing it would
pull in its dependencies). The produced inventory is the list mopt's compatibility test walks
(tests/python/compat/test_modelopt_inventory.py): every name must resolve in mopt at the same
path, to an implementation with a compatible signature or to a refusal.

What counts as public, per module:
* a module that defines ``__all__`` exports exactly those names;
* otherwise every module-level name that does not start with ``_``: functions, classes,
  assignments, names re-exported from inside the package (``from .x import *`` takes x's public
  names, ``from .x import Name`` takes Name) and the package's own submodules it imports;
  names imported from outside the package (``import torch``, ``from typing import Any``) are
  incidental and left out, since a script that wants them imports them from their home;
* the public methods and properties of the classes defined in the ``nn`` and ``calib``
  modules (TensorQuantizer, SequentialQuantizer, the quantized modules, the calibrators): the
  objects a script holds and calls methods on, with those inherited from ModelOpt base classes.

Usage (from the repository root; --src is the `modelopt` folder of the unpacked wheel):

    python3 tools/modelopt_inventory.py --src /tmp/modelopt/src/modelopt \\
        --out tests/python/compat/modelopt_0_47_inventory.json
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

# The modules inventoried, as ModelOpt names them, with the mopt path each maps to.
MODULES = {
    "modelopt.torch.quantization": "mopt.quantization",
    "modelopt.torch.quantization.nn": "mopt.quantization.nn",
    "modelopt.torch.quantization.tensor_quant": "mopt.quantization.tensor_quant",
    "modelopt.torch.quantization.calib": "mopt.quantization.calib",
    "modelopt.torch.quantization.utils": "mopt.quantization.utils",
    "modelopt.torch.quantization.config": "mopt.quantization.config",
    "modelopt.torch.utils": "mopt.utils",
}

# Modules whose classes' public methods are inventoried too.
METHOD_MODULE_PREFIXES = (
    "modelopt.torch.quantization.nn",
    "modelopt.torch.quantization.calib",
)


def _unparse(node: ast.AST | None) -> str | None:
    return None if node is None else ast.unparse(node)


def signature_of(fn: ast.FunctionDef | ast.AsyncFunctionDef, drop_first: bool) -> list[dict]:
    """The parameters of a def as [{name, kind, default?}] (defaults as source text)."""
    a = fn.args
    params: list[dict] = []
    positional = [(p, "positional_only") for p in a.posonlyargs]
    positional += [(p, "positional_or_keyword") for p in a.args]
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for (p, kind), default in zip(positional, defaults):
        entry = {"name": p.arg, "kind": kind}
        if default is not None:
            entry["default"] = _unparse(default)
        params.append(entry)
    if a.vararg:
        params.append({"name": a.vararg.arg, "kind": "var_positional"})
    for p, default in zip(a.kwonlyargs, a.kw_defaults):
        entry = {"name": p.arg, "kind": "keyword_only"}
        if default is not None:
            entry["default"] = _unparse(default)
        params.append(entry)
    if a.kwarg:
        params.append({"name": a.kwarg.arg, "kind": "var_keyword"})
    if drop_first and params and params[0]["kind"] != "var_positional":
        params = params[1:]
    return params


def format_signature(params: list[dict] | None) -> str | None:
    """The parameter list as Python writes it: (a, b=1, *args, c, **kw)."""
    if params is None:
        return None
    out, star_done = [], False
    for i, p in enumerate(params):
        if p["kind"] == "keyword_only" and not star_done:
            out.append("*")
            star_done = True
        if p["kind"] == "var_positional":
            star_done = True
            out.append("*" + p["name"])
        elif p["kind"] == "var_keyword":
            out.append("**" + p["name"])
        else:
            out.append(p["name"] + (f"={p['default']}" if "default" in p else ""))
        if p["kind"] == "positional_only" and (
            i + 1 == len(params) or params[i + 1]["kind"] != "positional_only"
        ):
            out.append("/")
    return "(" + ", ".join(out) + ")"


class Source:
    """The ModelOpt package tree: module name -> parsed file, and what each module exports."""

    def __init__(self, root: Path) -> None:
        self.root = root  # the folder named modelopt
        self._trees: dict[str, ast.Module | None] = {}
        self._bindings: dict[str, dict[str, dict]] = {}
        self._exports: dict[str, dict[str, dict]] = {}
        self._in_progress: set[str] = set()

    # -- files ----------------------------------------------------------------------------------
    def path_of(self, module: str) -> Path | None:
        rel = Path(*module.split(".")[1:])
        for cand in (self.root / rel / "__init__.py", (self.root / rel).with_suffix(".py")):
            if cand.is_file():
                return cand
        return None

    def is_package(self, module: str) -> bool:
        p = self.path_of(module)
        return p is not None and p.name == "__init__.py"

    def tree(self, module: str) -> ast.Module | None:
        if module not in self._trees:
            p = self.path_of(module)
            self._trees[module] = None if p is None else ast.parse(p.read_text(), str(p))
        return self._trees[module]

    def resolve_relative(self, module: str, level: int, name: str | None) -> str:
        parts = module.split(".")
        base = parts if self.is_package(module) else parts[:-1]
        if level > 1:
            base = base[: len(base) - (level - 1)]
        return ".".join(base + ([name] if name else []))

    # -- statements -----------------------------------------------------------------------------
    @staticmethod
    def _top_statements(body):
        """Module-level statements, looking into if/try blocks (guarded imports)."""
        for st in body:
            if isinstance(st, ast.If):
                yield from Source._top_statements(st.body)
                yield from Source._top_statements(st.orelse)
            elif isinstance(st, ast.Try):
                yield from Source._top_statements(st.body)
                for h in st.handlers:
                    yield from Source._top_statements(h.body)
                yield from Source._top_statements(st.orelse)
                yield from Source._top_statements(st.finalbody)
            else:
                yield st

    def _all_of(self, tree: ast.Module) -> list[str] | None:
        names = None
        for st in self._top_statements(tree.body):
            if isinstance(st, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in st.targets
            ):
                names = list(ast.literal_eval(st.value))
            elif (isinstance(st, ast.AugAssign) and isinstance(st.target, ast.Name)
                  and st.target.id == "__all__" and names is not None):
                names += list(ast.literal_eval(st.value))
        return names

    def defined_names(self, module: str) -> set[str]:
        """Names defined (not imported) at module level."""
        tree = self.tree(module)
        names: set[str] = set()
        for st in self._top_statements(tree.body if tree else []):
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(st.name)
            elif isinstance(st, ast.Assign):
                names.update(t.id for t in st.targets if isinstance(t, ast.Name))
        return names

    def bindings(self, module: str) -> dict[str, dict]:
        """Every module-level binding: name -> entry (kind 'external' for names imported from
        outside the package)."""
        if module in self._bindings:
            return self._bindings[module]
        tree = self.tree(module)
        out: dict[str, dict] = {}
        if tree is None:
            return out
        self._bindings[module] = out  # visible (partially) to import cycles
        for st in self._top_statements(tree.body):
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[st.name] = {"kind": "function", "signature": signature_of(st, False),
                                "defined_in": module}
            elif isinstance(st, ast.ClassDef):
                out[st.name] = self._class_entry(module, st)
            elif isinstance(st, (ast.Assign, ast.AnnAssign)):
                targets = st.targets if isinstance(st, ast.Assign) else [st.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        out[t.id] = self._assign_entry(module, st.value, out)
            elif isinstance(st, ast.ImportFrom):
                self._import_from(module, st, out)
            elif isinstance(st, ast.Import):
                for alias in st.names:
                    bound = alias.asname or alias.name.split(".")[0]
                    out[bound] = {"kind": "external"}
        return out

    def _import_from(self, module: str, st: ast.ImportFrom, out: dict) -> None:
        src = self.resolve_relative(module, st.level, st.module) if st.level else st.module or ""
        internal = src == "modelopt" or src.startswith("modelopt.")
        for alias in st.names:
            if alias.name == "*":
                if internal:
                    out.update(self.exports(src))
                continue
            bound = alias.asname or alias.name
            if not internal:
                out[bound] = {"kind": "external"}
                continue
            sub = f"{src}.{alias.name}"
            if self.path_of(sub) is not None and alias.name not in self.defined_names(src):
                out[bound] = {"kind": "module", "target": sub}
            else:
                entry = self.bindings(src).get(alias.name)
                out[bound] = dict(entry) if entry else {"kind": "unknown", "target": sub}

    def _assign_entry(self, module: str, value: ast.AST | None, scope: dict) -> dict:
        # `x = SomeFunction.apply`: an autograd Function's apply (binds as a method).
        if (isinstance(value, ast.Attribute) and value.attr == "apply"
                and isinstance(value.value, ast.Name) and value.value.id in scope
                and scope[value.value.id].get("kind") == "class"):
            fn_cls = scope[value.value.id]
            return {"kind": "autograd_function_apply", "function_class": value.value.id,
                    "signature": fn_cls.get("forward_signature"), "defined_in": module}
        # `Alias = Name`: the aliased class or function.
        if isinstance(value, ast.Name) and value.id in scope and scope[value.id].get("kind") in (
            "class", "function", "autograd_function_apply"
        ):
            entry = dict(scope[value.id])
            entry["alias_of"] = value.id
            return entry
        entry = {"kind": "constant", "defined_in": module}
        if isinstance(value, ast.Call):
            entry["value_type"] = _unparse(value.func)
        elif value is not None:
            entry["value_type"] = type(value).__name__
        return entry

    def _class_entry(self, module: str, cls: ast.ClassDef) -> dict:
        init = None
        methods: dict[str, dict] = {}
        forward_sig = None
        for st in cls.body:
            # Quantizer containers forward these names to their quantizers by __getattr__.
            if (isinstance(st, ast.Assign) and len(st.targets) == 1
                    and isinstance(st.targets[0], ast.Name)
                    and st.targets[0].id in ("_delegated_methods", "_delegated_properties")):
                kind = "delegated_" + st.targets[0].id[len("_delegated_"):-1]
                for n in ast.literal_eval(st.value):
                    methods.setdefault(n, {"kind": kind})
                continue
            if not isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            decos = [_unparse(d) for d in st.decorator_list]
            if st.name == "__init__":
                init = signature_of(st, True)
            if st.name == "forward" and "staticmethod" in decos:
                forward_sig = signature_of(st, True)  # an autograd Function: drop ctx
            if st.name.startswith("_"):
                continue
            if any(d == "property" or d.endswith((".setter", ".deleter")) for d in decos):
                methods.setdefault(st.name, {"kind": "property"})
                continue
            is_static = "staticmethod" in decos
            kind = ("staticmethod" if is_static else
                    "classmethod" if "classmethod" in decos else "method")
            methods[st.name] = {"kind": kind, "signature": signature_of(st, not is_static)}
        entry = {
            "kind": "class",
            "bases": [_unparse(b) for b in cls.bases],
            "signature": init,
            "defined_in": module,
        }
        if forward_sig is not None:
            entry["forward_signature"] = forward_sig
        if module.startswith(METHOD_MODULE_PREFIXES):
            entry["methods"] = methods
        return entry

    # -- exports --------------------------------------------------------------------------------
    def exports(self, module: str) -> dict[str, dict]:
        """The public names of a module (see the module docstring)."""
        if module in self._exports:
            return self._exports[module]
        if module in self._in_progress:  # an import cycle: what is known so far
            return {}
        self._in_progress.add(module)
        try:
            tree = self.tree(module)
            if tree is None:
                raise FileNotFoundError(f"no source for {module} under {self.root}")
            b = self.bindings(module)
            all_names = self._all_of(tree)
            if all_names is not None:
                result = {}
                for n in all_names:
                    if n in b:
                        result[n] = b[n]
                    elif self.path_of(f"{module}.{n}") is not None:
                        result[n] = {"kind": "module", "target": f"{module}.{n}"}
                    else:
                        result[n] = {"kind": "unknown"}
            else:
                result = {n: e for n, e in b.items()
                          if not n.startswith("_") and e.get("kind") != "external"}
            self._exports[module] = result
            return result
        finally:
            self._in_progress.discard(module)

    def attributes(self, module: str) -> dict[str, dict]:
        """What a script reaches as ``module.name``: the exports, plus, for a package whose
        ``__all__`` is narrower than what it star-imports, the public names defined inside the
        package (``mtq.utils.enable_fake_quant``), marked ``"in_all": False``."""
        result = dict(self.exports(module))
        if self.is_package(module) and self._all_of(self.tree(module)) is not None:
            for n, e in self.bindings(module).items():
                if (n not in result and not n.startswith("_") and e.get("kind") != "external"
                        and str(e.get("defined_in", "")).startswith(module + ".")):
                    result[n] = {**e, "in_all": False}
        return result

    def class_entry(self, module: str, name: str) -> dict | None:
        e = self.bindings(module).get(name)
        return e if e and e.get("kind") == "class" else None


def _with_inherited(src: Source, entry: dict, seen: set) -> dict:
    """The class entry with the methods (and __init__ signature) of its ModelOpt base classes:
    SequentialQuantizer lists what it inherits from ModelOpt classes, not from torch."""
    entry = dict(entry)
    methods = dict(entry.get("methods") or {})
    module = entry.get("defined_in")
    for base in entry.get("bases", []):
        b = src.class_entry(module, base) if module else None
        if b is None or (b.get("defined_in"), base) in seen:
            continue
        seen.add((b.get("defined_in"), base))
        b = _with_inherited(src, b, seen)
        for n, m in (b.get("methods") or {}).items():
            methods.setdefault(n, m)
        if entry.get("signature") is None and b.get("signature") is not None:
            entry["signature"] = b["signature"]
            entry["signature_from"] = b.get("signature_from", base)
    if "methods" in entry:
        entry["methods"] = methods
    return entry


def _finish(entry: dict) -> dict:
    out = {k: v for k, v in entry.items() if k != "forward_signature"}
    if "signature" in out:
        out["signature_text"] = format_signature(out["signature"])
    if "methods" in out:
        out["methods"] = {
            n: ({**m, "signature_text": format_signature(m["signature"])}
                if "signature" in m else m)
            for n, m in sorted(out["methods"].items())
        }
    return out


def build(src_root: Path, version: str) -> dict:
    src = Source(src_root)
    modules = {}
    for mod, mopt_path in MODULES.items():
        names = {}
        for name, entry in sorted(src.attributes(mod).items()):
            if entry.get("kind") == "class":
                entry = _with_inherited(src, entry, set())
            names[name] = _finish(entry)
        modules[mod] = {"mopt": mopt_path, "names": names}
    return {
        "source": "nvidia-modelopt",
        "version": version,
        "generated_by": "tools/modelopt_inventory.py",
        "modules": modules,
    }


def _version_of(src: Path) -> str:
    """The version of the dist-info folder beside the package (the wheel's layout)."""
    for d in sorted(src.parent.glob("nvidia_modelopt-*.dist-info")):
        return d.name[len("nvidia_modelopt-"):-len(".dist-info")]
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=Path("/tmp/modelopt/src/modelopt"),
                    help="the `modelopt` package folder of the unpacked wheel")
    ap.add_argument("--version", default=None, help="ModelOpt version (default: the dist-info's)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write (default stdout)")
    args = ap.parse_args(argv)
    inv = build(args.src, args.version or _version_of(args.src))
    text = json.dumps(inv, indent=1) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        total = sum(len(m["names"]) for m in inv["modules"].values())
        print(f"{total} names in {len(inv['modules'])} modules -> {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
