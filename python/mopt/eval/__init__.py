"""Evaluation and calibration data for language models.

* ``perplexity(model, token_ids, seq_len, stride=None)``: sliding-window perplexity with a
  progress bar. Each window feeds ``seq_len`` tokens and scores the next-token predictions that no
  earlier window scored (stride None = ``seq_len``: non-overlapping windows, every token after the
  first predicted exactly once).
* ``text_calibration_batches(token_ids, n_samples, seq_len, seed)``: seeded, non-overlapping
  windows of calibration ids, and ``make_forward_loop(batches, batch_size)`` to feed them to
  ``mtq.quantize``. Nothing here keeps activations: each batch's output is dropped at once, so
  calibration memory is whatever the algorithm's statistics need.
* MiniLM sentence-embedding helpers live in ``mopt.eval.embeddings``.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "perplexity",
    "negative_log_likelihood",
    "sliding_windows",
    "text_calibration_batches",
    "make_forward_loop",
]


def _as_ids(token_ids: Sequence[int] | torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    if isinstance(token_ids, np.ndarray):
        token_ids = torch.from_numpy(token_ids)
    ids = token_ids if isinstance(token_ids, torch.Tensor) else torch.as_tensor(list(token_ids))
    if ids.dim() != 1:
        raise ValueError(
            f"{what} must be a 1-D sequence of token ids, got shape {tuple(ids.shape)}"
        )
    if ids.numel() and (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool):
        raise TypeError(f"{what} must hold integer token ids, got dtype {ids.dtype}")
    return ids.to(torch.long).cpu()


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def sliding_windows(
    n_tokens: int, seq_len: int, stride: int | None = None
) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) of each window over `n_tokens` ids.

    A window feeds ids[begin:end] (at most seq_len) and predicts ids[begin+1:end+1]; it scores the
    targets at positions >= first_scored, those no earlier window scored. Together the windows
    score every position 1..n_tokens-1 exactly once.
    """
    seq_len = _check_positive_int(seq_len, "seq_len")
    stride = seq_len if stride is None else _check_positive_int(stride, "stride")
    if stride > seq_len:
        raise ValueError(
            f"stride ({stride}) must not exceed seq_len ({seq_len}): tokens would be skipped"
        )
    if n_tokens < seq_len + 1:
        raise ValueError(
            f"the text is too short for one window: {n_tokens} tokens, but a window of seq_len="
            f"{seq_len} needs {seq_len + 1} (seq_len inputs plus the next token)"
        )
    windows = []
    scored_until = 1  # position 0 (BOS or the first token) has no prediction
    begin = 0
    while scored_until < n_tokens:
        end = min(begin + seq_len, n_tokens - 1)
        windows.append((begin, end, scored_until))
        scored_until = end + 1
        begin += stride
    return windows


def _logits(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"the model must return logits (a tensor, or an output with .logits), got "
            f"{type(output).__name__}"
        )
    return logits


