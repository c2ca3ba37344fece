"""What ``--model`` names, resolved before anything heavy is loaded, and the text files."""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = ["ModelSource", "resolve_model", "read_text"]


@dataclass
class ModelSource:
    """A resolved --model: its tokenizer now, the model itself on demand (after the input
    checks, so a bad argument fails fast)."""

    description: str
    encode: Callable[[str], list[int]]
    max_seq_len: int
    load: Callable[[], nn.Module]


def read_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of `path`; FileNotFoundError / ValueError name `what` and the path."""
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
    from ..models.llama2c import Llama2cTokenizer, llama2c_config, load_llama2c

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
