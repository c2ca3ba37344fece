#!/usr/bin/env python3
"""Seconds of mtq.quantize and of mtq.calibrate alone on stories260K with the make-demo
calibration data (16 windows of 512 tokens, batches of 4, one thread), median of 7 runs per
config. Uses only names that every mopt version since issue 3 has, so the same script times two
checkouts (run it with each one's python/ on PYTHONPATH, alternating) to compare them.

Run: PYTHONPATH=python python3 benchmarks/bench_quantize_time.py INT8_DEFAULT_CFG,FP8_DEFAULT_CFG
"""

import contextlib
import copy
import io
import statistics
import sys
import time
import warnings

import torch

import mopt.quantization as mtq
from mopt import data as mdata
from mopt.eval import make_forward_loop, text_calibration_batches
from mopt.ptq import resolve_model


def main() -> None:
    names = (sys.argv[1] if len(sys.argv) > 1 else "INT8_DEFAULT_CFG,FP8_DEFAULT_CFG").split(",")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    source = resolve_model("default")
    batches = text_calibration_batches(source.encode(mdata.default_calib_text()), 16, 512, 0)
    loop = make_forward_loop(batches, 4)
    base = source.load().eval()
    for name in names:
        cfg = getattr(mtq, name)
        quantize_s, calibrate_s = [], []
        for _ in range(7):
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                mtq.quantize(model, copy.deepcopy(cfg), loop)
            quantize_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mtq.calibrate(model, cfg["algorithm"], loop)
            calibrate_s.append(time.perf_counter() - t0)
        print(f"{name}: quantize {statistics.median(quantize_s) * 1e3:.0f} ms, "
              f"calibrate {statistics.median(calibrate_s) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
