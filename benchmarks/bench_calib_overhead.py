#!/usr/bin/env python3
"""What calibration costs on top of the forward loop it runs, on the real stories260K model.

For INT8_DEFAULT_CFG and FP8_DEFAULT_CFG, with the calibration data of `make demo` (16 windows of
512 tokens of TinyStories text, batches of 4), one run times, interleaved:

* the float forward loop: one pass of the calibration batches through the float model,
* mopt's calibration end to end: ``mtq.calibrate(model, "max", loop)`` on the quantized model
  (switching every static quantizer to collecting, the pass with collection, loading amax,
  weight-only calibration of unreached layers, the amax checks),
* the quantized forward: the same loop through the calibrated model.

The goal of the quantizer core (issue 8): calibration at most 10% more than the float pass.

Run: PYTHONPATH=python python3 benchmarks/bench_calib_overhead.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import platform

import _bench_common as bc  # noqa: F401  (puts python/ on sys.path)
import torch

import mopt.quantization as mtq
from mopt import data as mdata
from mopt.eval import make_forward_loop, text_calibration_batches
from mopt.ptq.models import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    source = resolve_model("default")
    batches = text_calibration_batches(source.encode(mdata.default_calib_text()), 16, 512, 0)
    loop = make_forward_loop(batches, 4)
    float_model = source.load().eval()

    print(f"stories260K, 16 x 512 tokens in batches of 4; {platform.machine()}, "
          f"{os.cpu_count()} logical CPUs, torch {torch.__version__}, {args.threads} thread(s); "
          f"median of {args.repeats} interleaved runs")
    rows = []
    for name in ("INT8_DEFAULT_CFG", "FP8_DEFAULT_CFG"):
        model = copy.deepcopy(float_model)
        with contextlib.redirect_stdout(io.StringIO()):
            mtq.quantize(model, copy.deepcopy(getattr(mtq, name)), loop)

        def float_pass() -> None:
            with torch.no_grad():
                loop(float_model)

        def calibrate() -> None:
            mtq.calibrate(model, "max", loop)

        def quantized_pass() -> None:
            with torch.no_grad():
                loop(model)

        t = bc.time_interleaved({"float": float_pass, "calibrate": calibrate,
                                 "quantized": quantized_pass}, args.repeats)
        rows.append([name, f"{t['float'] * 1e3:.0f}", f"{t['calibrate'] * 1e3:.0f}",
                     f"{t['calibrate'] / t['float']:.2f}", f"{t['quantized'] * 1e3:.0f}",
                     f"{t['quantized'] / t['float']:.2f}"])
    bc.print_table(["config", "float pass ms", "calibrate ms", "calibrate / float",
                    "quantized pass ms", "quantized / float"], rows)


if __name__ == "__main__":
    main()
