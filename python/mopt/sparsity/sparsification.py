"""``mts.sparsify`` and ``mts.export`` (ModelOpt's ``modelopt.torch.sparsity.sparsification``).

``sparsify(model, mode, config)`` converts the layers the mode's rules select into sparse modules
(``module.py``) and searches their N:M masks:

* ``sparse_magnitude``: no data; each group keeps its largest |w| (``mopt._C.magnitude_mask``).
* ``wanda`` and ``sparsegpt``: the layers' inputs over ``forward_loop`` (or ``data_loader`` +
  ``collect_func``) feed C++ solvers (``mopt._C.WandaLayer`` / ``SparseGptLayer``, see
  include/mopt/sparsity/solvers.h). Decoder models (the decoder-layer lists GPTQ recognizes) run
  one decoder layer at a time, as the SparseGPT and Wanda references do: one pass records the
  first layer's inputs, then each layer's solvers see its inputs computed by the layers before it
  as already pruned, and only one layer's activations and Hessians are held. Other models, and
  layers outside the decoder layers, are solved from one pass over the whole model.

Every check (mode, pattern, rules, layer shapes) runs before the model changes; if anything
fails later (NaN activations, a Hessian that is not positive definite) the layers get their
weights and classes back and the error names the layer.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch import nn

from .. import _C
from ..opt.conversion import apply_mode, check_mode
from ..quantization.algorithms.decoder import (
    LayerRecorder,
    OnlyFirstLayerComputes,
    decoder_layers,
    hidden_out,
    run_layer,
)
from .config import SEARCH_DEFAULTS, resolve_rules, selected
from .module import (
    SparseModule,
    SparseModuleRegistry,
    conv_geometry,
    dense_weight,
    layout_of,
)

__all__ = ["SPARSITY_MODES", "export", "parse_pattern", "sparsify"]

logger = logging.getLogger(__name__)

SPARSITY_MODES = ("sparse_magnitude", "sparsegpt", "wanda")


def parse_pattern(pattern: str) -> tuple[int, int]:
    """(n, m) of "N:M sparsity"; ValueError naming a bad pattern."""
    if not isinstance(pattern, str):
        raise TypeError(f"mopt: the sparsity pattern must be a string like '2:4 sparsity', got "
                        f"{type(pattern).__name__}")
    return _C.sparsity_parse_pattern(pattern)


def _mode_and_rules(mode: Any) -> tuple[str, dict | None]:
    """ModelOpt's ModeLike: "name", ["name"], [("name", rules)], {"name": rules}."""
    if isinstance(mode, dict):
        if len(mode) != 1:
            raise ValueError(f"mopt: mts.sparsify takes one sparsity mode, got {list(mode)}")
        mode = [next(iter(mode.items()))]
    if isinstance(mode, (list, tuple)) and not (len(mode) == 2 and isinstance(mode[0], str)
                                                and isinstance(mode[1], (dict, type(None)))):
        if len(mode) != 1:
            raise ValueError(f"mopt: mts.sparsify takes one sparsity mode, got {list(mode)}")
        mode = mode[0]
    if isinstance(mode, str):
        name, rules = mode, None
    elif isinstance(mode, (list, tuple)) and len(mode) == 2:
        name, rules = mode
    else:
        raise TypeError(f"mopt: unknown sparsity mode {mode!r}: expected a name or (name, config)")
    if name not in SPARSITY_MODES:
        raise ValueError(f"mopt: unknown sparsity mode '{name}'; modes: "
                         f"{', '.join(SPARSITY_MODES)}")
    return name, rules


