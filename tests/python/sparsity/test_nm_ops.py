"""torch.ops.mopt N:M sparsity ops: opcheck on every device, nm_mask against a float64 topk
reference, compress_2to4 against torch's CUTLASS converter (metadata reordering undone), round
trips, gradients and error messages."""

import mopt  # noqa: F401  (registers torch.ops.mopt)
import pytest
import torch.sparse._semi_structured_conversions as semi
from torch.library import opcheck

import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="no CUDA device"))]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PATTERNS = [(2, 4), (4, 8), (1, 4), (3, 4), (16, 32)]


def _distinct_weight(rows, cols, m, dtype, device):
    """Weights whose magnitudes differ inside every group of m columns and are exact in every
    dtype: a permutation of 1..m per group, times a power of two per group, random signs."""
    groups = rows * cols // m
    perm = torch.argsort(torch.rand(groups, m), dim=-1).double() + 1.0
    scale = torch.exp2(torch.randint(-6, 6, (groups, 1)).double())
    sign = torch.where(torch.rand(groups, m) < 0.5, -1.0, 1.0).double()
    return (perm * scale * sign).reshape(rows, cols).to(device=device, dtype=dtype)


def _ref_nm_mask(w, factor, n, m):
    """float64 reference: per group of m columns the n largest |w| * factor via topk. The scores
    of a group must be distinct (topk breaks ties in no specified order)."""
    s = w.double().abs()
    if factor is not None:
        s = s * factor.double()
    g = s.reshape(w.shape[0], -1, m)
    sorted_scores = g.sort(dim=-1).values
    assert bool((sorted_scores[..., 1:] != sorted_scores[..., :-1]).all()), "scores must differ"
    mask = torch.zeros_like(g, dtype=torch.bool)
    mask.scatter_(-1, g.topk(n, dim=-1).indices, True)
    return mask.reshape(w.shape)


def _ref_nm_mask_stable(w, n, m):
    """Tie-aware float64 reference: a stable descending sort keeps equal scores in column order,
    so the lower column wins a tie."""
    g = w.double().abs().reshape(w.shape[0], -1, m)
    order = g.sort(dim=-1, descending=True, stable=True).indices
    mask = torch.zeros_like(g, dtype=torch.bool)
    mask.scatter_(-1, order[..., :n], True)
    return mask.reshape(w.shape)


