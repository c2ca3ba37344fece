"""mopt against llm-compressor and torchao: the same model, the same calibration windows and the
same perplexity evaluation, one table of perplexity and quantize time per recipe and library.

    .venv-peers/bin/python benchmarks/compare_peers.py [--model default|smollm2-135m]
        [--recipes all|float,w8a8,int8_wo,int4_rtn,int4_gptq,int4_awq]
        [--libraries mopt,llmcompressor,torchao] [--calib-text PATH] [--eval-text PATH]
        [--out DIR] [--threads N|auto] [--row-timeout S]

Run it with the Python of `make deps-peers` (.venv-peers/, which sees the system torch and, with
PYTHONPATH=python, this checkout's mopt); a peer that does not import there gets error rows.

Each row quantizes a fresh copy of the float model with one library and scores it:
calibration is `--calib-samples` (16) windows of 512 tokens of `mopt.data.default_calib_text()`
(`text_calibration_batches`, seed 0), fed 4 windows per batch to every library (mopt's
forward_loop, llm-compressor's DataLoader); evaluation is `mopt.eval.perplexity` in
non-overlapping 512-token windows. The lm_head stays in float everywhere. "quantize s" is the
wall time of the one quantize call (`mtq.quantize`, `oneshot`, `quantize_`), calibration
included, in this process after each library's import.

Recipes, with G = 32 for stories260K and 128 for smollm2-135m:

* w8a8      INT8 weights per channel + INT8 activations per token (dynamic). mopt int8_dyn and
            int8_sq_dyn (SmoothQuant alpha 0.5); llm-compressor SmoothQuant(0.8) + GPTQ W8A8 (its
            W8A8 example) and W8A8 round-to-nearest; torchao Int8DynamicActivationInt8Weight.
* int8_wo   INT8 weight-only per channel: mopt int8_wo, llm-compressor W8A16 made per channel
            (its preset groups by 128), torchao Int8WeightOnly.
* int4_rtn  INT4 weight-only, groups of G, round to nearest: mopt int4[_b32] (codes
            -7..7, scale amax/7), int4[_b32]_full (all 16 codes, amax/7.5, the layout
            compressed-tensors uses) and int4[_b32]_asym (zero points, min/max); where the peers
            fall back to groups of 64, mopt runs int4_b64_* there too; llm-compressor W4A16;
            torchao Int4WeightOnly (asymmetric tinygemm layout) and IntxWeightOnly(int4,
            symmetric, PerGroup(G)).
* int4_gptq GPTQ in the same layouts: mopt int4[_b32]_gptq[_full|_asym] (percdamp 0.01, no
            act-order);
            llm-compressor GPTQModifier W4A16 with its defaults (dampening_frac 0.01, actorder
            static, block_size 128).
* int4_awq  AWQ: mopt awq_lite (alpha_step 0.1) on both layouts, with zero points too (and
            AWQ lite + clip); llm-compressor AWQModifier
            (defaults: duo_scaling, n_grid 20) + W4A16, symmetric and its default asymmetric.
            llm-compressor 0.14's AWQ pins its CPU activation cache (for copies to a GPU) and so
            raises without an accelerator; on CPU the pinning is made a no-op for these rows
            (numerically nothing changes; the note says so; --no-pin-shim runs it as shipped).

llm-compressor and torchao require the input width of every grouped layer to be a multiple of
G (stories260K's down_proj is 172 wide, smollm2's attention and MLP inputs 576). Where they
refuse, the row is retried with the largest power-of-two group >= 32 below G that divides every
width (64 for smollm2), then, for llm-compressor, with its "block" strategy of 1 x G blocks
(the same layout as mopt's groups: the last group of a row is shorter); the row's note says
what ran. Every failure is a row with the error's first line, never a crash; a quantize call
longer than --row-timeout seconds is stopped and recorded as such.

Writes OUT/results.json: {"setup": {...}, "rows": [{"config": "<recipe>/<library>:<variant>",
"recipe", "library", "variant", "metric" (perplexity), "change_pct", "quantize_s", "eval_s",
"error" (null or str), "note"}], "complete", ...}, rewritten after every row (a run that dies
keeps the rows it finished; "complete" is false then).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import functools
import json
import logging
import os
import pathlib
import platform
import re
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "python"))

import mopt.quantization as mtq
from mopt import data as mdata
from mopt.eval import make_forward_loop, perplexity, text_calibration_batches
from mopt.ptq import PTQ_CONFIGS

LIBRARIES = ("mopt", "llmcompressor", "torchao")
RECIPES = {
    "float": "no quantization",
    "w8a8": "INT8 W per channel + INT8 A per token (dynamic)",
    "int8_wo": "INT8 weight-only per channel",
    "int4_rtn": "INT4 weight-only symmetric groups of G, round to nearest",
    "int4_gptq": "INT4 weight-only groups of G, GPTQ",
    "int4_awq": "INT4 weight-only groups of G, AWQ",
}
MODELS = {"default": 32, "smollm2-135m": 128}  # model -> INT4 group size G
WIKITEXT_EVAL_BYTES = 30_000
SEQ_LEN = 512
CALIB_BATCH = 4
NOT_INSTALLED = "not installed: run make deps-peers"


class RowTimeout(BaseException):
    """Raised by SIGALRM in a quantize call past --row-timeout (a BaseException, so that a
    library's own `except Exception` does not swallow it)."""


class Reported(Exception):
    """An error whose message is the row's error text as it stands."""


@dataclass
class Row:
    recipe: str
    library: str
    variant: str
    metric: float | None = None
    change_pct: float | None = None
    quantize_s: float | None = None
    eval_s: float | None = None
    error: str | None = None
    note: str = ""

    @property
    def config(self) -> str:
        return f"{self.recipe}/{self.library}:{self.variant}"


@dataclass
class Context:
    """What every quantize call shares: calibration windows, group size, layer widths."""

    batches: torch.Tensor  # [n, SEQ_LEN] calibration ids
    group: int
    widths: list[int]  # input widths of the quantized linear layers
    config_dir: str  # the model's config.json, for llm-compressor's checks
    timeout: int
    pin_shim: bool  # see _cpu_pin_shim

    @property
    def fallback_group(self) -> int | None:
        """The largest power-of-two group >= 32 below `group` that divides every width."""
        g = self.group // 2
        while g >= 32:
            if all(w % g == 0 for w in self.widths):
                return g
            g //= 2
        return None


# A runner quantizes a fresh copy of the base model: (quantized model, seconds, note).
Runner = Callable[[nn.Module, Context], tuple[nn.Module, float, str]]


@dataclass
class Variant:
    recipe: str
    library: str
    name: str
    run: Runner


def first_line(e: BaseException | str) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    msg = lines[0] if lines else ""
    if msg.endswith(":") and len(lines) > 1:
        msg += " " + lines[1]
    if isinstance(e, (str, Reported, RowTimeout)):
        return msg
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


@contextlib.contextmanager
def quiet(verbose: bool):
    """The libraries' progress bars, logs and warnings out of the table (unless --verbose)."""
    if verbose:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def timed(fn: Callable[[], nn.Module | None], model: nn.Module, ctx: Context):
    """(fn's model or `model`, seconds) with SIGALRM stopping fn after ctx.timeout seconds."""

    def on_alarm(signum, frame):
        raise RowTimeout(f"timeout: the quantize call ran past {ctx.timeout} s and was stopped")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(ctx.timeout)
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return (out if out is not None else model), time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# mopt


def mopt_variant(recipe: str, name: str, build: Callable[[], dict]) -> Variant:
    def run(base, ctx):
        model = copy.deepcopy(base)
        cfg = build()
        forward_loop = make_forward_loop(ctx.batches, CALIB_BATCH)
        model, seconds = timed(lambda: mtq.quantize(model, cfg, forward_loop), model, ctx)
        return model, seconds, ""

    return Variant(recipe, "mopt", name, run)


def mopt_registry(recipe: str, name: str) -> Variant:
    return mopt_variant(recipe, name, lambda: PTQ_CONFIGS[name].build())


def mopt_awq(recipe: str, rtn_name: str, name: str) -> Variant:
    """awq_lite on the layout of an RTN registry entry (mopt's AWQ entries use blocks of 128)."""

    def build():
        cfg = PTQ_CONFIGS[rtn_name].build()
        cfg["algorithm"] = {"method": "awq_lite", "alpha_step": 0.1}
        return cfg

    return mopt_variant(recipe, name, build)


def mopt_variants(group: int) -> list[Variant]:
    """mopt's rows at groups of `group`: ModelOpt's range (not at 64, which has no such
    recipe), all 16 codes (`_full`) and zero points (`_asym`)."""
    b = {32: "_b32", 64: "_b64", 128: ""}[group]
    v = [
        mopt_registry("w8a8", "int8_dyn"),
        mopt_registry("w8a8", "int8_sq_dyn"),
        mopt_registry("int8_wo", "int8_wo"),
    ]
    rtn = ([f"int4{b}"] if group != 64 else []) + [f"int4{b}_full", f"int4{b}_asym"]
    v += [mopt_registry("int4_rtn", name) for name in rtn]
    gptq = ([f"int4{b}_gptq"] if group != 64 else []) + [f"int4{b}_gptq_full",
                                                         f"int4{b}_gptq_asym"]
    if group == 128:
        gptq = ["int4_gptq", "int4_gptq_full", "int4_gptq_asym"]
    v += [mopt_registry("int4_gptq", name) for name in gptq]
    if group == 128:
        v += [mopt_registry("int4_awq", name)
              for name in ("int4_awq", "int4_full_awq", "int4_awq_asym", "int4_awq_full_asym")]
    else:
        v += [mopt_awq("int4_awq", name, f"{name} + awq_lite")
              for name in rtn if not name.endswith("_asym")]
        v += [mopt_registry("int4_awq", f"int4{b}_awq_asym")]
        if group == 32:
            v += [mopt_registry("int4_awq", "int4_b32_awq_full_asym")]
    return v


def mopt_variants_for(ctx: Context) -> list[Variant]:
    """mopt at the model's group and, where the peers fall back to a smaller one, there too (so
    every peer row has a like-for-like mopt row)."""
    v = mopt_variants(ctx.group)
    if ctx.fallback_group in (32, 64):
        v += [x for x in mopt_variants(ctx.fallback_group) if x.recipe.startswith("int4")]
    return v


# ----------------------------------------------------------------------------------------------
# llm-compressor


class _Tokenized:
    """Stands in for the processor: the calibration DataLoader holds token ids already."""


class _Windows(torch.utils.data.Dataset):
    def __init__(self, batches: torch.Tensor):
        self.batches = batches

    def __len__(self):
        return self.batches.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.batches[i]}


