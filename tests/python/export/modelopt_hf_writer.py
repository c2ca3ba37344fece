"""Quantize a small seeded Llama with nvidia-modelopt and write ModelOpt's own files, for the
differential test of mopt's unified Hugging Face export.

Usage: python3 modelopt_hf_writer.py <out_dir> <format>...   (formats: keys of CONFIGS)

For each format it writes <out_dir>/<format>.pth (``mto.save``: the quantized state and weights
before export, which mopt restores) and <out_dir>/<format>_hf/ (``export_hf_checkpoint``). A
format ModelOpt cannot export on CPU is reported on stderr as ``FAILED <format>: <error>`` and the
others are still written.

Runs in its own process: ModelOpt must never be imported into the process that imports mopt.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import torch

# hidden and intermediate sizes hold INT4 blocks of 128 and NVFP4 blocks of 16; two KV heads of
# four so q / k / v differ in shape; the vocabulary of the shipped tok512 tokenizer.
LLAMA = {"vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 256, "tie_word_embeddings": False}
CONFIGS = {
    "fp8": "FP8_DEFAULT_CFG",
    "int8_sq": "INT8_SMOOTHQUANT_CFG",
    "int4_awq": "INT4_AWQ_CFG",
    "w4a8_awq": "W4A8_AWQ_BETA_CFG",
    "nvfp4": "NVFP4_DEFAULT_CFG",
    "nvfp4_awq": "NVFP4_AWQ_LITE_CFG",
}


def build_llama(seed: int = 0):
    """The seeded model both sides build (mopt's test rebuilds it with the same call)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**LLAMA)
    cfg.architectures = ["LlamaForCausalLM"]
    return LlamaForCausalLM(cfg).eval()


def calib_batches(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, LLAMA["vocab_size"], (2, 64), generator=g) for _ in range(2)]


def main() -> int:
    out_dir, names = sys.argv[1], sys.argv[2:]
    warnings.filterwarnings("ignore")
    import modelopt.torch.opt as mto
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        try:
            model = build_llama()
            batches = calib_batches()

            def loop(m, batches=batches):
                for b in batches:
                    m(b)

            with torch.no_grad():
                mtq.quantize(model, getattr(mtq, CONFIGS[name]), loop)
            mto.save(model, os.path.join(out_dir, f"{name}.pth"))
            with torch.no_grad():
                export_hf_checkpoint(model, export_dir=os.path.join(out_dir, f"{name}_hf"))
        except Exception as e:  # noqa: BLE001 - reported per format, the caller decides
            print(f"FAILED {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
