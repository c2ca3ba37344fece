"""Timing and table helpers shared by the benchmark scripts (benchmarks/*.py)."""

from __future__ import annotations

import pathlib
import statistics
import sys
import time
from typing import Callable

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "python"))


def time_interleaved(fns: dict, repeats: int, warmup: int = 1,
                     clock: Callable[[], float] = time.perf_counter) -> dict:
    """Median seconds per call of each callable; the calls of different callables interleave,
    so a change of load hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            samples[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table with right-aligned columns."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


def cuda_time(fn, inputs: list, iters: int, repeats: int, warmup: int) -> tuple[float, bool]:
    """Median seconds per call of `fn` over CUDA-event-timed loops of `iters` calls, each on the
    next of the rotating inputs. The loop is captured in a CUDA graph when possible, so that
    Python's launch overhead (microseconds, as long as a 4M-element kernel on a fast GPU) does not
    stand in for the kernel time; outputs are kept so every call writes fresh memory. Returns
    (seconds, whether a graph was used)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # graph capture wants warmed-up kernels and allocator
        for i in range(warmup):
            fn(inputs[i % len(inputs)])
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    def loop():
        return [fn(inputs[i % len(inputs)]) for i in range(iters)]

    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            kept = loop()  # noqa: F841  (alive for the graph's lifetime)
        run = graph.replay
    except RuntimeError:
        graph, run = None, loop
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / iters)
    del graph
    return statistics.median(times), run is not loop


def run_sections(cpu_section, gpu_section, sizes: list[int], repeats: int, warmup: int,
                 cpu: bool = True) -> None:
    """The CPU section (unless `cpu` is False), then the GPU one where CUDA is present, or a line
    saying that it is not."""
    with torch.inference_mode():
        if cpu:
            cpu_section(sizes, repeats, warmup)
        if torch.cuda.is_available():
            gpu_section(sizes, repeats, warmup)
        else:
            print("\n## GPU: no CUDA GPU is present (torch.cuda.is_available() is False); "
                  "GPU section skipped.")