def _is_group_refusal(e: BaseException) -> bool:
    text = str(e)
    return "not divisible by" in text or "divisible by block_size" in text or (
        "strict division" in text
    )


def _int4_layouts(ctx: Context) -> list[tuple[str, int]]:
    layouts = [("group", ctx.group)]
    if ctx.fallback_group:
        layouts.append(("group", ctx.fallback_group))
    return layouts + [("block", ctx.group)]


def _layout_note(layout: tuple[str, int], ctx: Context, refusal: str) -> str:
    if layout == ("group", ctx.group):
        return ""
    used = f"group {layout[1]}" if layout[0] == "group" else f"block 1x{layout[1]}"
    return f"ran with {used}: group {ctx.group} refused ({refusal})"


def _scheme(preset: str, layout: tuple[str, int] | None):
    """An llm-compressor preset scheme on Linear layers, its weights regrouped to `layout`."""
    from compressed_tensors.quantization import QuantizationArgs, preset_name_to_scheme

    scheme = preset_name_to_scheme(preset, ["Linear"])
    if layout is None:
        return scheme
    fields = scheme.weights.model_dump()
    kind, size = layout
    if kind == "channel":
        fields.update(strategy="channel", group_size=None, block_structure=None)
    elif kind == "group":
        fields.update(strategy="group", group_size=size, block_structure=None)
    else:
        fields.update(strategy="block", group_size=None, block_structure=[1, size])
    scheme.weights = QuantizationArgs(**fields)
    return scheme


