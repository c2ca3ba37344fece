"""The real DDPM denoisers mopt's diffusion caching is measured on, and their samplers.

Two checkpoint formats (``../shared/data/README.md``; copies ship in ``mopt.data``):

* ``ddpm_fashion_unet.pt``: a U-Net noise predictor trained on Fashion-MNIST (606,852
  parameters, keys under ``network.``). :class:`FashionUNet` is mopt's own model for it, written
  so that its depth is nested named submodules: the top level is the 28x28 path, ``inner`` the
  14x14 path and ``inner.inner`` the 7x7 / 3x3 path. Each inner level takes ``(h, t_emb)`` and
  returns the features the level above concatenates with its skip, so block-level caching
  (DeepCache) that wraps ``inner`` reuses everything below 28x28, and wrapping ``inner.inner``
  only the 7x7-and-below part.
* ``ddpm_mnist.pth``: a plain-CNN noise predictor trained on MNIST (keys under ``gt.`` plus its
  schedule ``beta_t`` / ``alpha_t``): :class:`MnistDenoiser`. No skip connections: only whole
  denoiser calls can be cached.

``load_ddpm(path, kind)`` tells the formats apart by their keys and returns a
:class:`DDPMPipeline`, which holds the model as ``pipe.denoiser`` (so a cache wrapper can replace
it or wrap its blocks), the noise schedule and the ancestral sampler: ``pipe(num_samples, seed)``
returns raw samples [N, 1, 28, 28] float32, the same for the same seed.

``flops_per_call`` and ``flops_by_module`` count the FLOPs of one denoiser call (whole and per
named submodule) with ``torch.utils.flop_counter``.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "FashionUNet",
    "MnistDenoiser",
    "DDPMPipeline",
    "load_ddpm",
    "ddpm_step",
    "ddpm_timesteps",
    "flops_per_call",
    "flops_by_module",
    "KINDS",
]

# Checkpoint kinds: the Fashion-MNIST U-Net and the MNIST plain CNN.
KINDS = ("fashion", "mnist")

_DEFAULT_FILES = {"fashion": "ddpm_fashion_unet.pt", "mnist": "ddpm_mnist.pth"}


def _check_images(x: torch.Tensor, shape: tuple[int, ...], model: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != shape:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{model}: expected images [N, {', '.join(map(str, shape))}], got {got}")


def _check_time(t: torch.Tensor, n: int, integer: bool, model: str) -> torch.Tensor:
    """t as [N] (from [N], [N, 1] or a scalar), checked for its dtype kind."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{model}: t must be a tensor, got {type(t).__name__}")
    if integer != (not torch.is_floating_point(t)):
        what = "integer step indices" if integer else "floating times t / T in (0, 1]"
        raise ValueError(f"{model}: t must hold {what}, got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(n)
    elif t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(
            f"{model}: t must be [N], [N, 1] or a scalar for N = {n}, got {tuple(t.shape)}"
        )
    return t


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST U-Net


class LayerNormConvBlock(nn.Module):
    """LayerNorm over (C, H, W) (optional), then two 3x3 convolutions, each followed by SiLU."""

    def __init__(self, shape: tuple[int, int, int], in_c: int, out_c: int, normalize: bool = True):
        super().__init__()
        self.ln = nn.LayerNorm(shape)
        self.conv1 = nn.Conv2d(in_c, out_c, 3, 1, 1)
        self.conv2 = nn.Conv2d(out_c, out_c, 3, 1, 1)
        self.act = nn.SiLU()
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x) if self.normalize else x
        return self.act(self.conv2(self.act(self.conv1(h))))


def _stage(size: int, channels: Sequence[int], normalize_last: bool = True) -> nn.Sequential:
    """Three LayerNormConvBlocks through channels[0] -> ... -> channels[3] at size x size."""
    blocks = [
        LayerNormConvBlock(
            (channels[i], size, size), channels[i], channels[i + 1], normalize_last or i < 2
        )
        for i in range(3)
    ]
    return nn.Sequential(*blocks)


def _time_mlp(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.SiLU(), nn.Linear(dim_out, dim_out))