def _forward(model: nn.Module, ids: torch.Tensor):
    # Hugging Face causal LMs return a KV cache by default; nothing here decodes, so skip it.
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "use_cache", None) is not None:
        return model(ids, use_cache=False)
    return model(ids)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def negative_log_likelihood(
    model: nn.Module,
    token_ids: Sequence[int] | torch.Tensor | np.ndarray,
    seq_len: int,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[float, int]:
    """(summed negative log-likelihood in nats, number of predicted tokens) of `token_ids` under
    `model` (see perplexity)."""
    ids = _as_ids(token_ids, "token_ids")
    batch_size = _check_positive_int(batch_size, "batch_size")
    windows = sliding_windows(ids.numel(), seq_len, stride)
    device = _model_device(model)
    # Windows of equal length are batched; only the final window can be shorter.
    groups: list[list[tuple[int, int, int]]] = []
    for w in windows:
        if (
            groups
            and len(groups[-1]) < batch_size
            and groups[-1][0][1] - groups[-1][0][0] == w[1] - w[0]
        ):
            groups[-1].append(w)
        else:
            groups.append([w])
    from tqdm.auto import tqdm

    total = 0.0
    count = 0
    was_training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            tqdm(
                total=len(windows),
                desc="perplexity",
                unit="win",
                file=sys.stderr,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            for group in groups:
                inputs = torch.stack([ids[b:e] for b, e, _ in group]).to(device)
                targets = torch.stack([ids[b + 1 : e + 1] for b, e, _ in group]).to(device)
                logits = _logits(_forward(model, inputs))
                if logits.shape[:2] != inputs.shape:
                    raise ValueError(
                        f"model returned logits of shape {tuple(logits.shape)} for inputs of shape "
                        f"{tuple(inputs.shape)}; expected [batch, seq, vocab]"
                    )
                nll = nn.functional.cross_entropy(
                    logits.float().transpose(1, 2), targets, reduction="none"
                )  # [batch, seq]
                positions = torch.arange(inputs.shape[1], device=device) + 1
                for row, (b, _, first) in enumerate(group):
                    keep = positions + b >= first
                    total += float(nll[row][keep].double().sum())
                    count += int(keep.sum())
                bar.update(len(group))
    finally:
        model.train(was_training)
    return total, count


def perplexity(
    model: nn.Module,
    token_ids: Sequence[int] | torch.Tensor | np.ndarray,
    seq_len: int,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> float:
    """exp(mean next-token negative log-likelihood) of `token_ids` under a causal LM.

    Windows start every `stride` tokens (None: `seq_len`, i.e. non-overlapping) and feed
    `seq_len` ids; each scores only the predictions no earlier window scored, so every token
    after the first is predicted exactly once. `model(ids[batch, seq])` must return logits
    (a tensor or an output with ``.logits``). A tqdm bar goes to stderr unless `progress` is
    False. Raises ValueError when the ids do not fill one window (seq_len + 1 tokens).
    """
    total, count = negative_log_likelihood(model, token_ids, seq_len, stride, batch_size, progress)
    return math.exp(total / count)


def text_calibration_batches(
    token_ids: Sequence[int] | torch.Tensor | np.ndarray,
    n_samples: int,
    seq_len: int,
    seed: int = 0,
) -> torch.Tensor:
    """`n_samples` windows of `seq_len` calibration ids as a LongTensor [n_samples, seq_len].

    The ids are cut into non-overlapping windows and `n_samples` of them are drawn without
    replacement with a generator seeded by `seed` (same seed, same batches), in text order.
    Use ids of text disjoint from the evaluation text (mopt.data.default_calib_text()).
    """
    ids = _as_ids(token_ids, "token_ids")
    n_samples = _check_positive_int(n_samples, "n_samples")
    seq_len = _check_positive_int(seq_len, "seq_len")
    n_windows = ids.numel() // seq_len
    if n_windows < n_samples:
        raise ValueError(
            f"the calibration text is too short: {ids.numel()} tokens hold {n_windows} "
            f"non-overlapping windows of seq_len={seq_len}, but n_samples={n_samples} were asked"
        )
    gen = torch.Generator().manual_seed(int(seed))
    chosen = torch.randperm(n_windows, generator=gen)[:n_samples].sort().values
    return ids[: n_windows * seq_len].view(n_windows, seq_len)[chosen].clone()


def make_forward_loop(batches: torch.Tensor, batch_size: int = 1) -> Callable[[nn.Module], None]:
    """forward_loop(model) for ``mtq.quantize``: runs `batches` ([n, seq_len] ids) through the
    model `batch_size` rows at a time on the model's device, under no_grad, dropping every
    output (calibrators stream their statistics; no activation is kept)."""
    if not isinstance(batches, torch.Tensor) or batches.dim() != 2:
        raise ValueError(
            "batches must be a [n_samples, seq_len] tensor of token ids (text_calibration_batches)"
        )
    batch_size = _check_positive_int(batch_size, "batch_size")

    def forward_loop(model: nn.Module) -> None:
        device = _model_device(model)
        with torch.no_grad():
            for chunk in batches.split(batch_size):
                _forward(model, chunk.to(device))

    return forward_loop