def _refusal_summary(e: BaseException) -> str:
    """The widths named in llm-compressor's divisibility error ("columns=172"), else its first
    line."""
    text = str(e)
    cols = sorted({int(c) for c in re.findall(r"columns=(\d+)", text)})
    if cols:
        return f"{'/'.join(map(str, cols))}-wide inputs"
    return first_line(e)


@contextlib.contextmanager
def _cpu_pin_shim(enable: bool):
    """Without an accelerator, makes llm-compressor's pinning of its CPU activation cache a no-op
    (pinning only places memory for faster host-to-device copies; AWQ in llm-compressor 0.14
    pins unconditionally and raises "Cannot access accelerator device when none is
    available")."""
    if not enable or torch.accelerator.is_available():
        yield False
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.__dict__["_pin_intermediate"]
    IntermediatesCache._pin_intermediate = classmethod(lambda cls, intermediate: None)
    try:
        yield True
    finally:
        IntermediatesCache._pin_intermediate = original


PIN_SHIM_NOTE = "pin_memory made a no-op (llm-compressor pins its CPU cache for a GPU)"


def llmc_variant(recipe: str, name: str, modifiers: Callable[[object], list], preset: str,
                 int4: bool = False, weights: tuple[str, int] | None = None,
                 pin_shim: bool = False) -> Variant:
    """`modifiers(scheme)` builds the recipe from `preset` (its weights regrouped to `weights`);
    INT4 recipes try group G, then the fallback layouts."""

    def run(base, ctx):
        from llmcompressor import oneshot

        layouts = _int4_layouts(ctx) if int4 else [weights]
        refusal = ""
        for i, layout in enumerate(layouts):
            model = copy.deepcopy(base)
            # oneshot reads config.json back from name_or_path (its check for checkpoints already
            # quantized in another format); neither a llama2.c nor a GGUF model has one there
            model.config._name_or_path = ctx.config_dir
            loader = torch.utils.data.DataLoader(_Windows(ctx.batches), batch_size=CALIB_BATCH)
            recipe_ = modifiers(_scheme(preset, layout))
            try:
                with _cpu_pin_shim(pin_shim and ctx.pin_shim) as shimmed:
                    call = functools.partial(
                        oneshot, model=model, dataset=loader, recipe=recipe_,
                        processor=_Tokenized(), num_calibration_samples=ctx.batches.shape[0],
                        max_seq_length=SEQ_LEN)
                    model, seconds = timed(call, model, ctx)
            except Exception as e:
                if i + 1 < len(layouts) and _is_group_refusal(e):
                    refusal = refusal or _refusal_summary(e)
                    continue
                if refusal:
                    raise Reported(f"{first_line(e)} (after group {ctx.group} refused: "
                                   f"{refusal})") from e
                raise
            notes = [_layout_note(layout, ctx, refusal) if int4 else "",
                     PIN_SHIM_NOTE if shimmed else ""]
            return model, seconds, "; ".join(n for n in notes if n)
        raise AssertionError("unreachable")

    return Variant(recipe, "llmcompressor", name, run)


