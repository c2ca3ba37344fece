"""The results of a ``mopt ptq`` run: one ``PtqResult`` per row, ``results.json``, the markdown
table and the plot of quality against effective bits.

results.json: ``metric`` ("perplexity" or "cosine"), ``setup`` (the model, texts and sizes the
run used), ``weight_bytes_definition``, ``date``, ``machine`` and ``rows`` (one dict per
``PtqResult``: ``config``, ``status``, ``metric`` and the other fields below).

``output_folder``, ``write_outputs``, ``machine_description`` and ``format_number`` are generic:
``mopt sparsify`` (mopt.ptq.sparsify) writes its own rows, table and plot through them.

The output folder (``--out``): ``output_folder`` checks it before anything is loaded: it creates
it (removing what it created again if the run then fails), checks it can be written, and refuses
a folder that holds the outputs of an earlier run (``OUTPUT_FILES``) unless `overwrite` is given.
``write_results`` replaces the outputs together at the end: the plot and results.json are written
to temporary files first, and a plot that is not written this time (``--no-plot``, no
matplotlib, a failed plot) is removed, so a folder never pairs a new results.json with an old
plot. Other files in the folder are never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import pathlib
import platform
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

__all__ = [
    "PtqResult",
    "format_table",
    "plot_results",
    "results_dict",
    "write_results",
    "row_line",
    "output_folder",
    "write_outputs",
    "machine_description",
    "format_number",
    "OUTPUT_FILES",
]

RESULTS_JSON = "results.json"
PLOT_PNG = "ptq_plot.png"
OUTPUT_FILES = (RESULTS_JSON, PLOT_PNG)  # what a run writes to its folder, and nothing else

logger = logging.getLogger(__name__)


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


def results_dict(rows: list[PtqResult], metric: str, setup: dict) -> dict:
    """The content of results.json."""
    return {
        "metric": metric,
        "setup": setup,
        "weight_bytes_definition": (
            "quantized weights at their element bits + scales (fp16 per channel/block, fp32 per "
            "tensor, block scales at scale_bits, fp32 second-level scales, fp16 pre_quant_scale);"
            " every other parameter and the float baseline at 16 bits; tied parameters once"
        ),
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "rows": [dataclasses.asdict(r) for r in rows],
    }


def machine_description() -> str:
    """The ``machine`` entry of results.json: architecture, CPUs, torch version and GPU."""
    return (
        f"{platform.machine()} {os.cpu_count()} CPU, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}"
    )


def _os_reason(e: OSError) -> str:
    return e.strerror or str(e)


@contextlib.contextmanager
def output_folder(
    out_dir: str | os.PathLike | None,
    overwrite: bool = False,
    output_files: tuple[str, ...] = OUTPUT_FILES,
) -> Iterator[pathlib.Path | None]:
    """Checks and creates the output folder `out_dir` on entry (None: no folder, yields None),
    before the caller loads or computes anything; the folders it created are removed again when
    the body raises (and they are still empty), so a failed run leaves nothing behind.

    Raises ValueError (the ``mopt`` CLI's usage error, rc 2) when `out_dir` is a file or lies
    under one, cannot be created or written, or already holds the outputs of an earlier run
    (`output_files`: results.json or ptq_plot.png for ptq) and `overwrite` is False.
    """
    if out_dir is None:
        yield None
        return
    if str(out_dir) == "":
        raise ValueError("the output folder (--out) must not be empty")
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output folder (--out) {str(out)!r} is a file, not a folder")
    if out.is_dir() and not overwrite:
        found = [name for name in output_files if (out / name).exists()]
        if found:
            raise ValueError(
                f"the output folder (--out) {str(out)!r} already holds {' and '.join(found)} of "
                "an earlier run; pass --overwrite (overwrite=True) to replace them, or choose "
                "another folder"
            )
    created = []  # the folders this call creates, outermost first
    parent = out.absolute()
    while not parent.exists() and parent != parent.parent:
        created.insert(0, parent)
        parent = parent.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_created(created)
        raise ValueError(
            f"cannot create the output folder (--out) {str(out)!r}: {_os_reason(e)}"
        ) from None
    try:
        with tempfile.TemporaryFile(dir=out, prefix=".mopt-write-check-"):
            pass
    except OSError as e:
        _remove_created(created)
        raise ValueError(
            f"cannot write to the output folder (--out) {str(out)!r}: {_os_reason(e)}"
        ) from None
    try:
        yield out
    except BaseException:
        _remove_created(created)
        raise


def _remove_created(created: list[pathlib.Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()  # only when still empty
        except OSError:
            return


def write_results(
    results: dict,
    rows: list[PtqResult],
    out_dir: str | os.PathLike | None,
    metric: str,
    plot: bool,
    log: Callable[[str], None],
) -> None:
    """Logs the ptq table; with `out_dir`, writes results.json and ptq_plot.png there (see
    ``write_outputs``)."""
    write_outputs(
        results,
        format_table(rows, metric),
        out_dir,
        PLOT_PNG,
        (lambda path: plot_results(rows, path, metric)) if plot else None,
        log,
    )


def write_outputs(
    results: dict,
    table: str,
    out_dir: str | os.PathLike | None,
    plot_name: str,
    plot: Callable[[pathlib.Path], pathlib.Path | None] | None,
    log: Callable[[str], None],
) -> None:
    """Logs `table`; with `out_dir`, writes results.json and the plot `plot_name` there and
    records their paths in `results`. `plot(path)` draws the PNG at `path` and returns it (None:
    nothing drawn); `plot` None writes no plot. Both are written to temporary files first and
    then replace the folder's outputs together; a plot not written this time is removed (no stale
    plot beside a new results.json). A failing plot is a warning, never a lost run."""
    log("")
    log(table)
    if out_dir is None:
        return
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp_json, tmp_png = out / (RESULTS_JSON + ".tmp"), out / (".tmp." + plot_name)
    try:
        png = None
        if plot is not None:
            try:
                png = plot(tmp_png)
            except Exception as e:  # noqa: BLE001 - the results matter more than their plot
                logger.warning("the plot failed, none written: %s: %s", type(e).__name__, e)
                png = None
        tmp_json.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
        if png is not None:
            os.replace(tmp_png, out / plot_name)
        else:
            (out / plot_name).unlink(missing_ok=True)
        os.replace(tmp_json, out / RESULTS_JSON)
    finally:
        tmp_json.unlink(missing_ok=True)
        tmp_png.unlink(missing_ok=True)
    results["results_json"] = str(out / RESULTS_JSON)
    if plot is not None:
        results["plot"] = str(out / plot_name) if png is not None else None
    log(f"results: {out / RESULTS_JSON}")
    if results.get("plot"):
        log(f"plot: {results['plot']}")


def format_number(v: float | None, spec: str, empty: str = "-") -> str:
    """`v` formatted with `spec`; `empty` for None or NaN (a table cell without a value)."""
    return empty if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


_fmt = format_number


def row_line(r: PtqResult, metric: str) -> str:
    """One progress line for a finished row."""
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


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a warning logged) when matplotlib is
    not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed; no plot written")
        return None
    return plt


def plot_results(rows: list[PtqResult], path: str | os.PathLike, metric: str = "perplexity"):
    """PNG of the metric change against effective bits, one labelled point per config. Returns
    the path, or None (with a warning logged) when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
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
