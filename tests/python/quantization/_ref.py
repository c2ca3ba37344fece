"""Naive references for the quantization tests, written from SPEC §5 with plain torch ops.

They share no code with mopt: integer rounding uses torch.round (half to even), minifloat values
come from enumerating every code of the format. They are deliberately slow and simple.
"""

from __future__ import annotations

import functools
import itertools

import torch

TINY_AMAX = 2.0**-24


def int_bounds(num_bits: int, unsigned: bool = False, narrow_range: bool = False):
    maxbound = 2 ** (num_bits - 1 + int(unsigned)) - 1
    if unsigned:
        minbound = 0
    elif narrow_range:
        minbound = -maxbound
    else:
        minbound = -maxbound - 1
    return float(minbound), float(maxbound)


def fake_quant_int(x: torch.Tensor, amax, num_bits: int = 8, unsigned: bool = False,
                   narrow_range: bool = False) -> torch.Tensor:
    """SPEC §5 integer fake quantization, computed in fp32 and cast back to x.dtype."""
    minbound, maxbound = int_bounds(num_bits, unsigned, narrow_range)
    x32 = x.detach().float()
    amax32 = torch.as_tensor(amax, dtype=torch.float32).expand_as(x32)
    scale = torch.full_like(amax32, maxbound) / amax32
    q = torch.clamp(torch.round(x32 * scale), minbound, maxbound)
    y = q / scale
    y = torch.where(amax32 <= TINY_AMAX, torch.zeros_like(y), y)
    return y.to(x.dtype)


@functools.cache
def minifloat_values(exponent_bits: int, mantissa_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All non-negative finite values of an E/M format (float64, ascending) and whether each one
    has an even mantissa code. E4M3 is the FN variant (only S.1111.111 is NaN), E5M2 follows IEEE
    (the top exponent is inf/NaN), the OCP FP6/FP4 formats use every code."""
    bias = 2 ** (exponent_bits - 1) - 1
    values = {}
    for e, m in itertools.product(range(2**exponent_bits), range(2**mantissa_bits)):
        if exponent_bits == 5 and e == 2**exponent_bits - 1:
            continue
        if (exponent_bits, mantissa_bits) == (4, 3) and e == 15 and m == 7:
            continue
        if e == 0:
            v = (m / 2**mantissa_bits) * 2.0 ** (1 - bias)
        else:
            v = (1 + m / 2**mantissa_bits) * 2.0 ** (e - bias)
        values[v] = m % 2 == 0
    keys = sorted(values)
    return (torch.tensor(keys, dtype=torch.float64),
            torch.tensor([values[k] for k in keys], dtype=torch.bool))


def round_to_minifloat(v: torch.Tensor, exponent_bits: int, mantissa_bits: int) -> torch.Tensor:
    """Nearest representable value (ties to the even code), saturating at the largest one."""
    grid, even = minifloat_values(exponent_bits, mantissa_bits)
    a = v.double().abs().clamp(max=grid[-1].item())
    dist = (a.reshape(-1, 1) - grid.reshape(1, -1)).abs()
    best = dist.min(dim=1, keepdim=True).values
    candidates = dist == best
    # among ties prefer the even code; a unique nearest value wins outright
    prefer = candidates & even.reshape(1, -1)
    pick = torch.where(prefer.any(dim=1, keepdim=True), prefer, candidates).double()
    idx = pick.argmax(dim=1)
    out = grid[idx].reshape(v.shape) * torch.sign(v.double())
    return torch.where(torch.isnan(v), v.double(), out)


def minifloat_max(exponent_bits: int, mantissa_bits: int) -> float:
    return minifloat_values(exponent_bits, mantissa_bits)[0][-1].item()


def fake_quant_fp(x: torch.Tensor, amax, exponent_bits: int = 4,
                  mantissa_bits: int = 3) -> torch.Tensor:
    """SPEC §5 minifloat: y = fmt(x * maxval/amax) * amax/maxval (amax None: unscaled cast)."""
    x32 = x.detach().float()
    if amax is None:
        return round_to_minifloat(x32, exponent_bits, mantissa_bits).to(x.dtype)
    maxval = minifloat_max(exponent_bits, mantissa_bits)
    amax32 = torch.as_tensor(amax, dtype=torch.float32).expand_as(x32)
    scale = torch.full_like(amax32, maxval) / amax32
    q = round_to_minifloat(x32 * scale, exponent_bits, mantissa_bits)
    y = (q * (amax32.double() / maxval)).float()
    y = torch.where(amax32 <= TINY_AMAX, torch.zeros_like(y), y)
    return y.to(x.dtype)


def amax(x: torch.Tensor, keep_axes=()) -> torch.Tensor:
    """max |x| over every dim not in keep_axes, keepdims, float32."""
    keep = {a % x.dim() for a in keep_axes}
    reduce = [d for d in range(x.dim()) if d not in keep]
    out = x.detach().double().abs()
    if reduce:
        out = out.amax(dim=reduce, keepdim=True)
    return out.float()


def fake_quant_int_blocks(x: torch.Tensor, block: int, num_bits: int = 4, unsigned: bool = False,
                          narrow_range: bool = False, amax_blocks: torch.Tensor | None = None):
    """Static blocks along the last axis: zero-pad to a multiple of `block`, one amax per block
    (the dynamic max of the block unless given), quantize, drop the padding."""
    n = x.shape[-1]
    pad = (-n) % block
    xp = torch.nn.functional.pad(x.float(), (0, pad))
    xb = xp.reshape(*x.shape[:-1], (n + pad) // block, block)
    a = amax_blocks if amax_blocks is not None else amax(xb, keep_axes=range(xb.dim() - 1))
    y = fake_quant_int(xb, a, num_bits, unsigned, narrow_range)
    return y.reshape(*x.shape[:-1], n + pad)[..., :n].to(x.dtype)


def ste_grad(grad: torch.Tensor, x: torch.Tensor, amax) -> torch.Tensor:
    """Clipped straight-through estimator: grad where |x| <= amax, else 0."""
    bound = torch.as_tensor(amax, dtype=torch.float32)
    return torch.where(x.detach().float().abs() <= bound, grad, torch.zeros_like(grad))
