"""Sparsifying a language model with several methods, one table (``mopt sparsify``).

``run_sparsify(model="default", modes="magnitude,wanda,sparsegpt", pattern="2:4", ...)`` loads the
model once (as ``mopt ptq`` does: ``resolve_model``), evaluates the dense perplexity, then for
each mode sparsifies a fresh copy with ``mopt.sparsity.sparsify`` (Wanda and SparseGPT calibrate
on text disjoint from the evaluation text) and reports perplexity, its change against dense, the
measured sparsity of the sparsified layers and the seconds the step took. With ``quantize`` (a
``mopt ptq`` config short name such as ``fp8``) each sparsified model is then quantized in place
with ``mtq.quantize`` and evaluated again (rows ``<mode>+<config>``), after a quantization-only
row on the dense model (``<config>``) for reference.

Modes (``SPARSIFY_MODES``): ``magnitude`` (``"sparse_magnitude"``), ``wanda``, ``sparsegpt`` and
``sparsegpt_mask_only`` (SparseGPT's mask with the weights left as they were,
``update_weights=False``). Every ``nn.Linear`` except ``lm_head`` is a candidate, as in
ModelOpt's default rules.

results.json has ptq's schema (``metric``, ``setup``, a definition of the extra column, ``date``,
``machine``, ``rows`` of ``SparsifyResult``); the plot is ``sparsify_plot.png``. The output
folder, the table writing and the argument checks are ptq's (``report.output_folder``,
``report.write_outputs``, ``run._check_*``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import io
import logging
import math
import os
import pathlib
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

from torch import nn

from .configs import PtqConfig, config_availability, resolve_configs
from .report import (
    RESULTS_JSON,
    format_number,
    machine_description,
    output_folder,
    pyplot,
    write_outputs,
)
from .run import (_check_device, _check_run_numbers, _cpu_threads, _first_line,
                  _quantize_timed, prepare_llm_run)

__all__ = [
    "DEFAULT_MODES",
    "SPARSIFY_MODES",
    "SparsifyMode",
    "SparsifyResult",
    "format_sparsify_table",
    "parse_pattern",
    "plot_sparsify",
    "resolve_modes",
    "run_sparsify",
    "sparsity_of",
]

logger = logging.getLogger(__name__)

PLOT_PNG = "sparsify_plot.png"
OUTPUT_FILES = (RESULTS_JSON, PLOT_PNG)

# ModelOpt's default rules: every linear layer except the output projection (tied to the token
# embedding in many small LMs, and the layer sparsity hurts most).
_RULES = {"nn.Linear": {"*": {}, "*lm_head*": None}}


@dataclass(frozen=True)
class SparsifyMode:
    """A row of the table: an mts mode with its extra config."""

    name: str
    mts_mode: str
    description: str
    needs_calibration: bool
    extra_config: tuple = ()  # (key, value) pairs added to the sparsify config

    def config(self, pattern: str, forward_loop) -> dict:
        cfg = {"pattern": pattern, **dict(self.extra_config)}
        if self.needs_calibration:
            cfg["forward_loop"] = forward_loop
        return cfg


SPARSIFY_MODES: dict[str, SparsifyMode] = {
    m.name: m
    for m in (
        SparsifyMode("magnitude", "sparse_magnitude", "keep the largest |w| of each group", False),
        SparsifyMode("wanda", "wanda", "keep the largest |w| x input norm (Wanda)", True),
        SparsifyMode(
            "sparsegpt", "sparsegpt", "SparseGPT: Hessian-based mask and weight update", True
        ),
        SparsifyMode(
            "sparsegpt_mask_only",
            "sparsegpt",
            "SparseGPT's mask, weights not updated",
            True,
            (("update_weights", False),),
        ),
    )
}
DEFAULT_MODES = ("magnitude", "wanda", "sparsegpt")


def parse_pattern(pattern: str) -> tuple[int, int]:
    """(N, M) of "N:M" or "N:M sparsity" (keep N nonzeros in every M consecutive weights along
    the input dimension), checked by ``mopt.sparsity.parse_pattern``; ValueError otherwise."""
    from .. import sparsity as mts

    try:
        return mts.parse_pattern(pattern)
    except (ValueError, TypeError) as e:
        raise ValueError(str(e).removeprefix("mopt: ")) from None


def resolve_modes(spec: str | Sequence[str] | None) -> list[SparsifyMode]:
    """The modes named by `spec` (comma-separated or a list; None: DEFAULT_MODES), in the given
    order without repeats. ValueError naming unknown ones."""
    if spec is None:
        spec = DEFAULT_MODES
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    if not names:
        raise ValueError("no mode given; use e.g. --modes magnitude,sparsegpt")
    unknown = [n for n in names if n not in SPARSIFY_MODES]
    if unknown:
        raise ValueError(
            f"unknown mode name(s) {unknown}; known modes: {', '.join(SPARSIFY_MODES)}"
        )
    return [SPARSIFY_MODES[n] for n in dict.fromkeys(names)]


def _resolve_quantize(name: str | None) -> PtqConfig | None:
    if name is None:
        return None
    names = [n.strip() for n in name.split(",") if n.strip()]
    if len(names) != 1:
        raise ValueError(
            f"quantize takes one config short name (e.g. fp8; see mopt ptq --list-configs), got "
            f"{name!r}"
        )
    [entry] = resolve_configs(names)
    return entry


@dataclass
class SparsifyResult:
    """One row of the table."""

    config: str  # "dense", a mode, the quantize config, or "<mode>+<config>"
    status: str  # "dense", "ok", "not available", "failed"
    description: str = ""
    reason: str = ""
    metric: float | None = None  # perplexity
    change_pct: float | None = None  # against dense
    sparsity: float | None = None  # zero weights / weights of the sparsified layers
    sparse_layers: int | None = None
    sparse_weights: int | None = None  # weights in the sparsified layers
    seconds: float | None = None  # sparsify_seconds + quantize_seconds
    sparsify_seconds: float | None = None
    quantize_seconds: float | None = None
    eval_seconds: float | None = None
    warnings: str = ""


SPARSITY_DEFINITION = (
    "zero weights / all weights, over the layers mopt.sparsity.is_sparse reports as sparsified "
    "(their masked module.weight); the dense row counts every nn.Linear but lm_head"
)


def sparsity_of(model: nn.Module) -> tuple[float | None, int, int]:
    """(fraction of zeros, layers, weights) over the sparsified layers of `model` (their masked
    ``module.weight``); the fraction is None when no layer is sparsified."""
    from .. import sparsity as mts

    return _zeros([m.weight for m in model.modules() if mts.is_sparse(m)])


def _dense_sparsity(model: nn.Module) -> tuple[float | None, int, int]:
    """The same count over the candidate layers of the dense model (every nn.Linear but
    lm_head): how sparse its weights already are."""
    return _zeros(
        [m.weight for n, m in model.named_modules() if type(m) is nn.Linear and "lm_head" not in n]
    )


def _zeros(weights: list) -> tuple[float | None, int, int]:
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    return (zeros / total if total else None), len(weights), total


def _record_warnings(res: SparsifyResult, caught: list) -> None:
    caught = [w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))]
    if caught:
        note = f"{len(caught)} warning(s), first: {_first_line(caught[0].message)}"
        res.warnings = f"{res.warnings}; {note}" if res.warnings else note


def _fail(res: SparsifyResult, e: BaseException) -> None:
    if isinstance(e, (NotImplementedError, ImportError)):  # not in this build
        res.status, res.reason = "not available", _first_line(e)
    else:
        res.status, res.reason = "failed", f"{type(e).__name__}: {_first_line(e)}"
        logger.exception("%s failed:", res.config)


def _sparsify_step(
    mode: SparsifyMode, pattern: str, base: nn.Module, forward_loop, evaluate
) -> tuple[SparsifyResult, nn.Module | None]:
    """Sparsifies a fresh copy of `base` with `mode`, measures and evaluates it; returns the row
    and the sparsified model (None when the step failed)."""
    from .. import sparsity as mts

    res = SparsifyResult(mode.name, "ok", mode.description)
    model = copy.deepcopy(base)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # per-layer progress is noise here
                model = mts.sparsify(
                    model,
                    [(mode.mts_mode, copy.deepcopy(_RULES))],
                    config={
                        **mode.config(pattern, forward_loop),
                        "skip_incompatible": True,  # reported: the row's layer count and warning
                    },
                )
            res.sparsify_seconds = res.seconds = time.perf_counter() - t0
            res.sparsity, res.sparse_layers, res.sparse_weights = sparsity_of(model)
            t0 = time.perf_counter()
            res.metric = evaluate(model)
            res.eval_seconds = time.perf_counter() - t0
        _record_warnings(res, caught)
    except Exception as e:  # noqa: BLE001 - one mode's failure must not lose the others
        _fail(res, e)
        return res, None
    if not res.sparse_layers:
        res.warnings = "no layer was sparsified" + (f"; {res.warnings}" if res.warnings else "")
    return res, model


def _quantize_step(
    name: str, entry: PtqConfig, model: nn.Module, forward_loop, evaluate, before: SparsifyResult
) -> SparsifyResult:
    """Quantizes `model` in place with `entry` and evaluates it; `before` is the row of the step
    that produced `model` (its time and sparsity carry over)."""
    res = SparsifyResult(name, "ok", f"{before.description} + {entry.description}".strip(" +"))
    reason = config_availability(entry)
    if reason is not None:
        res.status, res.reason = "not available", reason
        return res
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res.quantize_seconds = _quantize_timed(model, entry.build(), forward_loop)
            _check_sparse_layers_quantized(model)
            res.sparsify_seconds = before.sparsify_seconds
            res.seconds = (before.sparsify_seconds or 0.0) + res.quantize_seconds
            if before.status == "ok":
                res.sparsity, res.sparse_layers, res.sparse_weights = sparsity_of(model)
            else:
                res.sparsity, res.sparse_layers, res.sparse_weights = (
                    before.sparsity,
                    before.sparse_layers,
                    before.sparse_weights,
                )
            t0 = time.perf_counter()
            res.metric = evaluate(model)
            res.eval_seconds = time.perf_counter() - t0
        _record_warnings(res, caught)
    except Exception as e:  # noqa: BLE001
        _fail(res, e)
    return res


def _check_sparse_layers_quantized(model: nn.Module) -> None:
    """RuntimeError when mtq.quantize skipped a sparsified layer: the row would otherwise show a
    sparse model with quantized leftovers as "sparse + quantized"."""
    from .. import sparsity as mts
    from ..quantization.nn.modules.quant_module import QuantModule

    skipped = [
        name
        for name, module in model.named_modules()
        if mts.is_sparse(module) and not isinstance(module, QuantModule)
    ]
    if skipped:
        raise RuntimeError(
            f"mtq.quantize left {len(skipped)} sparsified layer(s) unquantized (first: "
            f"{skipped[0]}, {type(model.get_submodule(skipped[0])).__name__})"
        )


def run_sparsify(
    model: str = "default",
    modes: str | Sequence[str] | None = None,
    pattern: str = "2:4",
    quantize: str | None = None,
    calib_text: str | os.PathLike | None = None,
    eval_text: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    tokenizer: str | None = None,
    seq_len: int | None = None,
    calib_samples: int = 16,
    calib_seq_len: int | None = None,
    calib_batch_size: int = 4,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = logger.info,
    plot: bool = True,
    device: str = "cpu",
    threads: int | str | None = "auto",
    overwrite: bool = False,
) -> dict:
    """Sparsifies `model` with each mode and returns the results dict (also written to
    ``out_dir/results.json`` with a plot ``out_dir/sparsify_plot.png`` when `out_dir` is given).

    `model`, the texts, `seq_len`, the calibration sizes, `seed`, `device`, `threads`, `out_dir`
    and `overwrite` mean what they mean for ``mopt.ptq.run_ptq`` (an LLM only; no ``minilm``).
    `modes`: comma-separated names from SPARSIFY_MODES (None: magnitude, wanda, sparsegpt);
    `pattern`: "N:M" (N nonzeros kept in each M consecutive input weights; layers whose input
    dimension is not a multiple of M stay dense, with a warning in the row); `quantize`: one ptq
    config short name applied after each mode. Every argument is checked before the model is
    loaded; a bad one raises ValueError / FileNotFoundError naming it, and nothing is written.
    `log` receives each progress line and the table (default: INFO on the
    ``mopt.ptq.sparsify`` logger; None: silent).
    """
    log = log or (lambda s: None)
    device = _check_device(device)
    entries = resolve_modes(modes)
    n, m = parse_pattern(pattern)
    quant = _resolve_quantize(quantize)
    _check_run_numbers(
        [("calib_samples", calib_samples), ("batch_size", batch_size),
         ("calib_batch_size", calib_batch_size)],
        seq_len, calib_seq_len, seed, threads)
    if model == "minilm":
        raise ValueError("mopt sparsify evaluates a causal LM; 'minilm' is a ptq-only model")
    from ..eval import perplexity

    with output_folder(out_dir, overwrite, OUTPUT_FILES) as out:
        run = prepare_llm_run(model, tokenizer, calib_text, eval_text, seq_len, calib_samples,
                              calib_seq_len, seed, calib_batch_size)
        source, eval_ids, seq_len = run.source, run.eval_ids, run.seq_len
        calib_seq_len, forward_loop = run.calib_seq_len, run.forward_loop
        base = source.load().to(device)

        def evaluate(mdl: nn.Module) -> float:
            return perplexity(mdl, eval_ids, seq_len, batch_size=batch_size, progress=progress)

        log(
            f"model: {source.description}; pattern {n}:{m}; eval {len(eval_ids)} tokens "
            f"(seq_len {seq_len}); calibration {calib_samples} x {calib_seq_len} tokens"
        )
        setup = {
            **run.setup,
            "pattern": f"{n}:{m}",
            "modes": [e.name for e in entries],
            "quantize": quant.name if quant else None,
            "layers": "every nn.Linear except lm_head",
        }
        with _cpu_threads(threads, base, device):
            rows = _run_rows(entries, f"{n}:{m} sparsity", quant, base, forward_loop, evaluate, log)
        results = {
            "metric": "perplexity",
            "setup": setup,
            "sparsity_definition": SPARSITY_DEFINITION,
            "date": datetime.date.today().isoformat(),
            "machine": machine_description(),
            "rows": [dataclasses.asdict(r) for r in rows],
        }
        write_outputs(
            results,
            format_sparsify_table(rows),
            out,
            PLOT_PNG,
            (lambda path: plot_sparsify(rows, path)) if plot else None,
            log,
        )
        return results


def _run_rows(entries, pattern, quant, base, forward_loop, evaluate, log) -> list[SparsifyResult]:
    """The dense row, the quantization-only row (with `quant`), then each mode (and its
    `+quant` row), each mode on a fresh copy of `base`."""
    t0 = time.perf_counter()
    dense = SparsifyResult("dense", "dense", "no sparsity", change_pct=0.0)
    dense.metric = evaluate(base)
    dense.eval_seconds = time.perf_counter() - t0
    dense.sparsity, dense.sparse_layers, dense.sparse_weights = _dense_sparsity(base)
    rows = [dense]
    suffix = f"+{quant.name}" if quant is not None else ""
    width = max([20] + [len(e.name + suffix) for e in entries])

    def add(res: SparsifyResult) -> None:
        if res.metric is not None:
            res.change_pct = 100.0 * (res.metric / dense.metric - 1.0)
        rows.append(res)
        log(row_line(res, width))
        if res.warnings:
            log(f"  {'':{width}} ({res.warnings})")

    log(row_line(dense, width))
    if quant is not None:
        add(_quantize_step(quant.name, quant, copy.deepcopy(base), forward_loop, evaluate, dense))
    for mode in entries:
        res, model = _sparsify_step(mode, pattern, base, forward_loop, evaluate)
        add(res)
        if quant is None:
            continue
        name = f"{mode.name}+{quant.name}"
        if model is None:
            add(SparsifyResult(name, res.status, reason=f"{mode.name} did not run"))
            continue
        add(_quantize_step(name, quant, model, forward_loop, evaluate, res))
        del model
    return rows


def row_line(r: SparsifyResult, width: int = 20) -> str:
    """One progress line for a finished row (the name padded to `width`)."""
    if r.status not in ("ok", "dense"):
        return f"  {r.config:{width}} {r.status}: {r.reason}"
    return (
        f"  {r.config:{width}} perplexity {format_number(r.metric, '.4f')} "
        f"({format_number(r.change_pct, '+.2f')}%)  sparsity {_sparsity_cell(r)}  "
        f"time {format_number(r.seconds, '.1f')} s"
    )


def _sparsity_cell(r: SparsifyResult) -> str:
    if not r.sparse_layers:
        return "-"
    return f"{format_number(r.sparsity, '.4f')} ({r.sparse_layers} layers)"


def format_sparsify_table(rows: list[SparsifyResult]) -> str:
    """The results table (markdown), then the rows that did not run and why."""
    lines = [
        "| config | perplexity | change vs dense | sparsity of sparsified layers | time s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.status not in ("ok", "dense"):
            continue
        lines.append(
            f"| {r.config} | {format_number(r.metric, '.4f')} | "
            f"{format_number(r.change_pct, '+.2f')}% | {_sparsity_cell(r)} | "
            f"{format_number(r.seconds, '.2f')} |"
        )
    others = [r for r in rows if r.status not in ("ok", "dense")]
    if others:
        lines.append("")
        for r in others:
            lines.append(f"- {r.config}: {r.status}: {r.reason}")
    return "\n".join(lines)


def plot_sparsify(rows: list[SparsifyResult], path: str | os.PathLike):
    """PNG of the perplexity change against dense, one bar per row that ran, labelled with the
    measured sparsity. Returns the path, or None (with a warning logged) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    pts = [
        r
        for r in rows
        if r.status in ("ok", "dense") and r.metric is not None and math.isfinite(r.metric)
    ]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(pts) + 1.8), dpi=120)
    ys = list(range(len(pts)))[::-1]
    colors = [
        "black"
        if r.status == "dense"
        else ("tab:orange" if r.quantize_seconds is not None else "tab:blue")
        for r in pts
    ]
    ax.barh(ys, [r.change_pct for r in pts], color=colors, alpha=0.85)
    ax.set_yticks(ys, [r.config for r in pts])
    for y, r in zip(ys, pts):
        label = f" ppl {r.metric:.3f}" + (f", {r.sparsity:.1%} zeros" if r.sparse_layers else "")
        ax.text(max(r.change_pct, 0.0), y, label, va="center", fontsize=8)
    ax.axvline(0, color="gray", linewidth=0.8)
    # 2:4 sparsity of a small model moves perplexity by 10-1000x what quantization does.
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("perplexity change vs dense (%), symlog")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_xlim(left=min([0.0] + [r.change_pct for r in pts]))
    ax.set_xlim(right=max([10.0] + [r.change_pct for r in pts]) * 8)
    ax.set_title("mopt sparsify: quality of each method")
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