def _search_config(config: dict | None) -> dict:
    cfg = dict(SEARCH_DEFAULTS)
    if config is None:
        return cfg
    if not isinstance(config, dict):
        raise TypeError(f"mopt: the sparsify config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(SEARCH_DEFAULTS))
    if unknown:
        raise ValueError(f"mopt: unknown sparsify config keys {unknown}; known: "
                         f"{sorted(SEARCH_DEFAULTS)}")
    cfg.update(config)
    if cfg["forward_loop"] is not None and (cfg["data_loader"] is not None
                                            or cfg["collect_func"] is not None):
        raise ValueError("mopt: give either forward_loop or data_loader (+ collect_func), not both")
    if cfg["collect_func"] is not None and cfg["data_loader"] is None:
        raise ValueError("mopt: collect_func needs a data_loader")
    return cfg


def _call_model(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (list, tuple)):
        model(*batch)
    else:
        model(batch)


def _loader_loop(data_loader: Iterable, collect_func: Callable | None,
                 max_iter: int | None) -> Callable[[nn.Module], None]:
    """A forward_loop over `data_loader` (ModelOpt's run_forward_loop); RuntimeError when the
    loader yields nothing."""

    def forward_loop(model: nn.Module) -> None:
        n = 0
        for batch in data_loader:
            if max_iter is not None and n >= max_iter:
                break
            _call_model(model, collect_func(batch) if collect_func is not None else batch)
            n += 1
        if n == 0:
            raise RuntimeError("mopt: the sparsify data_loader yielded no batch, so there is no "
                               "calibration data")

    return forward_loop


def _targets(model: nn.Module, rules: dict, n: int, m: int, skip: bool) -> list[tuple[str, nn.Module]]:
    out = []
    for name, module in selected(model, rules):
        if isinstance(module, SparseModule):
            raise ValueError(f"mopt: layer '{name}' is sparsified already")
        weight = dense_weight(module)
        if weight.is_meta:
            raise NotImplementedError(f"mopt: layer '{name}' has its weight on the meta device")
        layout = layout_of(module)
        if not _C.sparsity_layer_supported(weight, layout, n, m):
            if skip:
                warnings.warn(f"mopt: layer '{name}' stays dense: its input dimension is not a "
                              f"multiple of {m} (skip_incompatible=True)", stacklevel=3)
                continue
            _C.sparsity_check_layer(weight, layout, n, m, name)  # raises, naming the layer
        out.append((name, module))
    if not out:
        raise ValueError("mopt: the sparsity rules select no layer of the model (rule types: "
                         f"{sorted(rules)})")
    return out


class _Rollback:
    """The layers' dense weights and classes, put back if sparsify fails."""

    def __init__(self) -> None:
        self.saved: list[tuple[nn.Module, torch.Tensor]] = []

    def convert(self, module: nn.Module) -> None:
        self.saved.append((module, dense_weight(module).detach().clone()))
        SparseModuleRegistry.convert(module)

    def undo(self) -> None:
        with torch.no_grad():
            for module, weight in self.saved:
                SparseModuleRegistry.unconvert(module)
                dense_weight(module).copy_(weight)
        self.saved.clear()


def _apply(module: nn.Module, mask: torch.Tensor, weight: torch.Tensor | None) -> None:
    if weight is not None:
        with torch.no_grad():
            dense_weight(module).copy_(weight)
    module.set_mask(mask)


def _magnitude(targets: list[tuple[str, nn.Module]], n: int, m: int) -> None:
    for name, module in targets:
        _apply(module, _C.magnitude_mask(dense_weight(module), layout_of(module), n, m, name), None)


def _solver(mode: str, name: str, module: nn.Module, n: int, m: int, cfg: dict):
    args = (dense_weight(module), layout_of(module), conv_geometry(module, name), n, m)
    if mode == "wanda":
        return _C.WandaLayer(*args, name=name)
    return _C.SparseGptLayer(*args, col_block_size=int(cfg["col_block_size"]),
                             hessian_damp=float(cfg["hessian_damp"]),
                             update_weights=bool(cfg["update_weights"]), name=name)


def _input_hook(solver) -> Callable:
    def hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("input", kwargs.get("x"))
        if isinstance(x, torch.Tensor):
            solver.collect(x)

    return hook


def _solve_group(solvers: dict[str, tuple[nn.Module, Any]], run: Callable[[], None],
                 stats: dict) -> None:
    """Feeds `solvers` the inputs of their layers while `run()` forwards data, then solves and
    applies each one."""
    handles = [module.register_forward_pre_hook(_input_hook(solver), with_kwargs=True)
               for module, solver in solvers.values()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    for name, (module, solver) in solvers.items():
        solver.finish()
        if solver.num_tokens == 0:
            warnings.warn(f"mopt: layer '{name}' was not reached by the calibration data; its "
                          "mask is chosen by magnitude instead", stacklevel=4)
            _magnitude([(name, module)], *stats["nm"])
            stats["unreached"] += 1
            continue
        update = solver.solve()
        _apply(module, update.mask, update.weight)
        stats["solved"] += 1


def _layerwise(model: nn.Module, forward_loop: Callable, mode: str, found: tuple,
               solvers: dict[str, tuple[nn.Module, Any]], stats: dict) -> bool:
    """Decoder layer by decoder layer; False (nothing changed) when the layers cannot be
    replayed one after the other."""
    layers_name, layers = found
    with LayerRecorder(layers) as rec, OnlyFirstLayerComputes(layers), torch.no_grad():
        forward_loop(model)
    if not rec.calls:
        raise RuntimeError(f"mopt: {mode}: forward_loop(model) never ran the first decoder layer "
                           f"'{layers_name}.0', so there is no calibration data")
    orders = {tuple(c["order"]) for c in rec.calls}
    n_reached = len(next(iter(orders)))
    if not rec.chained or len(orders) != 1 or next(iter(orders)) != tuple(range(n_reached)):
        warnings.warn(f"mopt: {mode}: the decoder layers in '{layers_name}' are not called one "
                      "after the other on each other's outputs; solving every layer from one "
                      "pass over the model instead", stacklevel=3)
        return False
    hidden = [c["hidden"] for c in rec.calls]
    prefixes = [f"{layers_name}.{i}." for i in range(len(layers))]
    for idx, layer in enumerate(layers):
        inside = {n: s for n, s in solvers.items() if n.startswith(prefixes[idx])}

        def run(idx: int = idx, layer: nn.Module = layer) -> None:
            if idx < n_reached:
                for c, call in enumerate(rec.calls):
                    run_layer(layer, hidden[c], call["args"][idx])

        if inside:
            _solve_group(inside, run, stats)
            stats["layerwise"] += len(inside)
        if idx + 1 < n_reached:
            with torch.no_grad():
                for c, call in enumerate(rec.calls):
                    hidden[c] = hidden_out(run_layer(layer, hidden[c], call["args"][idx])).detach()
    hidden.clear()
    rec.calls.clear()
    outside = {n: s for n, s in solvers.items() if not any(n.startswith(p) for p in prefixes)}
    if outside:
        _solve_group(outside, lambda: forward_loop(model), stats)
    return True


def sparsify(model: nn.Module, mode: Any, config: dict | None = None) -> nn.Module:
    """Sparsifies `model` in place with `mode` ("sparse_magnitude", "sparsegpt", "wanda", or
    ModelOpt's ``[(mode, rules)]`` forms) and returns it; `config` is the search config
    (``pattern``, ``forward_loop`` or ``data_loader`` + ``collect_func``, SparseGPT's
    ``col_block_size`` / ``hessian_damp``, ours ``update_weights`` and ``skip_incompatible``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"mopt: sparsify needs an nn.Module, got {type(model).__name__}")
    name, rule_config = _mode_and_rules(mode)
    cfg = _search_config(config)
    n, m = parse_pattern(cfg["pattern"])
    check_mode(model, name)
    rules = resolve_rules(rule_config)
    targets = _targets(model, rules, n, m, bool(cfg["skip_incompatible"]))
    forward_loop = cfg["forward_loop"]
    if cfg["data_loader"] is not None:
        forward_loop = _loader_loop(cfg["data_loader"], cfg["collect_func"],
                                    cfg["max_iter_data_loader"])
    if name != "sparse_magnitude":
        if forward_loop is None:
            raise ValueError(f"mopt: {name} needs calibration data: give forward_loop or "
                             "data_loader in the config")
        for tname, module in targets:
            conv_geometry(module, tname)  # unsupported convolutions raise before any change
    start = time.perf_counter()
    rollback = _Rollback()
    stats = {"solved": 0, "layerwise": 0, "unreached": 0, "nm": (n, m)}
    was_training = model.training
    model.eval()  # calibration passes run as inference (dropout off), as mtq.calibrate does
    try:
        for _, module in targets:
            rollback.convert(module)
        if name == "sparse_magnitude":
            _magnitude(targets, n, m)
        else:
            solvers = {tname: (module, _solver(name, tname, module, n, m, cfg))
                       for tname, module in targets}
            found = decoder_layers(model) if cfg["layerwise"] is not False else None
            if cfg["layerwise"] is True and found is None:
                raise ValueError(f"mopt: {name} layerwise=True: the model has no decoder layer "
                                 "list")
            done = found is not None and _layerwise(model, forward_loop, name, found, solvers,
                                                    stats)
            if not done:
                _solve_group(solvers, lambda: forward_loop(model), stats)
        apply_mode(model, name, {"rules": rules, "pattern": f"{n}:{m} sparsity"},
                   {"sparse_modules": [t for t, _ in targets], "pattern": f"{n}:{m} sparsity"})
    except BaseException:
        rollback.undo()
        raise
    finally:
        model.train(was_training)
    logger.info("%s: %d layers sparsified to %d:%d in %.1fs%s", name, len(targets), n, m,
                time.perf_counter() - start,
                " (one decoder layer at a time)" if stats["layerwise"] else "")
    return model


def export(model: nn.Module) -> nn.Module:
    """Folds the masks into the weights and turns the sparse layers back into plain modules
    (ModelOpt's ``mts.export``); the pattern is no longer enforced after this."""
    check_mode(model, "export_sparse")
    for module in model.modules():
        if isinstance(module, SparseModule):
            module._fold_mask()
    apply_mode(model, "export_sparse", {}, {})
    return model
