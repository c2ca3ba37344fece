"""mopt.cache_diffusion.metrics (C++ numerics) against plain numpy/scipy formulations written here:
PSNR as the issue defines it, SSIM as Wang et al.'s ssim_index.m ('valid' Gaussian filtering),
the Frechet distance with scipy.linalg.sqrtm (pytorch-fid's formulation); the shipped fidelity
classifiers (accuracy on real test images, reference statistics reproducible) and the fidelity
score ordering real images, model samples and noise; errors."""

import numpy as np
import pytest
import scipy.linalg
import scipy.signal
import torch

from mopt.cache_diffusion import metrics as mm
from mopt.data import FASHION_MNIST_DIR, fashion_mnist, mnist_test_set

requires_fashion = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)


def _np_psnr(s, r):
    rng = r.max() - r.min()
    return 10 * np.log10(rng**2 / np.mean((s - r) ** 2))


def _np_ssim_image(x, y, rng):
    k = np.arange(11) - 5.0
    g = np.exp(-(k**2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()

    def filt(a):
        return scipy.signal.correlate2d(a, w, mode="valid")

    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return m.mean()


def _np_frechet(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(ca @ cb)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))


def test_psnr_matches_numpy():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(5, 1, 28, 28, generator=g) * 1.7 + 0.3
    samples = ref + 0.05 * torch.randn(5, 1, 28, 28, generator=g)
    s, r = samples.double().numpy(), ref.double().numpy()
    assert mm.psnr_db(samples, ref) == pytest.approx(_np_psnr(s, r), rel=1e-9)
    per = mm.psnr_db_per_sample(samples, ref)
    rng = r.max() - r.min()
    expected = [10 * np.log10(rng**2 / np.mean((s[i] - r[i]) ** 2)) for i in range(5)]
    np.testing.assert_allclose(per.numpy(), expected, rtol=1e-9)
    assert mm.psnr_db(ref, ref) == float("inf")


def test_ssim_matches_scipy_formulation():
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(4, 1, 28, 28, generator=g, dtype=torch.float64) * 2 - 1
    samples = ref + 0.2 * torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64)
    rng = float(ref.max() - ref.min())
    expected = [_np_ssim_image(samples[i, 0].numpy(), ref[i, 0].numpy(), rng) for i in range(4)]
    np.testing.assert_allclose(mm.ssim_per_sample(samples, ref).numpy(), expected, rtol=1e-10)
    assert mm.ssim(samples, ref) == pytest.approx(np.mean(expected), rel=1e-10)
    assert mm.ssim(ref, ref) == pytest.approx(1.0)
    # An explicit data range (e.g. 255 for pixels) is used as given.
    np.testing.assert_allclose(
        mm.ssim_per_sample(samples, ref, data_range=4.0).numpy(),
        [_np_ssim_image(samples[i, 0].numpy(), ref[i, 0].numpy(), 4.0) for i in range(4)],
        rtol=1e-10,
    )


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 12))
    b = rng.standard_normal((200, 12)) @ rng.standard_normal((12, 12)) * 0.5 + 0.3
    expected = _np_frechet(a, b)
    got = mm.frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert got == pytest.approx(expected, rel=1e-7)
    assert mm.frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(
        0.0, abs=1e-9
    )


def test_shipped_classifiers_accuracy_and_metadata():
    images, labels = mnist_test_set()
    model, meta = mm.load_fid_classifier("mnist")
    assert meta["trained_by"].startswith("mopt") and meta["reference_first"] == "5000"
    x = torch.from_numpy(images[5000:7000]).float().unsqueeze(1) / 255
    with torch.no_grad():
        acc = (model(x).argmax(1).numpy() == labels[5000:7000]).mean()
    assert acc > 0.95, acc
    assert float(meta["test_accuracy"]) > 0.95
    _, fmeta = mm.load_fid_classifier("fashion")
    assert float(fmeta["test_accuracy"]) > 0.85
    assert "Fashion-MNIST training images" in fmeta["train_images"]


