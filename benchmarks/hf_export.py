#!/usr/bin/env python3
"""Size and time of mopt's unified Hugging Face checkpoint per format, against the bf16
checkpoint of the same model (save_pretrained in bf16), on the seeded Llama of the differential
test (hidden 256, intermediate 512, 2 layers, vocabulary 512) scaled up by --layers / --hidden.

    PYTHONPATH=python python3 benchmarks/hf_export.py [--hidden 1024] [--layers 4]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time
import warnings

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python" / "export"))

FORMATS = [("fp8", "FP8_DEFAULT_CFG"), ("int8_sq", "INT8_SMOOTHQUANT_CFG"),
           ("int4_awq", "INT4_AWQ_CFG"), ("w4a8_awq", "W4A8_AWQ_BETA_CFG"),
           ("nvfp4", "NVFP4_DEFAULT_CFG"), ("nvfp4_awq", "NVFP4_AWQ_LITE_CFG")]


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import modelopt_hf_writer as w

    import mopt.quantization as mtq
    from mopt.export import export_hf_checkpoint

    w.LLAMA.update(hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                   num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4)
    batches = w.calib_batches()
    tmp = tempfile.mkdtemp()
    base = w.build_llama()
    params = sum(p.numel() for p in base.parameters())
    base.to(torch.bfloat16).save_pretrained(os.path.join(tmp, "bf16"))
    bf16 = folder_bytes(os.path.join(tmp, "bf16"))
    print(f"Llama {params / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} layers); "
          f"bf16 checkpoint {bf16:,} bytes")
    print(f"{'format':<10} {'bytes':>12} {'vs bf16':>8} {'export s':>9}")
    for name, cfg in FORMATS:
        model = w.build_llama().to(torch.bfloat16)
        mtq.quantize(model, getattr(mtq, cfg), lambda m: [m(b) for b in batches])
        out = os.path.join(tmp, name)
        t0 = time.perf_counter()
        export_hf_checkpoint(model, export_dir=out)
        seconds = time.perf_counter() - t0
        size = folder_bytes(out)
        print(f"{name:<10} {size:>12,} {size / bf16:>8.3f} {seconds:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
