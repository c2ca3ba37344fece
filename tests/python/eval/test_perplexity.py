"""mopt.eval: sliding-window perplexity against a naive float64 reference, calibration batches,
and a forward loop that keeps no activations."""

import gc
import math
import weakref

import pytest
import torch
from torch import nn

from mopt.eval import (
    make_forward_loop,
    negative_log_likelihood,
    perplexity,
    sliding_windows,
    text_calibration_batches,
)


class TinyCausalLM(nn.Module):
    """Logits depend on the whole causal prefix (a running mean of embeddings), so the window
    boundaries matter."""

    def __init__(self, vocab=23, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(2 * dim, vocab)

    def forward(self, ids):
        e = self.emb(ids)
        prefix_mean = e.cumsum(1) / torch.arange(1, ids.shape[1] + 1).view(1, -1, 1)
        return self.out(torch.cat([e, prefix_mean], -1))


def naive_nll(model, ids, seq_len, stride):
    """Score each target once, from the first window (begin = 0, stride, ...) that has it at
    window offset >= 1 with the longest context available, computed token by token in float64."""
    ids = list(ids)
    n = len(ids)
    total, count = 0.0, 0
    scored = set()
    begin = 0
    while len(scored) < n - 1:
        window = ids[begin : begin + seq_len + 1][: n - begin]
        x = torch.tensor([window[:-1]])
        with torch.no_grad():
            logp = torch.log_softmax(model(x)[0].double(), -1)
        for j in range(len(window) - 1):
            target_pos = begin + j + 1
            if target_pos in scored:
                continue
            scored.add(target_pos)
            total -= float(logp[j, window[j + 1]])
            count += 1
        begin += stride
    return total, count


@pytest.mark.parametrize(
    "n,seq_len,stride", [(100, 16, None), (101, 16, 16), (97, 16, 5), (17, 16, None), (50, 7, 1)]
)
def test_perplexity_matches_naive(n, seq_len, stride):
    torch.manual_seed(n)
    model = TinyCausalLM()
    ids = torch.randint(0, 23, (n,))
    ref_total, ref_count = naive_nll(model, ids.tolist(), seq_len, stride or seq_len)
    for batch_size in (1, 3):
        total, count = negative_log_likelihood(
            model, ids, seq_len, stride, batch_size, progress=False
        )
        assert count == ref_count == n - 1
        assert total == pytest.approx(ref_total, rel=1e-6)
    ppl = perplexity(model, ids.tolist(), seq_len, stride, progress=False)
    assert ppl == pytest.approx(math.exp(ref_total / ref_count), rel=1e-6)


def test_windows_score_every_position_once():
    for n, s, st in [(1000, 64, None), (1000, 64, 17), (65, 64, 64), (300, 10, 10)]:
        seen = []
        for b, e, first in sliding_windows(n, s, st):
            assert 0 < e - b <= s and first >= b + 1
            seen += list(range(first, e + 1))
        assert seen == list(range(1, n))


def test_perplexity_accepts_hf_style_outputs():
    class WithLogits(TinyCausalLM):
        def forward(self, ids):
            return type("Out", (), {"logits": super().forward(ids)})()

    torch.manual_seed(0)
    m = WithLogits()
    ids = torch.randint(0, 23, (40,))
    ref = TinyCausalLM()
    ref.load_state_dict(m.state_dict())
    assert perplexity(m, ids, 8, progress=False) == pytest.approx(
        perplexity(ref, ids, 8, progress=False)
    )
    assert m.training  # the training flag is restored


def test_perplexity_progress_bar_goes_to_stderr(capsys):
    perplexity(TinyCausalLM(), torch.randint(0, 23, (60,)), 8, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "perplexity" in err


def test_perplexity_errors():
    m = TinyCausalLM()
    with pytest.raises(ValueError, match="too short for one window"):
        perplexity(m, [1, 2, 3], 8, progress=False)
    with pytest.raises(ValueError, match="stride"):
        perplexity(m, list(range(20)), 8, stride=9, progress=False)
    with pytest.raises(ValueError, match="seq_len"):
        perplexity(m, list(range(20)), 0, progress=False)
    with pytest.raises(ValueError, match="1-D"):
        perplexity(m, torch.zeros(2, 20, dtype=torch.long), 8, progress=False)
    with pytest.raises(TypeError, match="integer"):
        perplexity(m, torch.rand(20), 8, progress=False)


def test_calibration_batches():
    ids = torch.arange(1000)
    b = text_calibration_batches(ids, 5, 64, seed=1)
    assert b.shape == (5, 64) and b.dtype == torch.long
    starts = b[:, 0].tolist()
    assert all(s % 64 == 0 for s in starts) and starts == sorted(set(starts))  # disjoint, in order
    assert torch.equal(b, torch.stack([ids[s : s + 64] for s in starts]))
    assert torch.equal(b, text_calibration_batches(ids.tolist(), 5, 64, seed=1))
    assert not torch.equal(b, text_calibration_batches(ids, 5, 64, seed=2))
    assert text_calibration_batches(ids, 15, 64).shape == (15, 64)  # every window
    with pytest.raises(ValueError, match="too short"):
        text_calibration_batches(ids, 16, 64)
    with pytest.raises(ValueError, match="n_samples"):
        text_calibration_batches(ids, 0, 64)


def test_forward_loop_feeds_every_batch_and_keeps_no_activation():
    seen, outputs = [], []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 1)

        def forward(self, ids):
            seen.append(ids.clone())
            out = torch.zeros(ids.shape[0], ids.shape[1], 1000)  # a large activation
            outputs.append(weakref.ref(out))
            return out

    batches = torch.arange(7 * 5).view(7, 5)
    loop = make_forward_loop(batches, batch_size=3)
    loop(Recorder())
    gc.collect()
    assert [s.shape[0] for s in seen] == [3, 3, 1]
    assert torch.equal(torch.cat(seen), batches)
    assert all(r() is None for r in outputs)  # every output was freed: nothing accumulated
    with pytest.raises(ValueError, match="n_samples, seq_len"):
        make_forward_loop(torch.arange(5))