def test_mnist_reference_statistics_are_reproducible():
    # The shipped mean/covariance are those of MNIST test images 5000-9999.
    images, _ = mnist_test_set()
    feats = mm.fid_features(torch.from_numpy(images[5000:]).float().unsqueeze(1) / 255, "mnist")
    _, mean, cov, _ = mm._load("mnist")
    torch.testing.assert_close(feats.double().mean(0), mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(np.cov(feats.double().numpy(), rowvar=False)), cov,
                               rtol=1e-4, atol=1e-4)


@requires_fashion
def test_fashion_classifier_accuracy_on_real_test_images():
    images, labels = fashion_mnist("test")
    model, _ = mm.load_fid_classifier("fashion")
    x = torch.from_numpy(images[:2000]).float().unsqueeze(1) / 255
    with torch.no_grad():
        acc = (model(x).argmax(1).numpy() == labels[:2000]).mean()
    assert acc > 0.85, acc


def test_fidelity_score_orders_real_images_samples_and_noise():
    images, _ = mnist_test_set()
    # Real images (the training half, not the reference half), affinely distorted: the score
    # normalises each image to its own min/max first.
    real = torch.from_numpy(images[:64]).float().unsqueeze(1) / 255 * 3.0 - 1.2
    noise = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    s_real = mm.fidelity_score(real, "mnist")
    s_noise = mm.fidelity_score(noise, "mnist")
    assert s_real < 0.25 * s_noise, (s_real, s_noise)
    assert mm.real_fidelity_score(64, "mnist") < 0.25 * s_noise
    # Equal to the Frechet distance computed from scratch on the features.
    flat = real.reshape(64, -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    unit = ((flat - lo) / (hi - lo)).reshape(real.shape)
    feats = mm.fid_features(unit, "mnist").double().numpy()
    _, mean, cov, _ = mm._load("mnist")
    mu = feats.mean(0)
    c = np.cov(feats, rowvar=False)
    m, k = mean.numpy(), cov.numpy()
    covmean = scipy.linalg.sqrtm(c @ k).real
    expected = ((mu - m) ** 2).sum() + np.trace(c) + np.trace(k) - 2 * np.trace(covmean)
    assert s_real == pytest.approx(expected, rel=1e-4)


def test_errors():
    x = torch.randn(4, 1, 28, 28)
    with pytest.raises(ValueError, match="differ"):
        mm.psnr_db(x, x[:2])
    with pytest.raises(ValueError, match="constant"):
        mm.psnr_db(x, torch.zeros_like(x))
    with pytest.raises(ValueError, match="NaN"):
        mm.ssim(x, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        mm.ssim(x[..., :8, :8], x[..., :8, :8])
    with pytest.raises(ValueError, match="N >= 2"):
        mm.frechet_distance(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="kind must be one of"):
        mm.fidelity_score(x, "cifar")
    with pytest.raises(ValueError, match=r"expected images \[N, 1, 28, 28\]"):
        mm.fidelity_score(torch.randn(4, 3, 28, 28), "mnist")
    with pytest.raises(ValueError, match="at least 2 samples"):
        mm.fidelity_score(x[:1], "mnist")


def test_idx_reader_rejects_bad_files(tmp_path):
    from mopt.data import read_idx

    images, labels = mnist_test_set()
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert images.dtype == np.uint8 and set(np.unique(labels)) == set(range(10))
    good = tmp_path / "ok-idx1-ubyte"
    good.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    np.testing.assert_array_equal(read_idx(good), [7, 8, 9])
    truncated = tmp_path / "short-idx1-ubyte"
    truncated.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8]))
    with pytest.raises(ValueError, match="expected 11"):
        read_idx(truncated)
    other = tmp_path / "x.bin"
    other.write_bytes(b"PK\x03\x04zip")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(other)
