"""Shared pieces of the SmoothQuant and AWQ tests: the real stories260K model, seeded calibration
batches of real TinyStories text, the real per-layer activations, and float64 oracles of the
published algorithms (SmoothQuant, Xiao et al. 2023; AWQ, Lin et al. 2024, as SPEC §5 and the
reference implementation state them) written with plain torch ops, sharing no code with mopt."""

from __future__ import annotations

import copy
import functools

import mopt.quantization as mtq
from mopt.data import default_eval_text
from mopt.eval import make_forward_loop, perplexity
from mopt.models import load_llama2c

from .. import _stories as stories

import torch
from torch import nn

CALIB_SAMPLES = 8
CALIB_SEQ_LEN = 128
CALIB_BATCH = 2
TINY = torch.finfo(torch.float32).tiny


@functools.lru_cache(maxsize=1)
def _float_model() -> nn.Module:
    return load_llama2c().eval()


def fresh_model() -> nn.Module:
    """A private copy of the float stories260K model."""
    return copy.deepcopy(_float_model())


def calib_batches() -> torch.Tensor:
    """Seeded windows of the calibration text (disjoint from the evaluation text)."""
    return stories.calib_batches(CALIB_SAMPLES, CALIB_SEQ_LEN)


def forward_loop():
    return make_forward_loop(calib_batches(), batch_size=CALIB_BATCH)


@functools.lru_cache(maxsize=1)
def eval_ids() -> list[int]:
    return stories.tokenizer().encode(default_eval_text())


def eval_perplexity(model: nn.Module, n_tokens: int | None = None) -> float:
    ids = eval_ids()
    if n_tokens is not None:
        ids = ids[:n_tokens]
    return perplexity(model, ids, seq_len=512, progress=False)


@functools.lru_cache(maxsize=1)
def float_activations() -> dict[str, list[torch.Tensor]]:
    """Inputs of every nn.Linear of the float model per calibration batch, as float64
    [tokens, in]. While AWQ searches, every searched layer computes in float, so these are
    exactly the inputs the algorithms see."""
    model = fresh_model()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n]
    acts = stories.layer_inputs(model, names, calib_batches(), CALIB_BATCH)
    return {n: [x.double().reshape(-1, x.shape[-1]) for x in v] for n, v in acts.items()}


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every tensor of the model's state dict (to check a failed call changed none)."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach().double().clone() for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and "lm_head" not in name}


def quantize(config: dict, model: nn.Module | None = None) -> nn.Module:
    model = fresh_model() if model is None else model
    return mtq.quantize(model, copy.deepcopy(config), forward_loop())


def with_block(config: dict, block: int) -> dict:
    """A copy of an INT4 config with block size `block` on every INT4 weight stage."""
    config = copy.deepcopy(config)
    w = config["quant_cfg"]["*weight_quantizer"]
    for stage in (w if isinstance(w, list) else [w]):
        if stage.get("num_bits") == 4:
            stage["block_sizes"] = {**stage["block_sizes"], -1: block}
    return config


# -------------------------------------------------------------------------------------------
# float64 oracles


def oracle_int_quant_blocks(w: torch.Tensor, block: int, bits: int = 4,
                            amax: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric integer fake quant per block of `block` along rows, zero padded, amax per
    block = max |w| unless given ([rows, n_blocks]); round half to even."""
    rows, cols = w.shape
    pad = (-cols) % block
    wp = torch.nn.functional.pad(w, (0, pad)).reshape(rows, -1, block)
    a = wp.abs().amax(-1) if amax is None else amax.reshape(rows, -1)
    maxb = 2 ** (bits - 1) - 1
    scale = maxb / a.unsqueeze(-1)
    q = torch.clamp(torch.round(wp * scale), -maxb - 1, maxb) / scale
    q = torch.where(a.unsqueeze(-1) <= 2.0**-24, torch.zeros_like(q), q)
    return q.reshape(rows, -1)[:, :cols]


def oracle_smoothquant(x_batches: list[torch.Tensor], w: torch.Tensor, alpha: float):
    """SmoothQuant: s_j = max|W_:j|^(1-a) / max|X_:j|^a, clamped to [1e-4, 1e4] (1 for a dead
    channel); returns s, W / s, the per-tensor input amax max_j(act_j s_j)."""
    act = torch.stack([x.abs().amax(0) for x in x_batches]).amax(0)
    wmax = w.abs().amax(0)
    s = wmax ** (1 - alpha) / act**alpha
    s = torch.where(act <= 2.0**-31, torch.ones_like(s), s).clamp(1e-4, 1e4)
    return s, w / s, (act * s).max()


def oracle_awq_weight_scale(w: torch.Tensor, block: int) -> torch.Tensor:
    rows, cols = w.shape
    pad = (-cols) % block
    wp = torch.nn.functional.pad(w.abs(), (0, pad)).reshape(rows, -1, block)
    rel = wp / (wp.amax(-1, keepdim=True) + TINY)
    return rel.reshape(rows, -1)[:, :cols].mean(0)


def oracle_awq_scale(act: torch.Tensor, wscale: torch.Tensor, alpha: float) -> torch.Tensor:
    s = (act**alpha / (wscale ** (1 - alpha) + TINY)).clamp(1e-4, 1e4)
    return s / (s.max() * s.min()).sqrt()


def oracle_awq_lite(x_batches: list[torch.Tensor], w: torch.Tensor, block: int,
                    alphas: list[float]):
    """AWQ lite: act = mean over batches of each batch's mean |x|; for each alpha the summed
    per-batch output MSE of x/s @ Q(W s)^T against x @ W^T. Returns (losses, act, wscale)."""
    act = torch.stack([x.abs().mean(0) for x in x_batches]).mean(0)
    wscale = oracle_awq_weight_scale(w, block)
    losses = []
    for alpha in alphas:
        s = oracle_awq_scale(act, wscale, alpha)
        q = oracle_int_quant_blocks(w * s, block)
        losses.append(sum(float((((x / s) @ q.T - x @ w.T) ** 2).mean()) for x in x_batches))
    return torch.tensor(losses, dtype=torch.float64), act, wscale


def oracle_awq_clip(x_batches: list[torch.Tensor], w: torch.Tensor, block: int,
                    ratios: list[float], max_tokens: int = 64) -> torch.Tensor:
    """AWQ clip losses [n_ratios, rows, n_blocks]: for each ratio r of each block's max |w|,
    the mean over sampled tokens x[::max(1, T // max_tokens)] of the squared error of the
    block's partial dot product, summed over batches."""
    rows, cols = w.shape
    pad = (-cols) % block
    nb = (cols + pad) // block
    wmax = torch.nn.functional.pad(w.abs(), (0, pad)).reshape(rows, nb, block).amax(-1)
    out = torch.zeros(len(ratios), rows, nb, dtype=torch.float64)
    for k, r in enumerate(ratios):
        # amax * r is formed in fp32 by the quantizer, exactly as written here
        clipped = (wmax.float() * torch.tensor(r, dtype=torch.float32)).double()
        err = torch.nn.functional.pad(oracle_int_quant_blocks(w, block, amax=clipped) - w,
                                      (0, pad)).reshape(rows, nb, block)
        for x in x_batches:
            xs = x[:: max(1, x.shape[0] // max_tokens)]
            xb = torch.nn.functional.pad(xs, (0, pad)).reshape(-1, nb, block)
            partial = torch.einsum("tnb,rnb->trn", xb, err)
            out[k] += (partial**2).mean(0)
    return out
