"""Caching a diffusion model's denoiser to a fidelity budget, one table (``mopt cache``).

``run_cache(model="default", budget_psnr=33.0, quantize=None, samples=16, ...)`` loads a shipped
or given DDPM (``models.load_ddpm``: the Fashion-MNIST U-Net by default, or either checkpoint
format, told apart by its keys), samples the evaluation seeds uncached, then for each row:

* ``uncached``: the reference every other row is compared with (PSNR / SSIM against it).
* ``step:<policy>``: ``mtc.calibrate`` on the calibration seeds finds the cache policy of whole
  denoiser calls with the fewest recomputes whose samples stay within the budget on every
  calibration seed (uniform intervals or profile-placed schedules, reuse or Taylor forecasts of
  order 1-2); measured on the evaluation seeds, which calibration never saw.
* ``step:<same schedule>+reuse``: the winner's recompute steps with plain reuse of the last
  prediction (order 0, the prediction itself) instead of its forecast: the baseline at equal
  denoiser calls.
* ``block[<name>]:<policy>`` (U-Net only, ``block``): the same search for caching one block (by
  default the U-Net's deep path ``inner``, as DeepCache: the shallow high-resolution layers
  compute at every step).
* with ``quantize`` (a ``mopt ptq`` config short name, e.g. ``int8`` or ``fp8``): the denoiser
  quantized with ``mtq.quantize`` (calibrated over every timestep of a sampling run of the first
  calibration seed; with ``quant_percentile`` P by ``step_percentile``: each activation amax is
  the P-th percentile over the steps of the per-step max, or mean with ``quant_collect="mean"``), uncached (row ``<config>``) and with the step-level cache calibrated on the
  quantized model (row ``<config>+step:<policy>``); both compared with the float uncached samples.

Columns: ``denoiser_calls`` (per sampling run, in whole-denoiser equivalents by FLOPs),
``flops_ratio`` (uncached FLOPs / cached FLOPs), ``wall_speedup`` (uncached sampling time of the
evaluation set / this row's), ``psnr_db`` (all evaluation samples at once, R from the uncached
batch), ``psnr_min_db`` (the worst sample), ``ssim`` (mean), ``fidelity`` (Frechet distance of
classifier features against real test images, ``metrics.fidelity_score``; lower is closer),
``calib_psnr_db`` (worst calibration seed) and ``calib_seconds``. results.json follows ``mopt
ptq``'s schema (``metric`` "psnr_db", ``setup``, ``rows`` with ``config`` and ``metric``); the
plot ``cache_samples.png`` is a grid of the first evaluation samples of every row.
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
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..ptq.report import (
    RESULTS_JSON,
    format_number,
    machine_description,
    output_folder,
    pyplot,
    write_outputs,
)
from ..ptq.run import _cpu_threads
from . import cachify, metrics, models
from .calibrate import calibrate

__all__ = ["CacheResult", "run_cache", "format_cache_table", "plot_samples", "policy_name"]

logger = logging.getLogger(__name__)

PLOT_PNG = "cache_samples.png"
OUTPUT_FILES = (RESULTS_JSON, PLOT_PNG)
EVAL_SEED_BASE = 1000  # evaluation batches use seeds 1000, 1001, ...; calibration 0, 1, ...
SAMPLES_PER_SEED = 8
# The block DeepCache-style caching reuses per model kind: the U-Net's deep path (63% of its
# FLOPs); the plain CNN has no skip path to keep computing.
DEFAULT_BLOCK = {"fashion": "inner", "mnist": None}


@dataclass
class CacheResult:
    """One row of the table."""

    config: str
    status: str  # "reference", "ok", "failed"
    description: str = ""
    reason: str = ""
    metric: float | None = None  # psnr_db against the uncached samples
    denoiser_calls: float | None = None
    flops_ratio: float | None = None
    wall_speedup: float | None = None
    psnr_db: float | None = None
    psnr_min_db: float | None = None
    ssim: float | None = None
    fidelity: float | None = None
    calib_psnr_db: float | None = None
    calib_seconds: float | None = None
    sample_seconds: float | None = None
    policy: dict | None = None
    forecast_space: str | None = None
    warnings: str = ""


def policy_name(policy: dict, space: str = "output") -> str:
    """A short name of a cache policy: ``every<k>`` / ``schedule<r>``, ``+taylor<o>`` or
    ``+reuse``, and ``@x0`` when it keeps the denoised-sample estimate (forecast_space
    "sample")."""
    if "recompute_steps" in policy:
        base = f"schedule{len(policy['recompute_steps'])}"
    elif policy.get("decision") == "adaptive":
        base = f"adaptive{policy.get('threshold')}"
    else:
        base = f"every{policy.get('interval', 1)}"
    order = policy.get("order", 0)
    return base + (f"+taylor{order}" if order else "+reuse") + ("@x0" if space == "sample" else "")


def _check_args(budget_psnr, samples, calib_seeds, steps, threads, orders, families,
                spaces) -> None:
    if not spaces or any(sp not in ("output", "sample") for sp in spaces):
        raise ValueError(f"--spaces must be some of output, sample, got {list(spaces)!r}")
    if not orders or any(isinstance(o, bool) or o not in (0, 1, 2) for o in orders):
        raise ValueError(f"--orders must be some of 0, 1, 2, got {list(orders)!r}")
    if not families or any(f not in ("interval", "profile") for f in families):
        raise ValueError(f"--families must be some of interval, profile, got {list(families)!r}")
    if isinstance(budget_psnr, bool) or not isinstance(budget_psnr, (int, float)) or not (
        math.isfinite(budget_psnr) and budget_psnr > 0
    ):
        raise ValueError(f"--budget-psnr must be a positive number of dB, got {budget_psnr!r}")
    for name, v, lo in (("--samples", samples, 2), ("--calib-seeds", calib_seeds, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 2):
        raise ValueError(f"--steps must be an integer >= 2, got {steps!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"--threads must be a positive integer, got {threads!r}")


def _resolve_quantize(quantize: str | None):
    if quantize is None:
        return None
    from ..ptq.configs import config_availability, resolve_configs

    entries = resolve_configs(quantize)
    if len(entries) != 1:
        raise ValueError(f"--quantize takes one mopt ptq config, got {quantize!r}")
    reason = config_availability(entries[0])
    if reason is not None:
        raise ValueError(f"--quantize {entries[0].name} is not available: {reason}")
    return entries[0]


class _Progress:
    """A tqdm bar (stderr) counting sampling runs, or nothing."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(desc="mopt cache", unit=" sampling runs", leave=False)

    def clear(self) -> None:
        if self.bar is not None:
            self.bar.clear()

    def step(self, what: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _sampler(steps: int | None, per_seed: int, progress: _Progress, row: list[str]):
    def sample(pipe, seed: int) -> torch.Tensor:
        out = pipe(per_seed, seed=seed, num_inference_steps=steps)
        progress.step(row[0])
        return out

    return sample


def _eval_batches(samples: int) -> list[tuple[int, int]]:
    """(seed, samples) of each evaluation batch."""
    out, left, i = [], samples, 0
    while left > 0:
        n = min(SAMPLES_PER_SEED, left)
        out.append((EVAL_SEED_BASE + i, n))
        left, i = left - n, i + 1
    return out


def _sample_eval(pipe, batches, steps) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    with torch.no_grad():
        out = [pipe(n, seed=seed, num_inference_steps=steps) for seed, n in batches]
    return torch.cat(out), time.perf_counter() - t0


def _cost_ratio(pipe, flops: dict[str, int]) -> tuple[float, float]:
    """(FLOPs of the last run / uncached FLOPs, recomputes per run in whole-call equivalents)
    from the cached blocks' counters."""
    total = flops[""]
    stats = cachify.stats(pipe)
    saved = 0.0
    calls = 0
    for name, s in stats.items():
        block = total if name == "<denoiser>" else flops.get(name, 0)
        saved += block * s["reuses"]
        calls = max(calls, s["calls"])
    used = total * calls - saved
    return used / (total * calls), calls * used / (total * calls)


def _measure(res: CacheResult, pipe, reference, batches, steps, uncached_seconds, flops, kind):
    """Samples the evaluation batches with `pipe` as it is set up and fills the row's columns."""
    out, seconds = _sample_eval(pipe, batches, steps)
    res.sample_seconds = seconds
    res.wall_speedup = uncached_seconds / seconds
    if cachify.cached_blocks(pipe):
        # the counters describe the last batch; every batch makes the same decisions per step
        fraction, calls = _cost_ratio(pipe, flops)
        res.flops_ratio, res.denoiser_calls = 1.0 / fraction, calls
    else:
        res.flops_ratio, res.denoiser_calls = 1.0, float(len(pipe.timesteps))
    res.psnr_db = res.metric = metrics.psnr_db(out, reference)
    res.psnr_min_db = float(metrics.psnr_db_per_sample(out, reference).min())
    res.ssim = metrics.ssim(out, reference)
    res.fidelity = metrics.fidelity_score(out, kind)
    return out


def run_cache(
    model: str = "default",
    budget_psnr: float = 33.0,
    quantize: str | None = None,
    quant_percentile: float | None = None,
    quant_collect: str = "max",
    samples: int = 16,
    calib_seeds: int = 3,
    block: str | None = "default",
    steps: int | None = None,
    orders: Sequence[int] = (0, 1, 2),
    families: Sequence[str] = ("interval", "profile"),
    spaces: Sequence[str] = ("output", "sample"),
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    plot: bool = True,
    progress: bool = True,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Runs the rows described in the module docstring and returns the results dict (written to
    `out_dir`/results.json with the sample grid). Bad input raises ValueError (or
    FileNotFoundError) before anything is loaded or written."""
    log = log or logger.info
    _check_args(budget_psnr, samples, calib_seeds, steps, threads, orders, families, spaces)
    quant = _resolve_quantize(quantize)
    if quant_percentile is not None and (
            isinstance(quant_percentile, bool) or not isinstance(quant_percentile, (int, float))
            or not 0.0 <= quant_percentile <= 100.0):
        raise ValueError(f"--quant-percentile must be a number in [0, 100], got "
                         f"{quant_percentile!r}")
    if quant_collect not in ("max", "mean"):
        raise ValueError(f"--quant-collect must be 'max' or 'mean', got {quant_collect!r}")
    if quant_percentile is not None and quant is None:
        raise ValueError("--quant-percentile needs --quantize")
    shipped = {"default": "fashion", "fashion": "fashion", "mnist": "mnist"}
    path = None if model in shipped else pathlib.Path(model)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"--model {model!r}: no such checkpoint file")
    # threads: a number or None (torch's choice); never "auto", so no model is needed
    with output_folder(out_dir, overwrite, OUTPUT_FILES) as out, \
            _cpu_threads(threads, None, None), contextlib.ExitStack() as stack:
        pipe = models.load_ddpm(path, kind=shipped.get(model))
        kind = pipe.kind
        block_name = DEFAULT_BLOCK.get(kind) if block == "default" else block
        if block_name is not None and block_name not in dict(pipe.denoiser.named_modules()):
            raise ValueError(f"--block {block_name!r} names no submodule of the {kind} "
                             f"denoiser ({type(pipe.denoiser).__name__})")
        pipe.set_timesteps(steps)
        num_steps = len(pipe.timesteps)
        flops = models.flops_by_module(pipe.denoiser, *pipe.example_inputs(1))
        batches = _eval_batches(samples)
        seeds = tuple(range(calib_seeds))
        qcfg = None if quant is None else _quant_config(quant, quant_percentile, quant_collect,
                                                        num_steps)
        row_now = ["uncached"]
        bar = _Progress(progress)
        stack.callback(bar.close)
        sample_fn = _sampler(steps, SAMPLES_PER_SEED, bar, row_now)
        setup = {
            "model": model,
            "model_description": repr(pipe),
            "kind": kind,
            "num_steps": num_steps,
            "budget_psnr_db": float(budget_psnr),
            "calib_seeds": list(seeds),
            "calib_samples_per_seed": SAMPLES_PER_SEED,
            "eval_seeds": [s for s, _ in batches],
            "eval_samples": samples,
            "block": block_name,
            "quantize": quant.name if quant else None,
            "quant_algorithm": None if qcfg is None else qcfg["algorithm"],
            "orders": list(orders),
            "families": list(families),
            "spaces": list(spaces),
            "flops_per_call": flops[""],
            "psnr_definition": "10 log10(R^2 / MSE), R = max - min of the uncached samples, "
            "MSE over all pixels of the evaluation samples",
            "threads": torch.get_num_threads(),
        }
        log(f"model: {pipe!r}; {num_steps} steps; budget {budget_psnr} dB; calibration seeds "
            f"{list(seeds)} x {SAMPLES_PER_SEED} samples; evaluation {samples} samples (seeds "
            f"{batches[0][0]}..{batches[-1][0]})")
        with torch.no_grad():  # warm-up, so the uncached timing pays no first-call costs
            pipe(SAMPLES_PER_SEED, seed=0, num_inference_steps=min(num_steps, 10))
        reference, uncached_s = _sample_eval(pipe, batches, steps)
        ref_row = CacheResult("uncached", "reference", "every denoiser call computed",
                              denoiser_calls=float(num_steps), flops_ratio=1.0, wall_speedup=1.0,
                              sample_seconds=uncached_s, ssim=1.0,
                              fidelity=metrics.fidelity_score(reference, kind))
        rows = [ref_row]
        grids = [("uncached", reference)]
        width = 34
        bar.clear()
        log(_row_line(ref_row, width))

        def add(res: CacheResult, samples_out: torch.Tensor | None) -> None:
            rows.append(res)
            if samples_out is not None:
                grids.append((res.config, samples_out))
            bar.clear()
            log(_row_line(res, width))

        def cached_rows(p, entry_config, prefix, with_baseline):
            res = CacheResult(prefix, "ok")
            row_now[0] = f"calibrating {prefix}"
            t0 = time.perf_counter()
            try:
                with _quiet():
                    step_level = entry_config.get("level") == "step"
                    cal = calibrate(p, budget_psnr, seeds, config=entry_config,
                                    sample_fn=sample_fn, orders=orders, families=families,
                                    spaces=spaces if step_level else ("output",), apply=True)
            except Exception as e:  # noqa: BLE001 - one failed row never loses the others
                res.status, res.reason = "failed", f"{type(e).__name__}: {e}"
                add(res, None)
                return
            res.calib_seconds = time.perf_counter() - t0
            res.config = f"{prefix}:{policy_name(cal.policy, cal.forecast_space)}"
            res.description = f"calibrated to {budget_psnr} dB on seeds {list(seeds)}"
            res.policy, res.calib_psnr_db = cal.config_list[0]["policy"], cal.psnr_calib
            res.forecast_space = cal.forecast_space
            try:
                outs = _measure(res, p, reference, batches, steps, uncached_s, flops, kind)
                add(res, outs)
                if with_baseline and (cal.policy.get("order", 0) != 0
                                      or cal.forecast_space != "output"):
                    base_policy = {**cal.policy, "order": 0}
                    cachify.remove(p)
                    cachify.prepare(p, [{**(entry_config or {"level": "step"}),
                                         "policy": base_policy}])
                    b = CacheResult(f"{prefix}:{policy_name(base_policy)}", "ok",
                                    "the same recompute steps, plain reuse (baseline)",
                                    policy=base_policy, forecast_space="output")
                    add(b, _measure(b, p, reference, batches, steps, uncached_s, flops, kind))
            finally:
                cachify.remove(p)

        step_entry = {"level": "step"}
        cached_rows(pipe, step_entry, "step", True)
        if block_name is not None:
            cached_rows(pipe, {"wildcard_or_filter_func": block_name}, f"block[{block_name}]",
                        False)
        if quant is not None:
            qpipe = copy.copy(pipe)
            qpipe.denoiser = copy.deepcopy(pipe.denoiser)
            qname = quant.name if quant_percentile is None else (
                f"{quant.name}[steps p{quant_percentile:g} {quant_collect}]")
            qres = CacheResult(qname, "ok", quant.description)
            row_now[0] = f"quantizing {quant.name}"
            try:
                qres.calib_seconds = _quantize_denoiser(qpipe, qcfg, sample_fn, seeds[0])
                q_out = _measure(qres, qpipe, reference, batches, steps, uncached_s, flops, kind)
                add(qres, q_out)
            except Exception as e:  # noqa: BLE001
                qres.status, qres.reason = "failed", f"{type(e).__name__}: {e}"
                add(qres, None)
            else:
                cached_rows(qpipe, step_entry, f"{qname}+step", False)
        results = {
            "metric": "psnr_db",
            "setup": setup,
            "columns_definition": {
                "denoiser_calls": "per sampling run, whole-denoiser equivalents by FLOPs",
                "flops_ratio": "uncached denoiser FLOPs / cached (torch.utils.flop_counter)",
                "wall_speedup": "uncached sampling time of the evaluation set / this row's",
                "psnr_db": "all evaluation samples against the uncached ones",
                "psnr_min_db": "the worst evaluation sample",
                "ssim": "mean over the evaluation samples",
                "fidelity": "Frechet distance of classifier features to real test images "
                "(lower is closer; the uncached row is the model's own)",
                "calib_psnr_db": "worst calibration seed (calibration chose the policy on it)",
            },
            "date": datetime.date.today().isoformat(),
            "machine": machine_description(),
            "rows": [_row_dict(r) for r in rows],
        }
        bar.close()
        write_outputs(
            results,
            format_cache_table(rows),
            out,
            PLOT_PNG,
            (lambda p: plot_samples(grids, rows, p, pipe.pixel_range)) if plot else None,
            log,
        )
        return results


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _row_dict(r: CacheResult) -> dict:
    d = dataclasses.asdict(r)
    for k, v in d.items():  # strict JSON: no Infinity / NaN
        if isinstance(v, float) and not math.isfinite(v):
            d[k] = None
    return d


def _quant_config(quant, quant_percentile: float | None, quant_collect: str,
                  num_steps: int) -> dict:
    """The quantize config of `quant`; with `quant_percentile` its algorithm is replaced by
    step_percentile over the `num_steps` steps of a sampling run (diffusion PTQ)."""
    cfg = quant.build()
    if quant_percentile is not None:
        cfg["algorithm"] = {"method": "step_percentile", "num_steps": num_steps,
                            "percentile": float(quant_percentile), "collect": quant_collect}
    return cfg


def _quantize_denoiser(pipe, cfg: dict, sample_fn, seed: int) -> float:
    """Quantizes pipe.denoiser in place with `cfg`, calibrated over every step of one sampling
    run."""
    from .. import quantization as mtq

    def forward_loop(_model):
        with torch.no_grad():
            sample_fn(pipe, seed)

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), _quiet():
        mtq.quantize(pipe.denoiser, cfg, forward_loop)
    return time.perf_counter() - t0


def _row_line(r: CacheResult, width: int) -> str:
    if r.status == "failed":
        return f"  {r.config:{width}} failed: {r.reason}"
    return (
        f"  {r.config:{width}} calls {format_number(r.denoiser_calls, '.1f')}  FLOPs "
        f"{format_number(r.flops_ratio, '.2f')}x  wall {format_number(r.wall_speedup, '.2f')}x  "
        f"PSNR {format_number(r.psnr_db, '.2f', 'ref')} dB (min "
        f"{format_number(r.psnr_min_db, '.2f', 'ref')})  SSIM {format_number(r.ssim, '.4f')}  "
        f"fidelity {format_number(r.fidelity, '.2f')}"
    )


def format_cache_table(rows: list[CacheResult]) -> str:
    """The results table (markdown), then the rows that failed and why."""
    lines = [
        "| config | denoiser calls | FLOPs ratio | wall speedup | PSNR dB (worst sample) | SSIM "
        "| fidelity (FD) | calib PSNR dB | calib s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.status == "failed":
            continue
        psnr = (f"{format_number(r.psnr_db, '.2f')} ({format_number(r.psnr_min_db, '.2f')})"
                if r.psnr_db is not None else "reference")
        lines.append(
            f"| {r.config} | {format_number(r.denoiser_calls, '.1f')} | "
            f"{format_number(r.flops_ratio, '.2f')}x | {format_number(r.wall_speedup, '.2f')}x | "
            f"{psnr} | {format_number(r.ssim, '.4f')} | {format_number(r.fidelity, '.2f')} | "
            f"{format_number(r.calib_psnr_db, '.2f')} | {format_number(r.calib_seconds, '.1f')} |"
        )
    failed = [r for r in rows if r.status == "failed"]
    if failed:
        lines.append("")
        lines.extend(f"- {r.config}: failed: {r.reason}" for r in failed)
    return "\n".join(lines)


def plot_samples(grids: list[tuple[str, torch.Tensor]], rows: list[CacheResult],
                 path: str | os.PathLike, pixel_range: tuple[float, float], per_row: int = 8):
    """PNG grid: one row of images per table row (its first `per_row` evaluation samples; each
    column over the value range of its uncached sample), labelled with the config and its
    PSNR."""
    plt = pyplot()
    if plt is None:
        return None
    psnr = {r.config: r.psnr_db for r in rows}
    n = min(per_row, min(len(x) for _, x in grids))
    fig, axes = plt.subplots(len(grids), n, figsize=(1.1 * n + 2.6, 1.15 * len(grids) + 0.4),
                             dpi=110, squeeze=False)
    # Column j is shown over the value range of uncached sample j (raw samples leave the model's
    # pixel range), the same mapping for every row: differences stay visible as differences.
    reference = grids[0][1]
    for i, (name, x) in enumerate(grids):
        for j in range(n):
            lo, hi = float(reference[j].min()), float(reference[j].max())
            if not hi > lo:
                lo, hi = min(pixel_range), max(pixel_range)
            ax = axes[i][j]
            ax.imshow(x[j, 0].clamp(lo, hi).numpy(), cmap="gray", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
        label = name if psnr.get(name) is None else f"{name}\n{psnr[name]:.1f} dB"
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle("mopt cache: evaluation samples (same seeds) per row", fontsize=9)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