def llmc_variants(group: int) -> list[Variant]:
    def qm(scheme):
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return [QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])]

    def gptq(scheme):
        from llmcompressor.modifiers.quantization import GPTQModifier

        return [GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"],
                             dampening_frac=0.01)]

    def sq_gptq(scheme):
        from llmcompressor.modifiers.transform import SmoothQuantModifier

        return [SmoothQuantModifier(smoothing_strength=0.8), *gptq(scheme)]

    def awq(scheme):
        from llmcompressor.modifiers.transform import AWQModifier

        return [AWQModifier(), *qm(scheme)]

    g = f"g{group}"
    return [
        llmc_variant("w8a8", "SmoothQuant 0.8 + GPTQ W8A8", sq_gptq, "W8A8"),
        llmc_variant("w8a8", "W8A8 RTN", qm, "W8A8"),
        # the W8A16 preset groups weights by 128; mopt's and torchao's INT8 are per channel
        llmc_variant("int8_wo", "W8A16 per channel RTN", qm, "W8A16", weights=("channel", 0)),
        llmc_variant("int4_rtn", f"W4A16 sym {g} RTN", qm, "W4A16", int4=True),
        llmc_variant("int4_gptq", f"GPTQ W4A16 sym {g}", gptq, "W4A16", int4=True),
        llmc_variant("int4_awq", f"AWQ W4A16 sym {g}", awq, "W4A16", int4=True, pin_shim=True),
        llmc_variant("int4_awq", f"AWQ W4A16_ASYM {g}", awq, "W4A16_ASYM", int4=True,
                     pin_shim=True),
    ]


# ----------------------------------------------------------------------------------------------
# torchao


def _not_lm_head(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear) and "lm_head" not in fqn