def _add_time(h: torch.Tensor, mlp: nn.Module, t_emb: torch.Tensor) -> torch.Tensor:
    return h + mlp(t_emb).reshape(h.shape[0], -1, 1, 1)


class FashionUNetInner7(nn.Module):
    """The 7x7 / 3x3 path of :class:`FashionUNet` (``inner.inner``): [N, 20, 7, 7] from down2
    and the time embedding -> the [N, 20, 7, 7] features that up2 upsamples."""

    def __init__(self, time_emb_dim: int = 100):
        super().__init__()
        self.te3 = _time_mlp(time_emb_dim, 20)
        self.b3 = _stage(7, (20, 40, 40, 40))
        self.down3 = nn.Sequential(nn.Conv2d(40, 40, 2, 1), nn.SiLU(), nn.Conv2d(40, 40, 4, 2, 1))
        self.te_mid = _time_mlp(time_emb_dim, 40)
        self.b_mid = _stage(3, (40, 20, 20, 40))
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(40, 40, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(40, 40, 2, 1)
        )
        self.te4 = _time_mlp(time_emb_dim, 80)
        self.b4 = _stage(7, (80, 40, 20, 20))

    def forward(self, h: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        skip = self.b3(_add_time(h, self.te3, t_emb))  # [N, 40, 7, 7]
        mid = self.b_mid(_add_time(self.down3(skip), self.te_mid, t_emb))  # [N, 40, 3, 3]
        return self.b4(_add_time(torch.cat((skip, self.up1(mid)), dim=1), self.te4, t_emb))


class FashionUNetInner14(nn.Module):
    """The 14x14 path of :class:`FashionUNet` (``inner``): [N, 10, 14, 14] from down1 and the
    time embedding -> the [N, 10, 14, 14] features that up3 upsamples."""

    def __init__(self, time_emb_dim: int = 100):
        super().__init__()
        self.te2 = _time_mlp(time_emb_dim, 10)
        self.b2 = _stage(14, (10, 20, 20, 20))
        self.down2 = nn.Conv2d(20, 20, 4, 2, 1)
        self.inner = FashionUNetInner7(time_emb_dim)
        self.up2 = nn.ConvTranspose2d(20, 20, 4, 2, 1)
        self.te5 = _time_mlp(time_emb_dim, 40)
        self.b5 = _stage(14, (40, 20, 10, 10))

    def forward(self, h: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        skip = self.b2(_add_time(h, self.te2, t_emb))  # [N, 20, 14, 14]
        deep = self.inner(self.down2(skip), t_emb)  # [N, 20, 7, 7]
        return self.b5(_add_time(torch.cat((skip, self.up2(deep)), dim=1), self.te5, t_emb))


class FashionUNet(nn.Module):
    """The U-Net of ``ddpm_fashion_unet.pt`` (1x28x28 images in [-1, 1], epsilon prediction).

    ``forward(x, t)``: x [N, 1, 28, 28], t integer step indices 0..n_steps-1 as [N, 1] or [N];
    returns the predicted noise [N, 1, 28, 28]. The step index is looked up in a frozen
    sinusoidal table (``time_embed``, loaded from the checkpoint) and each level adds its own
    small MLP of it. Levels: this module (28x28: b1, down1, up3, b_out, conv_out), ``inner``
    (14x14) and ``inner.inner`` (7x7 and the 3x3 bottleneck).
    """

    image_shape = (1, 28, 28)

    def __init__(self, n_steps: int = 1000, time_emb_dim: int = 100):
        super().__init__()
        self.n_steps = n_steps
        self.time_embed = nn.Embedding(n_steps, time_emb_dim)
        self.time_embed.requires_grad_(False)
        self.te1 = _time_mlp(time_emb_dim, 1)
        self.b1 = _stage(28, (1, 10, 10, 10))
        self.down1 = nn.Conv2d(10, 10, 4, 2, 1)
        self.inner = FashionUNetInner14(time_emb_dim)
        self.up3 = nn.ConvTranspose2d(10, 10, 4, 2, 1)
        self.te_out = _time_mlp(time_emb_dim, 20)
        self.b_out = _stage(28, (20, 10, 10, 10), normalize_last=False)
        self.conv_out = nn.Conv2d(10, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.image_shape, "FashionUNet")
        t_emb = self.time_embed(_check_time(t, x.shape[0], True, "FashionUNet"))  # [N, D]
        skip = self.b1(_add_time(x, self.te1, t_emb))  # [N, 10, 28, 28]
        deep = self.inner(self.down1(skip), t_emb)  # [N, 10, 14, 14]
        h = self.b_out(_add_time(torch.cat((skip, self.up3(deep)), dim=1), self.te_out, t_emb))
        return self.conv_out(h)


# Checkpoint module (under "network.") -> FashionUNet module.
_FASHION_NAMES = {
    "time_embed": "time_embed",
    "te1": "te1",
    "b1": "b1",
    "down1": "down1",
    "te2": "inner.te2",
    "b2": "inner.b2",
    "down2": "inner.down2",
    "te3": "inner.inner.te3",
    "b3": "inner.inner.b3",
    "down3": "inner.inner.down3",
    "te_mid": "inner.inner.te_mid",
    "b_mid": "inner.inner.b_mid",
    "up1": "inner.inner.up1",
    "te4": "inner.inner.te4",
    "b4": "inner.inner.b4",
    "up2": "inner.up2",
    "te5": "inner.te5",
    "b5": "inner.b5",
    "up3": "up3",
    "te_out": "te_out",
    "b_out": "b_out",
    "conv_out": "conv_out",
}


def _fashion_state(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        head, _, rest = key.partition(".")
        top, _, leaf = rest.partition(".")
        if head != "network" or top not in _FASHION_NAMES or not leaf:
            raise ValueError(f"Fashion U-Net checkpoint: unexpected key {key!r}")
        out[f"{_FASHION_NAMES[top]}.{leaf}"] = value
    return out


# ---------------------------------------------------------------------------------------------
# MNIST plain CNN


class ConvNormGelu(nn.Module):
    """Conv2d (same padding), LayerNorm over (C, H, W), GELU."""

    def __init__(self, in_c: int, out_c: int, size: int, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm((out_c, size, size))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class MnistDenoiser(nn.Module):
    """The plain-CNN noise predictor of ``ddpm_mnist.pth`` (1x28x28 images in [-0.5, 0.5]).

    ``forward(x, t)``: x [N, 1, size, size], t the time as t / T in (0, 1] (floating, [N, 1] or
    [N]: the model's own convention); returns the predicted noise. The time features
    ``[sin(t f), cos(t f) - 1]`` over ``frequencies`` go through ``time_embed`` (an MLP) and are
    added, broadcast over H and W, to the output of ``blocks[0]``; then ``blocks[1:]`` and
    ``conv_out``. The defaults are the shipped checkpoint's; :func:`load_ddpm` reads the sizes
    from the checkpoint.
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 32, 16),
        size: int = 28,
        kernel_size: int = 7,
        num_frequencies: int = 16,
        time_hidden: int = 128,
    ):
        super().__init__()
        self.image_shape = (1, size, size)
        chans = [1, *channels]
        self.register_buffer("frequencies", torch.zeros(num_frequencies))
        self.time_embed = nn.Sequential(
            nn.Linear(2 * num_frequencies, time_hidden),
            nn.GELU(),
            nn.Linear(time_hidden, time_hidden),
            nn.GELU(),
            nn.Linear(time_hidden, time_hidden),
            nn.GELU(),
            nn.Linear(time_hidden, chans[1]),
        )
        self.blocks = nn.ModuleList(
            ConvNormGelu(chans[i], chans[i + 1], size, kernel_size) for i in range(len(channels))
        )
        self.conv_out = nn.Conv2d(chans[-1], 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.image_shape, "MnistDenoiser")
        t = _check_time(t, x.shape[0], False, "MnistDenoiser").to(self.frequencies.dtype)
        phase = t[:, None] * self.frequencies[None, :]
        t_emb = self.time_embed(torch.cat((torch.sin(phase), torch.cos(phase) - 1.0), dim=1))
        h = self.blocks[0](x) + t_emb[:, :, None, None]
        for block in self.blocks[1:]:
            h = block(h)
        return self.conv_out(h)


def _mnist_state(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """The MnistDenoiser state dict and constructor arguments of a ``gt.`` checkpoint."""
    what = "MNIST DDPM checkpoint"
    convs = sorted(
        int(k.split(".")[2])
        for k in sd
        if k.startswith("gt.blocks.") and k.endswith(".net.0.weight") and k.split(".")[2].isdigit()
    )
    num_blocks = len(convs)
    if num_blocks < 1 or convs != list(range(num_blocks)):
        raise ValueError(f"{what}: expected conv blocks gt.blocks.0..K-1, found {convs}")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in ("beta_t", "alpha_t"):
            continue
        parts = key.split(".")
        if key == "gt.frequencies":
            out["frequencies"] = value
        elif parts[:2] == ["gt", "time_embed"] and len(parts) == 4:
            out[f"time_embed.{parts[2]}.{parts[3]}"] = value
        elif parts[:2] == ["gt", "blocks"] and len(parts) == 4 and parts[2] == str(num_blocks):
            out[f"conv_out.{parts[3]}"] = value
        elif (
            parts[:2] == ["gt", "blocks"]
            and len(parts) == 6
            and parts[3] == "net"
            and parts[4] in ("0", "1")
        ):
            out[f"blocks.{parts[2]}.{('conv', 'norm')[int(parts[4])]}.{parts[5]}"] = value
        else:
            raise ValueError(f"{what}: unexpected key {key!r}")

    def shape(name: str, dims: int) -> tuple[int, ...]:
        t = out.get(name)
        if t is None or t.dim() != dims:
            raise ValueError(f"{what}: expected a {dims}-D tensor for {name!r}")
        return tuple(int(s) for s in t.shape)

    kwargs = dict(
        channels=tuple(shape(f"blocks.{i}.conv.weight", 4)[0] for i in range(num_blocks)),
        size=shape("blocks.0.norm.weight", 3)[-1],
        kernel_size=shape("blocks.0.conv.weight", 4)[-1],
        num_frequencies=shape("frequencies", 1)[0],
        time_hidden=shape("time_embed.0.weight", 2)[0],
    )
    return out, kwargs


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{what}: entry {name!r} is a {type(value).__name__}, not a tensor")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{what}: missing tensors {missing[:8]}, unexpected tensors {unexpected[:8]}"
        )
    for name, value in state.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{what}: tensor {name!r} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(expected[name].shape)}"
            )
        if not torch.is_floating_point(value):
            raise ValueError(f"{what}: tensor {name!r} has dtype {value.dtype}, expected floats")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


# ---------------------------------------------------------------------------------------------
# Scheduler and pipeline


def ddpm_timesteps(num_train_steps: int, num_inference_steps: int) -> torch.Tensor:
    """Schedule positions 0..num_train_steps-1 visited by a sampler of ``num_inference_steps``,
    in sampling order: evenly strided with stride num_train_steps // num_inference_steps from 0
    ("leading" spacing, as diffusers' DDPMScheduler.set_timesteps), so all 1000 steps of a
    1000-step model give 999, 998, ..., 0."""
    if not 1 <= num_inference_steps <= num_train_steps:
        raise ValueError(
            f"num_inference_steps must be in [1, {num_train_steps}], got {num_inference_steps}"
        )
    stride = num_train_steps // num_inference_steps
    return (torch.arange(num_inference_steps, dtype=torch.long) * stride).flip(0)


def ddpm_step(
    x: torch.Tensor, eps: torch.Tensor, alpha_bar: float, beta: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """One ancestral DDPM step with sigma^2 = beta (Ho et al. 2020, epsilon prediction):
    ``(x - beta / sqrt(1 - alpha_bar) * eps) / sqrt(1 - beta) + sqrt(beta) * noise``, noise None
    at the last step. ``beta`` is the schedule's own beta for a step of stride 1 and
    ``1 - alpha_bar / alpha_bar_prev`` for a strided one (diffusers' DDPMScheduler.step without
    clipping, variance "fixed_large"). Both shipped models sample with exactly this rule at 1000
    steps."""
    x = (x - (beta / math.sqrt(1.0 - alpha_bar)) * eps) / math.sqrt(1.0 - beta)
    if noise is not None:
        x = x + math.sqrt(beta) * noise
    return x


class DDPMPipeline:
    """Ancestral DDPM sampling with one of the shipped denoisers.

    Attributes: ``denoiser`` (the nn.Module called once per step; replace it or wrap its blocks
    to cache), ``kind`` ("fashion" or "mnist"), ``num_train_steps``, ``image_shape``,
    ``pixel_range`` (the model values of pixel 0 and 255), ``betas`` / ``alphas_cumprod`` (float64
    [num_train_steps], indexed by schedule position) and, after ``set_timesteps`` or a call,
    ``timesteps`` (the positions of this call in sampling order, LongTensor).

    Step hook for cache wrappers: a call ``pipe(...)`` first sets ``pipe.timesteps``, then calls
    ``pipe.denoiser(x, pipe.model_time(t, N))`` exactly once per entry t of ``pipe.timesteps``,
    in that order, and nothing else calls it; the k-th denoiser call of a pipeline call is step
    k. Counting calls and resetting per pipeline call is the wrapper's business.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        kind: str,
        betas: torch.Tensor,
        alphas_cumprod: torch.Tensor,
        alpha_cumprod_final: float,
        time_offset: int,
        integer_time: bool,
        image_shape: tuple[int, int, int],
        pixel_range: tuple[float, float],
    ):
        self.denoiser = denoiser
        self.kind = kind
        self.betas = betas.to(torch.float64)
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)
        self.num_train_steps = int(self.betas.shape[0])
        self.image_shape = tuple(image_shape)
        self.pixel_range = tuple(pixel_range)
        # alpha_bar one position before the first: where a step that reaches position -1 lands.
        self._alpha_cumprod_final = float(alpha_cumprod_final)
        self._time_offset = time_offset
        self._integer_time = integer_time
        self.timesteps = ddpm_timesteps(self.num_train_steps, self.num_train_steps)

    def __repr__(self) -> str:
        return (
            f"DDPMPipeline(kind={self.kind!r}, denoiser={type(self.denoiser).__name__}, "
            f"num_train_steps={self.num_train_steps}, image_shape={self.image_shape})"
        )

    @property
    def device(self) -> torch.device:
        for p in self.denoiser.parameters():
            return p.device
        return torch.device("cpu")

    def set_timesteps(self, num_inference_steps: int | None = None) -> torch.Tensor:
        """Sets and returns ``timesteps`` for a call with this many steps (default all)."""
        n = self.num_train_steps if num_inference_steps is None else num_inference_steps
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"num_inference_steps must be an int, got {n!r}")
        self.timesteps = ddpm_timesteps(self.num_train_steps, n)
        return self.timesteps

    def model_time(self, position: int, batch: int) -> torch.Tensor:
        """The time input the denoiser takes at schedule position ``position`` ([batch, 1]): the
        step index for the U-Net, (position + 1) / T for the MNIST CNN."""
        if self._integer_time:
            return torch.full((batch, 1), position + self._time_offset, dtype=torch.long,
                              device=self.device)
        value = (position + self._time_offset) / self.num_train_steps
        return torch.full((batch, 1), value, dtype=torch.float32, device=self.device)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, t) for one denoiser call on a batch of noise (FLOP counting, tracing)."""
        x = torch.randn(batch, *self.image_shape, generator=torch.Generator().manual_seed(0))
        return x.to(self.device), self.model_time(self.num_train_steps - 1, batch)

    def add_noise(self, x0: torch.Tensor, positions: torch.Tensor, noise: torch.Tensor):
        """The forward process q(x_t | x_0): sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise,
        positions [N] schedule positions (time = ``model_time(position)``)."""
        abar = self.alphas_cumprod.to(x0.device)[positions.long()].to(x0.dtype)
        abar = abar.reshape(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def images_to_model(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (0..255) -> the model's value range (float32)."""
        lo, hi = self.pixel_range
        return images.to(torch.float32) * ((hi - lo) / 255.0) + lo

    def _generators(self, num_samples: int, seed, generator) -> list[torch.Generator]:
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise ValueError(
                    f"generator must be a torch.Generator, got {type(generator).__name__}"
                )
            return [generator]
        if isinstance(seed, bool):
            raise ValueError(f"seed must be an int or a sequence of ints, got {seed!r}")
        if isinstance(seed, int):
            return [torch.Generator().manual_seed(seed)]
        seeds = list(seed)
        if len(seeds) != num_samples or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds
        ):
            raise ValueError(
                f"seed must be an int or {num_samples} ints (one per sample), got {seed!r}"
            )
        return [torch.Generator().manual_seed(s) for s in seeds]

    @staticmethod
    def _noise(gens: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
        # One generator draws the whole batch; per-sample generators one sample each, so a
        # sample depends only on its own seed.
        if len(gens) == 1:
            return torch.randn(shape, generator=gens[0])
        return torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in gens])

    @torch.no_grad()
    def __call__(
        self,
        num_samples: int = 8,
        seed: int | Sequence[int] = 0,
        generator: torch.Generator | None = None,
        num_inference_steps: int | None = None,
    ) -> torch.Tensor:
        """Raw samples [num_samples, *image_shape] float32 (in the model's value range, which
        the U-Net's samples leave). ``seed``: an int (one CPU generator for the batch) or one int
        per sample (each sample then depends only on its seed); ``generator`` (a CPU
        torch.Generator) instead draws from and advances the given one. All noise is drawn on the
        CPU, so a seed gives the same noise on any device.

        ``num_inference_steps`` below ``num_train_steps`` samples on the evenly strided schedule
        of :func:`ddpm_timesteps`, each step using beta = 1 - alpha_bar_t / alpha_bar_prev."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        gens = self._generators(num_samples, seed, generator)
        timesteps = self.set_timesteps(num_inference_steps)
        device = self.device
        shape = (num_samples, *self.image_shape)
        x = self._noise(gens, shape).to(device)
        positions = timesteps.tolist()
        for i, pos in enumerate(positions):
            last = i == len(positions) - 1
            prev = positions[i + 1] if not last else pos - (self.num_train_steps // len(positions))
            abar = float(self.alphas_cumprod[pos])
            abar_prev = float(self.alphas_cumprod[prev]) if prev >= 0 else self._alpha_cumprod_final
            # Stride 1 uses the schedule's own beta (the models' published rule, bit for bit).
            beta = float(self.betas[pos]) if prev == pos - 1 else 1.0 - abar / abar_prev
            eps = self.denoiser(x, self.model_time(pos, num_samples))
            noise = None if last else self._noise(gens, shape).to(device)
            x = ddpm_step(x, eps.to(x.dtype), abar, beta, noise)
        return x.to(torch.float32)


# ---------------------------------------------------------------------------------------------
# Loading


def _read_checkpoint(path) -> Mapping[str, torch.Tensor]:
    p = pathlib.Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"DDPM checkpoint not found: {str(p)!r}")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for files that are not checkpoints
        raise ValueError(f"{str(p)!r} is not a readable torch checkpoint: {e}") from None
    if not isinstance(sd, Mapping):
        raise ValueError(f"{str(p)!r} holds a {type(sd).__name__}, expected a state dict")
    return sd


def _kind_of(sd: Mapping[str, torch.Tensor]) -> str:
    keys = [k for k in sd if isinstance(k, str)]
    if len(keys) != len(sd):
        raise ValueError("not a DDPM checkpoint: its state dict has keys that are not strings")
    if keys and all(k.startswith("network.") for k in keys):
        return "fashion"
    if any(k.startswith("gt.") for k in keys) and "beta_t" in sd and "alpha_t" in sd:
        return "mnist"
    heads = sorted({k.split(".")[0] for k in keys})
    raise ValueError(
        "not a known DDPM checkpoint: expected the Fashion U-Net's keys under 'network.' or the "
        f"MNIST CNN's 'gt.' with 'beta_t' and 'alpha_t'; found {len(sd)} entries with top-level "
        f"names {heads[:10]}"
    )


def _fashion_pipeline(sd: Mapping[str, torch.Tensor]) -> DDPMPipeline:
    state = _fashion_state(sd)
    table = state.get("time_embed.weight")
    if not isinstance(table, torch.Tensor) or table.dim() != 2:
        raise ValueError("Fashion U-Net checkpoint: 'network.time_embed.weight' is missing")
    n_steps, dim = (int(s) for s in table.shape)
    model = FashionUNet(n_steps=n_steps, time_emb_dim=dim)
    _load_strict(model, state, "Fashion U-Net checkpoint")
    model.eval()
    # The authors' schedule: linear betas 1e-4..0.02, alpha_bar the cumulative product.
    betas = torch.linspace(1e-4, 0.02, n_steps, dtype=torch.float64)
    return DDPMPipeline(
        model,
        "fashion",
        betas,
        torch.cumprod(1.0 - betas, 0),
        alpha_cumprod_final=1.0,
        time_offset=0,
        integer_time=True,
        image_shape=FashionUNet.image_shape,
        pixel_range=(-1.0, 1.0),
    )


def _mnist_pipeline(sd: Mapping[str, torch.Tensor]) -> DDPMPipeline:
    state, kwargs = _mnist_state(sd)
    model = MnistDenoiser(**kwargs)
    _load_strict(model, state, "MNIST DDPM checkpoint")
    model.eval()
    beta_t, alpha_t = sd["beta_t"], sd["alpha_t"]
    if not isinstance(beta_t, torch.Tensor) or not isinstance(alpha_t, torch.Tensor):
        raise ValueError("MNIST DDPM checkpoint: beta_t and alpha_t must be tensors")
    if beta_t.dim() != 1 or beta_t.shape != alpha_t.shape or beta_t.shape[0] < 2:
        raise ValueError(
            "MNIST DDPM checkpoint: beta_t and alpha_t must be [T + 1] vectors, got "
            f"{tuple(beta_t.shape)} and {tuple(alpha_t.shape)}"
        )
    # Entries 1..T are the sampling steps (time i / T); entry 0 is where the last step lands.
    return DDPMPipeline(
        model,
        "mnist",
        beta_t[1:].double(),
        alpha_t[1:].double(),
        alpha_cumprod_final=float(alpha_t[0]),
        time_offset=1,
        integer_time=False,
        image_shape=model.image_shape,
        pixel_range=(-0.5, 0.5),
    )


def load_ddpm(path=None, kind: str | None = None) -> DDPMPipeline:
    """A :class:`DDPMPipeline` for a DDPM checkpoint: ``path`` (a file or an already loaded state
    dict) of either format, told apart by its keys; without a path the copy shipped in mopt.data
    of ``kind`` ("fashion", the default, or "mnist"). ValueError for a checkpoint of neither
    format (naming what it holds) or one that is not ``kind``."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    if path is None:
        from ..data import path_of

        path = path_of(_DEFAULT_FILES[kind or "fashion"])
    sd = path if isinstance(path, Mapping) else _read_checkpoint(path)
    found = _kind_of(sd)
    if kind is not None and found != kind:
        raise ValueError(f"the checkpoint is a {found!r} DDPM, not {kind!r}")
    return _fashion_pipeline(sd) if found == "fashion" else _mnist_pipeline(sd)