def _two_four(rows, cols, dtype, device):
    """Random data with at most 2 nonzeros per group of 4: mostly exactly 2, some groups with 1
    or 0 (to exercise the encoder's padding positions)."""
    w = torch.randn(rows, cols, dtype=torch.float32)
    g = w.reshape(rows, -1, 4)
    keep = torch.zeros_like(g, dtype=torch.bool)
    order = torch.argsort(torch.rand(g.shape), dim=-1)
    count = torch.randint(0, 8, (rows, g.shape[1], 1)).clamp(max=2)  # mostly 2
    keep.scatter_(-1, order, torch.arange(4).expand_as(order) < count)
    return (g * keep).reshape(rows, cols).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# opcheck: schema, autograd registration, fake tensors, AOT dispatch (static and dynamic).


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck_nm_mask(device, dtype):
    w = torch.randn(16, 64, device=device).to(dtype)
    f = torch.rand(64, device=device) + 0.5
    opcheck(torch.ops.mopt.nm_mask.default, (w, None, 2, 4))
    opcheck(torch.ops.mopt.nm_mask.default, (w, f, 4, 8, "fc1"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck_compress_decompress(device, dtype):
    x = _two_four(32, 64, dtype, device).requires_grad_()
    opcheck(torch.ops.mopt.compress_2to4.default, (x,))
    values, meta = torch.ops.mopt.compress_2to4(x.detach())
    opcheck(torch.ops.mopt.decompress_2to4.default, (values.requires_grad_(), meta))


# ---------------------------------------------------------------------------------------------
# nm_mask


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,m", PATTERNS)
def test_nm_mask_matches_reference(device, dtype, n, m):
    w = _distinct_weight(40, 4 * m, m, dtype, device)
    mask = torch.ops.mopt.nm_mask(w, None, n, m)
    assert mask.dtype == torch.bool and mask.shape == w.shape and mask.device == w.device
    assert torch.equal(mask.cpu(), _ref_nm_mask(w.cpu(), None, n, m))
    assert bool((mask.reshape(40, -1, m).sum(-1) == n).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,m", PATTERNS)
def test_nm_mask_with_column_factor(device, n, m):
    # fp32 weights and factors: products of random values, distinct in every group.
    w = torch.randn(48, 8 * m, device=device)
    f = torch.rand(8 * m, device=device) * 4
    mask = torch.ops.mopt.nm_mask(w, f, n, m)
    assert torch.equal(mask.cpu(), _ref_nm_mask(w.cpu(), f.cpu(), n, m))
    # The factor changes the selection (it is not ignored).
    assert not torch.equal(mask, torch.ops.mopt.nm_mask(w, None, n, m))


@pytest.mark.parametrize("device", DEVICES)
def test_nm_mask_ties_keep_the_lower_column(device):
    w = torch.randint(-2, 3, (64, 64), device=device).float()  # many equal magnitudes, signed
    for n, m in PATTERNS:
        assert torch.equal(torch.ops.mopt.nm_mask(w, None, n, m).cpu(),
                           _ref_nm_mask_stable(w.cpu(), n, m))
    same = torch.full((2, 8), -1.5, device=device)
    assert torch.ops.mopt.nm_mask(same, None, 2, 4).cpu().tolist() == [[1, 1, 0, 0] * 2] * 2


def test_nm_mask_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"layer 'fc1': 2:4 sparsity needs the input dimension "
                                         r"\(6 cols\) to be a multiple of 4"):
        torch.ops.mopt.nm_mask(torch.randn(4, 6), None, 2, 4, "fc1")
    with pytest.raises(ValueError, match=r"1 <= N <= M <= 32, got 5:4"):
        torch.ops.mopt.nm_mask(torch.randn(4, 8), None, 5, 4)
    with pytest.raises(ValueError, match=r"column_factor has shape \[4\]"):
        torch.ops.mopt.nm_mask(torch.randn(4, 8), torch.ones(4), 2, 4)
    with pytest.raises(TypeError):
        torch.ops.mopt.nm_mask(torch.ones(4, 8, dtype=torch.int32), None, 2, 4)
    w = torch.randn(4, 8)
    w[1, 3] = float("nan")
    with pytest.raises(RuntimeError, match=r"layer 'blocks.0': the weight holds NaN or Inf"):
        torch.ops.mopt.nm_mask(w, None, 2, 4, "blocks.0")
    with pytest.raises(RuntimeError, match=r"column_factor must be non-negative"):
        torch.ops.mopt.nm_mask(torch.randn(4, 8), -torch.ones(8), 2, 4)


# ---------------------------------------------------------------------------------------------
# 2:4 compression against torch's CUTLASS converter


def _torch_logical_meta(meta_reordered):
    """torch's metadata with its CUTLASS reordering undone (the gather its to_dense does)."""
    rows, ncols = meta_reordered.shape
    offsets = semi._calculate_meta_reordering_scatter_offsets(rows, ncols, meta_reordered.dtype,
                                                              meta_reordered.device)
    return meta_reordered.view(-1).gather(0, offsets).view(rows, ncols)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_compress_2to4_matches_torch_cutlass_layout(device, dtype):
    x = _two_four(64, 128, dtype, device)
    values, meta = torch.ops.mopt.compress_2to4(x)
    ref_values, ref_meta = semi.sparse_semi_structured_from_dense_cutlass(x)
    assert values.dtype == dtype and meta.dtype == torch.int16
    assert torch.equal(values.view(torch.int16), ref_values.view(torch.int16))  # bit for bit
    assert torch.equal(meta, _torch_logical_meta(ref_meta))
    # And torch reads our layout back once reordered its way.
    reordered = torch.empty_like(meta).view(-1)
    offsets = semi._calculate_meta_reordering_scatter_offsets(64, 8, torch.int16, x.device)
    reordered.scatter_(0, offsets, meta.view(-1))
    assert torch.equal(semi.sparse_semi_structured_to_dense_cutlass(values, reordered.view(64, 8)),
                       x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compress_decompress_round_trip(device, dtype):
    x = _two_four(48, 96, dtype, device)
    values, meta = torch.ops.mopt.compress_2to4(x)
    assert values.shape == (48, 48) and meta.shape == (48, 6)
    assert torch.equal(torch.ops.mopt.decompress_2to4(values, meta), x)
    # A pruned weight (the mask times the weight) compresses to its kept values in order.
    w = torch.randn(48, 96, device=device).to(dtype)
    mask = torch.ops.mopt.nm_mask(w, None, 2, 4)
    values, meta = torch.ops.mopt.compress_2to4(w * mask)
    assert torch.equal(values, w[mask].reshape(48, 48))
    assert torch.equal(torch.ops.mopt.decompress_2to4(values, meta), w * mask)


def test_compress_gradients_follow_the_stored_positions():
    x = _two_four(32, 64, torch.float32, "cpu").requires_grad_()
    values, meta = torch.ops.mopt.compress_2to4(x)
    g = torch.randn_like(values)
    (gx,) = torch.autograd.grad(values, x, g)
    assert torch.equal(gx, torch.ops.mopt.decompress_2to4(g, meta))
    v = values.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: torch.ops.mopt.decompress_2to4(t, meta), (v,),
                                    eps=1e-2, atol=1e-3, rtol=1e-3)


def test_compress_2to4_errors():
    with pytest.raises(ValueError, match=r"number of columns \(24\) to be a multiple of 16"):
        torch.ops.mopt.compress_2to4(torch.zeros(4, 24))
    x = torch.zeros(4, 32)
    x[1, 8:11] = 1.0
    with pytest.raises(ValueError, match=r"row 1, columns \[8, 12\) with 3 nonzeros"):
        torch.ops.mopt.compress_2to4(x)
    values, meta = torch.ops.mopt.compress_2to4(torch.zeros(4, 32))
    with pytest.raises(ValueError, match="do not fit"):
        torch.ops.mopt.decompress_2to4(values, meta[:, :1])
    with pytest.raises(ValueError, match="not increasing"):
        torch.ops.mopt.decompress_2to4(values, torch.full_like(meta, 0x0505))