def torchao_variant(recipe: str, name: str, configs: Callable[[int], object],
                    int4: bool = False) -> Variant:
    """`configs(group)` builds the torchao config; INT4 retries the fallback group."""

    def run(base, ctx):
        from torchao.quantization import quantize_

        groups = [ctx.group] + ([ctx.fallback_group] if int4 and ctx.fallback_group else [])
        refusal = ""
        for i, g in enumerate(groups):
            model = copy.deepcopy(base)
            cfg = configs(g)
            try:
                call = functools.partial(quantize_, model, cfg, filter_fn=_not_lm_head)
                model, seconds = timed(call, model, ctx)
            except Exception as e:
                if i + 1 < len(groups) and _is_group_refusal(e):
                    refusal = first_line(e)
                    continue
                raise
            note = f"ran with group {g}: group {ctx.group} refused ({refusal})" if i else ""
            return model, seconds, note
        raise AssertionError("unreachable")

    return Variant(recipe, "torchao", name, run)


def torchao_variants(group: int) -> list[Variant]:
    def int4_sym(g):
        from torchao.quantization import IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerGroup
        from torchao.quantization.quant_primitives import MappingType

        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(g),
                                    mapping_type=MappingType.SYMMETRIC)

    def cfg(name, **kw):
        def build(g):
            import torchao.quantization as q

            return getattr(q, name)(**kw)
        return build

    def int4_wo(g):
        from torchao.quantization import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig(group_size=g)

    return [
        torchao_variant("w8a8", "Int8DynamicActivationInt8Weight",
                        cfg("Int8DynamicActivationInt8WeightConfig")),
        torchao_variant("int8_wo", "Int8WeightOnly", cfg("Int8WeightOnlyConfig")),
        torchao_variant("int4_rtn", f"Int4WeightOnly g{group}", int4_wo, int4=True),
        torchao_variant("int4_rtn", f"IntxWeightOnly int4 sym g{group}", int4_sym, int4=True),
    ]


# ----------------------------------------------------------------------------------------------
# model, data, table


def load_model(name: str, eval_text: str | None):
    """(float model, encode, eval text, description of the eval text)."""
    if name == "default":
        from mopt.models import Llama2cTokenizer, load_llama2c

        tok = Llama2cTokenizer.from_file()
        model, encode = load_llama2c(), tok.encode
        default_eval = (mdata.default_eval_text(), "mopt.data.default_eval_text()")
    else:
        from mopt.ptq.models import resolve_model

        src = resolve_model(name)
        model, encode = src.load(), src.encode
        default_eval = wikitext_eval()
        drop_gguf_marker(model)
    if eval_text is not None:
        text = pathlib.Path(eval_text).read_text(encoding="utf-8")
        return model.eval(), encode, text, eval_text
    return model.eval(), encode, *default_eval


