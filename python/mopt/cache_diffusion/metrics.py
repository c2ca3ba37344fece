"""Fidelity metrics of cached diffusion sampling (numerics in C++: include/mopt/cache/metrics.h).

* ``psnr_db(samples, reference)``: 10 log10(R^2 / MSE), R = max - min of the reference batch
  (normally the uncached samples of the same seeds), MSE over all pixels.
* ``ssim(samples, reference)``: SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5,
  K1 0.01, K2 0.03, data range R as above), mean over the batch.
* ``frechet_distance(features_a, features_b)``: FID's formula on any feature sets.
* ``fid_features(images, kind)`` / ``fidelity_score(samples, kind)``: a Frechet distance between
  the features of a small classifier trained by this project on real images ("fashion":
  Fashion-MNIST; "mnist": MNIST test images 0-4999) for the samples and for real test images
  (Fashion-MNIST's test set; MNIST test images 5000-9999), whose feature mean and covariance
  ship with the classifier (``mopt/data/fid_classifier_<kind>.safetensors``, written by
  tools/train_fid_classifier.py). Like FID it is biased upwards for few samples: compare scores of
  equally many samples (``real_fidelity_score`` gives the score of as many real images).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .. import _C

__all__ = [
    "psnr_db",
    "psnr_db_per_sample",
    "ssim",
    "ssim_per_sample",
    "frechet_distance",
    "FidClassifier",
    "load_fid_classifier",
    "fid_features",
    "fidelity_score",
    "real_fidelity_score",
    "FID_KINDS",
]

FID_KINDS = ("fashion", "mnist")


def psnr_db(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of the batch against the reference batch (R from the reference)."""
    return _C.psnr_db(samples, reference)


def psnr_db_per_sample(samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PSNR of each sample (float64 [N]), R from the whole reference batch."""
    return _C.psnr_db_per_sample(samples, reference)


def ssim(samples: torch.Tensor, reference: torch.Tensor, data_range: float | None = None) -> float:
    """Mean SSIM over the batch; images [N, C, H, W] or [N, H, W], H and W >= 11."""
    return float(_C.ssim_per_sample(samples, reference, data_range).mean())


def ssim_per_sample(
    samples: torch.Tensor, reference: torch.Tensor, data_range: float | None = None
) -> torch.Tensor:
    """SSIM of each sample (float64 [N])."""
    return _C.ssim_per_sample(samples, reference, data_range)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between the Gaussians fitted to features [Na, D] and [Nb, D]."""
    return _C.frechet_distance(features_a, features_b)


class FidClassifier(nn.Module):
    """A small CNN for 1x28x28 images in [0, 1]: three 3x3 convolutions (16, 32, 64 channels,
    ReLU, 2x2 max pooling), a linear feature layer and a linear classifier over 10 classes.
    ``features(x)`` is the feature layer's output (before its ReLU)."""

    def __init__(self, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 3x3
        )
        self.feature = nn.Linear(64 * 3 * 3, feature_dim)
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(self.conv(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.features(x)))


def _check_kind(kind: str) -> str:
    if kind not in FID_KINDS:
        raise ValueError(f"kind must be one of {FID_KINDS}, got {kind!r}")
    return kind


@functools.lru_cache(maxsize=None)
def _load(kind: str):
    from ..data import path_of

    path = path_of(f"fid_classifier_{kind}.safetensors")
    tensors, metadata = _C.load_safetensors(str(path))
    tensors = dict(tensors)
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model = FidClassifier(feature_dim=int(model_state["feature.weight"].shape[0]))
    model.load_state_dict(model_state, strict=True)
    model.eval().requires_grad_(False)
    return model, tensors["reference.mean"], tensors["reference.cov"], dict(metadata)


def load_fid_classifier(kind: str) -> tuple[FidClassifier, dict[str, str]]:
    """The shipped classifier of ``kind`` and its metadata (training data, test accuracy, the
    real images its reference statistics come from)."""
    model, _, _, metadata = _load(_check_kind(kind))
    return model, metadata


def _check_images(images: torch.Tensor, what: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (
        1,
        28,
        28,
    ):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what}: expected images [N, 1, 28, 28], got {got}")
    if not torch.is_floating_point(images):
        raise ValueError(f"{what}: expected floating images, got {images.dtype}")


@torch.no_grad()
def fid_features(images: torch.Tensor, kind: str, batch_size: int = 1000) -> torch.Tensor:
    """Classifier features [N, D] (float32, CPU) of images [N, 1, 28, 28] in [0, 1] (the real
    images' range: pixel / 255)."""
    model, _, _, _ = _load(_check_kind(kind))
    _check_images(images, "fid_features")
    x = images.detach().to("cpu", torch.float32)
    return torch.cat([model.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def fidelity_score(samples: torch.Tensor, kind: str) -> float:
    """Frechet distance between the classifier features of ``samples`` (raw sampler output
    [N, 1, 28, 28], N >= 2; each image first mapped from its own min/max onto [0, 1], the real
    images' range, as the U-Net's raw samples drift) and those of the real test images of
    ``kind``. Lower is closer to real images."""
    _check_images(samples, "fidelity_score")
    _, mean, cov, _ = _load(_check_kind(kind))
    features = fid_features(_C.rescale_per_sample(samples.detach().cpu(), 0.0, 1.0), kind)
    if features.shape[0] < 2:
        raise ValueError(f"fidelity_score: needs at least 2 samples, got {features.shape[0]}")
    f_mean, f_cov = _C.feature_statistics(features)
    return _C.frechet_distance_from_statistics(f_mean, f_cov, mean, cov)


def real_fidelity_score(num_images: int, kind: str, seed: int = 0) -> float:
    """fidelity_score of ``num_images`` real test images of ``kind`` drawn with ``seed``: the
    score of perfect samples at this sample count (the Frechet distance's small-sample bias)."""
    from ..data import fashion_mnist, mnist_test_set

    _, _, _, metadata = _load(_check_kind(kind))
    if kind == "fashion":
        images, _ = fashion_mnist("test")
    else:
        images, _ = mnist_test_set()
        first = int(metadata.get("reference_first", 5000))
        images = images[first:]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[:num_images]
    x = torch.from_numpy(images[idx.numpy()]).to(torch.float32).unsqueeze(1) / 255.0
    return fidelity_score(x, kind)
