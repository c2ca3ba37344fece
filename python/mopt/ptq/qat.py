"""Quantization-aware training and distillation of a language model, one table (``mopt qat``).

``run_qat(model="default", config="int4_b32", steps=DEFAULT_STEPS, ...)`` loads the model once (as
``mopt ptq`` does), evaluates the float perplexity, quantizes a copy with the ``mopt ptq`` config
(calibrated on text disjoint from the evaluation text) and evaluates it (row ``ptq``), then
fine-tunes copies of that quantized model for `steps` AdamW steps on the shipped TinyStories
training text (``mopt.data.default_train_text()``, disjoint from both) and evaluates each:

* ``qat``: next-token cross-entropy, quantizer scales frozen;
* ``qad``: distillation from the float model: ``kd_loss_weight`` (default 0.5, ModelOpt's
  ``StaticLossBalancer`` default) times the per-token logit KL at temperature 1
  (``mtd.LogitsDistillationLoss``; the teacher runs under ``torch.no_grad()``) plus the rest
  times the next-token loss;
* ``qat_lsq`` (with ``lsq=True``): next-token cross-entropy with learned weight scales (the
  ``lsq`` algorithm, its scale_algorithm the config's own max or mse calibration).

Each trained row reports the share of the PTQ perplexity gap it recovered:
``(ptq - row) / (ptq - float)``. results.json has ptq's schema (``metric``, ``setup``, ``date``,
``machine``, ``rows`` with ``config`` and ``metric``) plus ``loss_curves`` (per row: the
next-token loss of every step, and the distillation loss for ``qad``); the plot
``qat_plot.png`` draws those curves. Argument checks, the output folder and the table writing are
ptq's.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import math
import os
import pathlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .configs import PtqConfig, config_availability, resolve_configs
from .models import read_text
from .report import RESULTS_JSON, format_number, machine_description, output_folder, pyplot
from .report import write_outputs
from .run import (_check_device, _check_run_numbers, _cpu_threads, _first_line,
                  _quantize_timed, prepare_llm_run)

__all__ = ["DEFAULT_STEPS", "QatResult", "format_qat_table", "lsq_config", "run_qat",
           "train_quantized"]

logger = logging.getLogger(__name__)

PLOT_PNG = "qat_plot.png"
OUTPUT_FILES = (RESULTS_JSON, PLOT_PNG)
# The recipe measured on stories260K (docs/training.md): 300 steps at a peak learning rate of
# 1e-4 on windows as long as the evaluation's, 1024 tokens per step. 5e-4 and above undid most
# of the gain (the float model itself got worse when fine-tuned at 5e-4); 128-token windows left
# the positions past 128 untrained (NVFP4: 47% of the gap recovered instead of 55%).
DEFAULT_STEPS = 300
DEFAULT_LR = 1e-4
TOKENS_PER_STEP = 1024
DEFAULT_KD_LOSS_WEIGHT = 0.5


@dataclass
class QatResult:
    """One row of the table."""

    config: str  # "float", "ptq", "qat", "qad", "qat_lsq"
    status: str  # "float", "ok", "not available", "failed"
    description: str = ""
    reason: str = ""
    metric: float | None = None  # perplexity
    change_pct: float | None = None  # against float
    recovered_pct: float | None = None  # share of the ptq gap recovered
    steps: int | None = None
    final_loss: float | None = None  # mean next-token loss of the last 10% of steps
    train_seconds: float | None = None
    quantize_seconds: float | None = None
    eval_seconds: float | None = None
    warnings: str = ""
    losses: list = field(default_factory=list, repr=False)  # moved to loss_curves
    kd_losses: list = field(default_factory=list, repr=False)


def lsq_config(entry: PtqConfig) -> dict:
    """`entry`'s config with the ``lsq`` algorithm (learned post amax) whose scale_algorithm is
    the config's own max or mse calibration; NotImplementedError for other algorithms."""
    cfg = entry.build()
    algorithm = cfg.get("algorithm", "max")
    method = algorithm.get("method") if isinstance(algorithm, dict) else algorithm
    if method not in ("max", "mse"):
        raise NotImplementedError(
            f"learned scales start from a max or mse calibration; {entry.name} calibrates with "
            f"{method!r}")
    scale = algorithm if isinstance(algorithm, dict) else {"method": method}
    cfg["algorithm"] = {"method": "lsq", "scale_algorithm": scale, "learnable_amax": ["post"]}
    return cfg