def drop_gguf_marker(model: nn.Module) -> bool:
    """transformers dequantizes a GGUF file to float32 on load but keeps its marker
    (quantization_config "gguf", hf_quantizer), and llm-compressor then refuses the model as
    "already quantized in a different format"; the weights are float, so the marker goes."""
    qc = getattr(model.config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if method != "gguf":
        return False
    del model.config.quantization_config
    model.hf_quantizer = None
    return True


def wikitext_eval() -> tuple[str, str]:
    """The first WIKITEXT_EVAL_BYTES bytes of the WikiText-2 test split: shared/data's copy when
    there is one, else mopt's shipped slice (the same first 266,744 bytes)."""
    for path in (ROOT.parent / "shared" / "data" / "wikitext2_test.txt",
                 ROOT / "shared" / "data" / "wikitext2_test.txt",
                 mdata.path_of("wikitext2_test_slice.txt")):
        if path.is_file():
            raw = path.read_bytes()[:WIKITEXT_EVAL_BYTES]
            return raw.decode("utf-8", errors="ignore"), f"first {len(raw):,} bytes of {path}"
    raise FileNotFoundError("no WikiText-2 test text found")


def linear_widths(model: nn.Module) -> list[int]:
    return sorted({m.in_features for n, m in model.named_modules() if _not_lm_head(m, n)})


def library_available(lib: str, verbose: bool) -> str | None:
    """None when `lib` imports, else the error row text."""
    if lib == "mopt":
        return None
    try:
        with quiet(verbose):
            if lib == "llmcompressor":
                from llmcompressor import oneshot  # noqa: F401
                from loguru import logger

                if not verbose:  # its sinks hold the real stdout/stderr
                    logger.remove()
            else:
                import torchao.quantization  # noqa: F401
    except ImportError as e:
        return f"{NOT_INSTALLED} ({first_line(e)})"
    except Exception as e:  # noqa: BLE001 - a broken install: the rows say how it broke
        return f"import failed: {first_line(e)}"
    return None


def library_version(lib: str) -> str | None:
    import importlib.metadata as md

    if lib == "mopt":
        import mopt

        return mopt.__version__
    try:
        return md.version(lib)
    except md.PackageNotFoundError:
        return None


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: list[Row]) -> str:
    lines = ["| recipe | library | perplexity | change vs float | quantize s | note |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        change = "-" if r.change_pct is None else f"{r.change_pct:+.2f}%"
        note = f"error: {r.error}" if r.error else r.note
        lib = "-" if r.recipe == "float" else f"{r.library} {r.variant}"
        lines.append(f"| {r.recipe} | {lib} | {fmt(r.metric, '.4f')} | "
                     f"{change} | {fmt(r.quantize_s, '.2f')} | {note} |")
    return "\n".join(lines)


def format_ratios(rows: list[Row], float_ppl: float) -> str:
    """Per recipe: the best mopt row against the best peer row (lowest perplexity)."""
    lines = [
        "| recipe | best mopt | best peer | perplexity mopt / peer | "
        + "increase over float mopt / peer | quantize s mopt / peer |",
        "|---|---|---|---:|---:|---:|",
    ]
    for recipe in RECIPES:
        ok = [r for r in rows if r.recipe == recipe and r.error is None and r.metric is not None]
        mine = [r for r in ok if r.library == "mopt"]
        peers = [r for r in ok if r.library != "mopt"]
        if recipe == "float" or not mine or not peers:
            continue
        m = min(mine, key=lambda r: r.metric)
        p = min(peers, key=lambda r: r.metric)
        rise_m, rise_p = m.metric - float_ppl, p.metric - float_ppl
        rise = f"{rise_m / rise_p:.2f}" if abs(rise_p) > 1e-12 else "-"
        t = f"{m.quantize_s / p.quantize_s:.2f}" if m.quantize_s and p.quantize_s else "-"
        note = f" ({p.note})" if p.note else ""
        lines.append(f"| {recipe} | {m.variant} {m.metric:.4f} | {p.library} {p.variant} "
                     f"{p.metric:.4f}{note} | {m.metric / p.metric:.4f} | {rise} | {t} |")
    if len(lines) == 2:
        return "(no recipe has both a mopt row and a peer row that ran)"
    return "\n".join(lines)


def parse_list(spec: str, known, what: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"unknown {what} {unknown}; choose from {', '.join(known)} or 'all'")
    return [n for n in known if n in names]


def run_rows(variants: list[Variant], base: nn.Module, ctx: Context, eval_ids: list[int],
             missing: dict[str, str | None], verbose: bool,
             save: Callable[[list[Row]], None]) -> list[Row]:
    """The float row, then one row per variant (progress lines on stderr); `save(rows)` after
    each row, so a run that is killed (a peer out of memory) keeps the rows it finished."""
    t0 = time.perf_counter()
    float_ppl = perplexity(base, eval_ids, SEQ_LEN, progress=False)
    rows = [Row("float", "-", "float", float_ppl, 0.0, None, time.perf_counter() - t0)]
    print(f"  float: perplexity {float_ppl:.4f}", file=sys.stderr, flush=True)
    for v in variants:
        row = Row(v.recipe, v.library, v.name)
        if missing.get(v.library):
            row.error = missing[v.library]
        else:
            try:
                with quiet(verbose):
                    model, row.quantize_s, row.note = v.run(base, ctx)
                    t0 = time.perf_counter()
                    row.metric = perplexity(model, eval_ids, SEQ_LEN, progress=False)
                    row.eval_s = time.perf_counter() - t0
                row.change_pct = 100.0 * (row.metric / float_ppl - 1.0)
                del model
            except (Exception, RowTimeout) as e:  # noqa: BLE001 - reported in the table
                row.error = first_line(e)
        rows.append(row)
        save(rows)
        result = row.error or f"{fmt(row.metric, '.4f')} in {fmt(row.quantize_s, '.1f')} s"
        print(f"  {row.config}: {result}", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", choices=list(MODELS))
    ap.add_argument("--recipes", default="all")
    ap.add_argument("--libraries", default=",".join(LIBRARIES))
    ap.add_argument("--calib-text", default=None, help="calibrate on this UTF-8 text file")
    ap.add_argument("--eval-text", default=None, help="evaluate on this UTF-8 text file")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--out", default=None, help="default: out/peers_<model>")
    ap.add_argument("--threads", default="auto",
                    help="torch threads; auto: 1 for a model under 10M parameters (more only "
                         "add synchronization there), else torch's default")
    ap.add_argument("--row-timeout", type=int, default=900,
                    help="stop a quantize call after this many seconds")
    ap.add_argument("--no-pin-shim", action="store_true",
                    help="run llm-compressor's AWQ as shipped (it needs an accelerator)")
    ap.add_argument("--verbose", action="store_true", help="show the libraries' own output")
    args = ap.parse_args()
    recipes = parse_list(args.recipes, RECIPES, "recipe(s)")
    libraries = parse_list(args.libraries, LIBRARIES, "library(ies)")
    out_dir = pathlib.Path(args.out or f"out/peers_{args.model}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.verbose:  # torch's deprecation notes that the peers trigger on import/tracing
        logging.getLogger("torch").setLevel(logging.ERROR)

    group = MODELS[args.model]
    with quiet(args.verbose):
        base, encode, eval_str, eval_desc = load_model(args.model, args.eval_text)
    n_params = sum(p.numel() for p in base.parameters())
    threads = args.threads
    if threads == "auto":
        threads = 1 if n_params < 10_000_000 else torch.get_num_threads()
    torch.set_num_threads(int(threads))
    calib_str = (mdata.default_calib_text() if args.calib_text is None
                 else pathlib.Path(args.calib_text).read_text(encoding="utf-8"))
    eval_ids = encode(eval_str)
    batches = text_calibration_batches(encode(calib_str), args.calib_samples, SEQ_LEN, 0)

    missing = {lib: library_available(lib, args.verbose) for lib in libraries}
    versions = {lib: library_version(lib) for lib in libraries}
    import transformers

    config_dir = tempfile.TemporaryDirectory(prefix="compare_peers_")
    base.config.save_pretrained(config_dir.name)
    ctx = Context(batches, group, linear_widths(base), config_dir.name, args.row_timeout,
                  not args.no_pin_shim)

    variants: list[Variant] = []
    for lib, make in (("mopt", lambda _: mopt_variants_for(ctx)),
                      ("llmcompressor", llmc_variants), ("torchao", torchao_variants)):
        if lib in libraries:
            variants += make(group)
    variants = [v for v in variants if v.recipe in recipes]
    variants.sort(key=lambda v: list(RECIPES).index(v.recipe))  # stable: library order kept

    setup = {
        "model": args.model,
        "parameters": n_params,
        "group_size": group,
        "linear_input_widths": ctx.widths,
        "eval_text": eval_desc,
        "eval_tokens": len(eval_ids),
        "predicted_tokens": len(eval_ids) - 1,
        "seq_len": SEQ_LEN,
        "calib_text": args.calib_text or "mopt.data.default_calib_text()",
        "calib_samples": args.calib_samples,
        "calib_seq_len": SEQ_LEN,
        "calib_batch_size": CALIB_BATCH,
        "seed": 0,
        "threads": int(threads),
        "libraries": {lib: versions[lib] for lib in libraries},
        "transformers": transformers.__version__,
        "compressed_tensors": library_version("compressed-tensors"),
        "torch": torch.__version__,
        "python": sys.executable,
    }
    print(f"{args.model}: {n_params:,} parameters, INT4 group {group}; eval {eval_desc}, "
          f"{len(eval_ids) - 1:,} predicted tokens in {SEQ_LEN}-token windows; calibration "
          f"{args.calib_samples} x {SEQ_LEN} tokens of {setup['calib_text']}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU, torch {torch.__version__}, "
          f"{threads} thread(s), transformers {transformers.__version__}; "
          + ", ".join(f"{k} {v or '-'}" for k, v in setup["libraries"].items()), flush=True)

    def save(rows: list[Row]) -> None:
        results = {
            "metric": "perplexity",
            "setup": setup,
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()} {os.cpu_count()} CPU, torch {torch.__version__}",
            "complete": len(rows) == len(variants) + 1,
            "rows": [{"config": r.config, **dataclasses.asdict(r)} for r in rows],
        }
        tmp = out_dir / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(out_dir / "results.json")

    with config_dir:
        rows = run_rows(variants, base, ctx, eval_ids, missing, args.verbose, save)
    print()
    print(format_table(rows))
    print()
    print("mopt / best peer per recipe (lowest perplexity on each side):\n")
    print(format_ratios(rows, rows[0].metric))
    print(f"\nresults: {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