# ---------------------------------------------------------------------------------------------
# FLOPs


def flops_per_call(module: nn.Module, *example_inputs, **example_kwargs) -> int:
    """FLOPs of one call ``module(*example_inputs)`` as torch.utils.flop_counter counts them
    (matmuls and convolutions, 2 per multiply-add; normalizations and elementwise ops are not
    counted)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*example_inputs, **example_kwargs)
    return int(counter.get_total_flops())


def flops_by_module(module: nn.Module, *example_inputs, **example_kwargs) -> dict[str, int]:
    """FLOPs of one call ``module(*example_inputs)`` per named submodule (names as
    ``module.named_modules()``, "" the whole call), each including its children: with a
    FashionUNet, ``flops["inner"] / flops[""]`` is the share of the work that caching ``inner``
    skips. Submodules that count no FLOPs are left out."""
    with torch.no_grad(), FlopCounterMode(display=False, depth=1 << 20) as counter:
        module(*example_inputs, **example_kwargs)
    # The counter names modules "<root class>.<path>" (and "Global" for everything).
    root = type(module).__name__
    names = {name for name, _ in module.named_modules()}
    out = {"": int(counter.get_total_flops())}
    for key, ops in counter.get_flop_counts().items():
        name = key[len(root) + 1 :] if key.startswith(root + ".") else None
        if name in names:
            out[name] = int(sum(ops.values()))
    return out