def train_quantized(model: nn.Module, train_ids: torch.Tensor, steps: int, lr: float, *,
                    batch_size: int = 8, seq_len: int = 128, seed: int = 0,
                    teacher: nn.Module | None = None,
                    kd_loss_weight: float = DEFAULT_KD_LOSS_WEIGHT, progress: bool = True,
                    description: str = "train") -> tuple[list[float], list[float]]:
    """`steps` AdamW steps (linear warm-up over 10% of the steps, then cosine decay, no weight
    decay) on random windows of `train_ids`: next-token cross-entropy, or with `teacher`
    ``kd_loss_weight * KL + (1 - kd_loss_weight) * cross-entropy``, KL the per-token divergence
    from the teacher's logits (``mtd.LogitsDistillationLoss``; 1.0 is distillation alone, as
    ModelOpt's QADTrainer; 0.5 is ModelOpt's ``StaticLossBalancer`` default). Every parameter of
    `model` trains (learned amaxes included). Returns (next-token loss per step, distillation
    loss per step or [])."""
    from .. import distill as mtd

    _check_kd_loss_weight(kd_loss_weight)
    if train_ids.numel() < seq_len + 2:
        raise ValueError(f"training text has {train_ids.numel()} tokens; need more than "
                         f"{seq_len + 1} for one window")
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    criterion = mtd.LogitsDistillationLoss(temperature=1.0, reduction="token_mean")
    device = next(model.parameters()).device
    n_starts = train_ids.numel() - seq_len - 1
    ce_losses: list[float] = []
    kd_losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=description, leave=False)
    model.train()
    try:
        for _ in range(steps):
            starts = torch.randint(0, n_starts, (batch_size,), generator=gen).tolist()
            windows = torch.stack([train_ids[s : s + seq_len + 1] for s in starts]).to(device)
            inputs = windows[:, :-1]
            logits = model(inputs, use_cache=False).logits
            ce = nn.functional.cross_entropy(logits.transpose(1, 2), windows[:, 1:])
            if teacher is not None:
                kd = mtd.distillation_loss(logits, teacher, inputs, use_cache=False,
                                           criterion=criterion)
                kd_losses.append(kd.item())
                loss = kd_loss_weight * kd + (1.0 - kd_loss_weight) * ce
            else:
                loss = ce
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ce_losses.append(ce.item())
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"{description}: the loss became {loss.item()} at step "
                                         f"{len(ce_losses)}; lower the learning rate")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    return ce_losses, kd_losses


def _check_kd_loss_weight(weight: float) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
            0.0 <= weight <= 1.0):
        raise ValueError(f"kd_loss_weight must be a number in [0, 1], got {weight!r}")


def _check_lr(lr: float) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (
            0 < lr < float("inf")):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")


def _resolve_config(name: str) -> PtqConfig:
    names = [n.strip() for n in str(name).split(",") if n.strip()]
    if len(names) != 1:
        raise ValueError(f"config takes one mopt ptq short name (e.g. int4_b32; see mopt ptq "
                         f"--list-configs), got {name!r}")
    [entry] = resolve_configs(names)
    reason = config_availability(entry)
    if reason is not None:
        raise ValueError(f"config {entry.name} cannot run in this build: {reason}")
    return entry


def run_qat(
    model: str = "default",
    config: str = "int4_b32",
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    lsq: bool = False,
    qad: bool = True,
    calib_text: str | os.PathLike | None = None,
    eval_text: str | os.PathLike | None = None,
    train_text: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    tokenizer: str | None = None,
    seq_len: int | None = None,
    train_seq_len: int | None = None,
    train_batch_size: int | None = None,
    kd_loss_weight: float = DEFAULT_KD_LOSS_WEIGHT,
    calib_samples: int = 16,
    calib_seq_len: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = logger.info,
    plot: bool = True,
    device: str = "cpu",
    threads: int | str | None = "auto",
    overwrite: bool = False,
) -> dict:
    """Quantizes `model` with `config`, trains copies (QAT, QAD, and QAT with learned scales when
    `lsq`) and returns the results dict (also written to ``out_dir/results.json`` with the loss
    plot ``out_dir/qat_plot.png`` when `out_dir` is given). `model`, the texts, `seq_len`, the
    calibration sizes, `seed`, `device`, `threads`, `out_dir` and `overwrite` mean what they mean
    for ``mopt.ptq.run_ptq`` (an LLM only); `train_text` defaults to
    ``mopt.data.default_train_text()``; `train_seq_len` to the evaluation window (`seq_len`) and
    `train_batch_size` to 1024 tokens per step; `kd_loss_weight` weighs the distillation loss of
    the ``qad`` row against its next-token loss (``train_quantized``). Every argument is checked before the model is loaded; a
    bad one raises ValueError / FileNotFoundError naming it, and nothing is written."""
    log = log or (lambda s: None)
    device = _check_device(device)
    entry = _resolve_config(config)
    _check_lr(lr)
    _check_kd_loss_weight(kd_loss_weight)
    _check_run_numbers(
        [("steps", steps), ("calib_samples", calib_samples), ("batch_size", batch_size)]
        + [(name, value) for name, value in (("train_batch_size", train_batch_size),
                                             ("train_seq_len", train_seq_len))
           if value is not None],
        seq_len, calib_seq_len, seed, threads)
    if model == "minilm":
        raise ValueError("mopt qat trains a causal LM; 'minilm' is a ptq-only model")
    from .. import data as mdata
    from ..eval import perplexity

    with output_folder(out_dir, overwrite, OUTPUT_FILES) as out:
        train_str = (mdata.default_train_text() if train_text is None
                     else read_text(train_text, "training text"))
        run = prepare_llm_run(model, tokenizer, calib_text, eval_text, seq_len, calib_samples,
                              calib_seq_len, seed, 4,
                              [("train_seq_len", train_seq_len)] if train_seq_len else [])
        source, eval_ids, seq_len = run.source, run.eval_ids, run.seq_len
        train_seq_len = train_seq_len or seq_len
        train_batch_size = train_batch_size or max(1, TOKENS_PER_STEP // train_seq_len)
        calib_seq_len, forward_loop = run.calib_seq_len, run.forward_loop
        train_ids = torch.tensor(source.encode(train_str))
        if train_ids.numel() < train_seq_len + 2:
            raise ValueError(f"training text: {train_ids.numel()} tokens, need more than "
                             f"train_seq_len + 1 = {train_seq_len + 1}")
        base = source.load().to(device)

        def evaluate(mdl: nn.Module) -> float:
            return perplexity(mdl, eval_ids, seq_len, batch_size=batch_size, progress=progress)

        log(f"model: {source.description}; config {entry.name} ({entry.description}); eval "
            f"{len(eval_ids)} tokens (seq_len {seq_len}); calibration {calib_samples} x "
            f"{calib_seq_len} tokens; training {steps} steps x {train_batch_size} x "
            f"{train_seq_len} tokens of {train_ids.numel()}, lr {lr}")
        setup = {
            **run.setup,
            "config": entry.name,
            "config_description": entry.description,
            "steps": steps,
            "lr": lr,
            "schedule": "AdamW, no weight decay, linear warm-up over 10% of the steps, cosine",
            "train_batch_size": train_batch_size,
            "train_seq_len": train_seq_len,
            "train_tokens": int(train_ids.numel()),
            "kd_loss_weight": kd_loss_weight,
            "train_text": ("mopt.data.default_train_text()" if train_text is None
                           else str(train_text)),
            "recovered_definition": "(ptq perplexity - row perplexity) / (ptq - float)",
        }
        train = dict(steps=steps, lr=lr, batch_size=train_batch_size, seq_len=train_seq_len,
                     seed=seed, progress=progress, kd_loss_weight=kd_loss_weight)
        with _cpu_threads(threads, base, device):
            rows = _run_rows(entry, base, forward_loop, evaluate, train_ids, train, lsq, qad,
                             log)
        results = {
            "metric": "perplexity",
            "setup": setup,
            "date": datetime.date.today().isoformat(),
            "machine": machine_description(),
            "loss_curves": {r.config: {"next_token": r.losses, "distillation": r.kd_losses}
                            for r in rows if r.losses},
            "rows": [{k: v for k, v in dataclasses.asdict(r).items()
                      if k not in ("losses", "kd_losses")} for r in rows],
        }
        write_outputs(results, format_qat_table(rows), out, PLOT_PNG,
                      (lambda path: plot_qat(rows, path)) if plot else None, log)
        return results


def _run_rows(entry, base, forward_loop, evaluate, train_ids, train, lsq, qad,
              log) -> list[QatResult]:
    t0 = time.perf_counter()
    fl = QatResult("float", "float", "no quantization", change_pct=0.0)
    fl.metric = evaluate(base)
    fl.eval_seconds = time.perf_counter() - t0
    rows = [fl]
    log(row_line(fl))

    def finish(res: QatResult, model: nn.Module) -> None:
        t1 = time.perf_counter()
        res.metric = evaluate(model)
        res.eval_seconds = time.perf_counter() - t1
        res.change_pct = 100.0 * (res.metric / fl.metric - 1.0)

    ptq = QatResult("ptq", "ok", f"{entry.name}: {entry.description}")
    quantized = None
    try:
        quantized = copy.deepcopy(base)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ptq.quantize_seconds = _quantize_timed(quantized, entry.build(), forward_loop)
            finish(ptq, quantized)
        _note_warnings(ptq, caught)
    except Exception as e:  # noqa: BLE001 - reported in its row
        _fail(ptq, e)
        quantized = None
    rows.append(ptq)
    log(row_line(ptq))

    plan = [("qat", "fine-tuned, next-token loss, frozen scales", None, False)]
    if qad:
        w = train["kd_loss_weight"]
        plan.append(("qad", f"distilled from the float model ({w:g} logit KL + {1 - w:g} "
                            "next-token loss)", base, False))
    if lsq:
        plan.append(("qat_lsq", "fine-tuned, next-token loss, learned scales (LSQ)", None, True))
    for name, description, teacher, learned in plan:
        res = QatResult(name, "ok", description, steps=train["steps"])
        if quantized is None:
            res.status, res.reason = ptq.status, "ptq did not run"
            rows.append(res)
            log(row_line(res))
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if learned:
                    model = copy.deepcopy(base)
                    res.quantize_seconds = _quantize_timed(model, lsq_config(entry),
                                                           forward_loop)
                else:
                    model = copy.deepcopy(quantized)
                    res.quantize_seconds = ptq.quantize_seconds
                t1 = time.perf_counter()
                res.losses, res.kd_losses = train_quantized(
                    model, train_ids, teacher=teacher, description=name, **train)
                res.train_seconds = time.perf_counter() - t1
                tail = res.losses[-max(1, len(res.losses) // 10):]
                res.final_loss = sum(tail) / len(tail)
                finish(res, model)
            _note_warnings(res, caught)
            gap = ptq.metric - fl.metric
            if gap > 0:
                res.recovered_pct = 100.0 * (ptq.metric - res.metric) / gap
            del model
        except Exception as e:  # noqa: BLE001
            _fail(res, e)
        rows.append(res)
        log(row_line(res))
    return rows


def _note_warnings(res: QatResult, caught: list) -> None:
    caught = [w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))]
    if caught:
        res.warnings = f"{len(caught)} warning(s), first: {_first_line(caught[0].message)}"


def _fail(res: QatResult, e: BaseException) -> None:
    if isinstance(e, (NotImplementedError, ImportError)):
        res.status, res.reason = "not available", _first_line(e)
    else:
        res.status, res.reason = "failed", f"{type(e).__name__}: {_first_line(e)}"
        logger.exception("%s failed:", res.config)


def row_line(r: QatResult) -> str:
    """One progress line for a finished row."""
    if r.status not in ("ok", "float"):
        return f"  {r.config:8} {r.status}: {r.reason}"
    text = (f"  {r.config:8} perplexity {format_number(r.metric, '.4f')} "
            f"({format_number(r.change_pct, '+.2f')}%)")
    if r.recovered_pct is not None:
        text += f"  recovered {r.recovered_pct:.1f}% of the ptq gap"
    if r.train_seconds is not None:
        text += f"  train {r.train_seconds:.1f} s"
    return text


def format_qat_table(rows: list[QatResult]) -> str:
    """The results table (markdown), then the rows that did not run and why."""
    lines = ["| row | perplexity | change vs float | ptq gap recovered | steps | final train "
             "loss | train s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.status not in ("ok", "float"):
            continue
        recovered = format_number(r.recovered_pct, ".1f")
        lines.append(
            f"| {r.config} | {format_number(r.metric, '.4f')} | "
            f"{format_number(r.change_pct, '+.2f')}% | "
            f"{recovered + '%' if r.recovered_pct is not None else '-'} | "
            f"{r.steps if r.steps is not None else '-'} | {format_number(r.final_loss, '.4f')} | "
            f"{format_number(r.train_seconds, '.1f')} |")
    others = [r for r in rows if r.status not in ("ok", "float")]
    if others:
        lines.append("")
        lines.extend(f"- {r.config}: {r.status}: {r.reason}" for r in others)
    return "\n".join(lines)


def plot_qat(rows: list[QatResult], path: str | os.PathLike):
    """PNG of the next-token training loss per step of each trained row (moving average over 10%
    of the steps). Returns the path, or None (with a warning logged) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for r in rows:
        if r.status != "ok" or not r.losses:
            continue
        k = max(1, len(r.losses) // 10)
        windows = [r.losses[max(0, i - k + 1) : i + 1] for i in range(len(r.losses))]
        smooth = [sum(w) / len(w) for w in windows]
        ax.plot(range(1, len(smooth) + 1), smooth,
                label=f"{r.config} (ppl {format_number(r.metric, '.3f')})")
    ax.set_xlabel("step")
    ax.set_ylabel("next-token training loss (moving average)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("mopt qat: training loss of the quantized model")
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
