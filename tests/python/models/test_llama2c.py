"""llama2.c loader and tokenizer: the real stories260K reproduces its published check, and the HF
model decodes exactly like a plain re-implementation of run.c's forward written here."""

import hashlib
import math
import pathlib
import struct

import numpy as np
import pytest
import torch

from mopt import data as mdata
from mopt.eval import perplexity
from mopt.models import Llama2cTokenizer, load_llama2c, read_llama2c

SHARED = pathlib.Path(__file__).resolve().parents[3].parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------
# A plain llama2.c forward (run.c), independent of the loader: its own file parser, interleaved
# RoPE on adjacent pairs, grouped-query attention, SwiGLU, no Hugging Face.


def _parse_llama2c(path):
    raw = pathlib.Path(path).read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    head = dim // n_heads
    kv_dim = head * n_kv
    f = np.frombuffer(raw, dtype="<f4", offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        out = torch.from_numpy(f[pos : pos + n].copy()).view(*shape)
        pos += n
        return out

    w = {
        "emb": take(vocab, dim),
        "rms_att": take(n_layers, dim),
        "wq": take(n_layers, dim, dim),
        "wk": take(n_layers, kv_dim, dim),
        "wv": take(n_layers, kv_dim, dim),
        "wo": take(n_layers, dim, dim),
        "rms_ffn": take(n_layers, dim),
        "w1": take(n_layers, hidden, dim),
        "w2": take(n_layers, dim, hidden),
        "w3": take(n_layers, hidden, dim),
        "rms_final": take(dim),
    }
    take(seq_len, head // 2)
    take(seq_len, head // 2)
    w["wcls"] = w["emb"] if shared else take(vocab, dim)
    assert pos == f.size
    return dict(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv=n_kv, head=head), w


def _rmsnorm(x, weight):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * weight


def _rope_interleaved(x, positions, head):
    # run.c: for each adjacent pair (i, i+1) of a head, freq = 10000^(-(i % head)/head)
    i = torch.arange(0, head, 2, dtype=torch.float32)
    freq = 1.0 / 10000.0 ** (i / head)
    ang = positions[:, None].float() * freq[None, :]  # [T, head/2]
    cos, sin = torch.cos(ang), torch.sin(ang)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x0 * cos[:, None, :] - x1 * sin[:, None, :]
    out[..., 1::2] = x0 * sin[:, None, :] + x1 * cos[:, None, :]
    return out


def _plain_forward(cfg, w, tokens):
    """Logits [T, vocab] of a token list, processing the whole sequence causally."""
    T = len(tokens)
    H, KV, hd = cfg["n_heads"], cfg["n_kv"], cfg["head"]
    x = w["emb"][torch.tensor(tokens)]
    positions = torch.arange(T)
    mask = torch.full((T, T), float("-inf")).triu(1)
    for layer in range(cfg["n_layers"]):
        h = _rmsnorm(x, w["rms_att"][layer])
        q = (h @ w["wq"][layer].T).view(T, H, hd)
        k = (h @ w["wk"][layer].T).view(T, KV, hd)
        v = (h @ w["wv"][layer].T).view(T, KV, hd)
        q, k = _rope_interleaved(q, positions, hd), _rope_interleaved(k, positions, hd)
        rep = H // KV
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd) + mask
        o = torch.einsum("hts,shd->thd", att.softmax(-1), v).reshape(T, -1)
        x = x + o @ w["wo"][layer].T
        h = _rmsnorm(x, w["rms_ffn"][layer])
        g = torch.nn.functional.silu(h @ w["w1"][layer].T) * (h @ w["w3"][layer].T)
        x = x + g @ w["w2"][layer].T
    return _rmsnorm(x, w["rms_final"]) @ w["wcls"].T


def _greedy(step_logits, prompt, n_new):
    tokens = list(prompt)
    for _ in range(n_new):
        tokens.append(int(step_logits(tokens).argmax()))
    return tokens[len(prompt) :]


# Greedy continuation of BOS + "Once upon a time" (40 tokens) by _plain_forward, recorded once.
RECORDED_CONTINUATION = [
    432,
    383,
    286,
    261,
    376,
    298,
    315,
    421,
    395,
    317,
    426,
    338,
    401,
    396,
    267,
    337,
    410,
    408,
    419,
    292,
    411,
    322,
    265,
    282,
    295,
    433,
    426,
    385,
    328,
    432,
    358,
    394,
    261,
    370,
    432,
    352,
    266,
    268,
    388,
    426,
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # stories260K's ops are too small to split: extra threads only synchronize (10x slower on a
    # busy 2-core machine)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return load_llama2c()


@pytest.fixture(scope="module")
def tok():
    return Llama2cTokenizer.from_file()


# ---------------------------------------------------------------------------------------------
# The real model


def test_packaged_files_are_the_shared_originals():
    digests = {"stories260K.bin": "b0a507e7ad0f6266", "tok512.bin": "037cb335abb25d1f"}
    for name, prefix in digests.items():
        assert hashlib.sha256(mdata.path_of(name).read_bytes()).hexdigest().startswith(prefix)
    for name in ("LICENSE", "NOTICE"):
        assert (mdata.DATA_DIR / name).is_file()
    sliced = mdata.path_of("tinystories_val_slice.txt").read_text(encoding="utf-8")
    assert len(sliced) == 150_000
    assert hashlib.sha256(sliced.encode("utf-8")).hexdigest().startswith("8485baab863800d4")
    train = mdata.path_of("tinystories_finetune_slice.txt").read_bytes()
    assert hashlib.sha256(train).hexdigest().startswith("a9895ab4c2be11de")
    wiki = mdata.path_of("wikitext2_test_slice.txt").read_bytes()
    assert hashlib.sha256(wiki).hexdigest().startswith("f70371de6c1c7782")
    # where the originals are at hand, the slices are their unchanged beginnings
    for original, copy in (("tinystories_val_dev.txt", sliced.encode("utf-8")),
                           ("wikitext2_test.txt", wiki)):
        if (SHARED / original).is_file():
            assert (SHARED / original).read_bytes().startswith(copy), original


def test_default_texts_follow_the_readme_check():
    raw = mdata.path_of("tinystories_val_slice.txt").read_text(encoding="utf-8")
    assert mdata.default_eval_text() == raw[:20_000].replace("\n\n", "\n")
    calib = mdata.default_calib_text()
    assert calib == raw[20_000:].replace("\n\n", "\n") and len(calib) > 100_000
    # disjoint: no evaluated story sentence reappears in the calibration text
    sentence = mdata.default_eval_text()[5000:5200]
    assert sentence not in calib


def test_float_perplexity_reproduces_reference(model, tok):
    ids = tok.encode(mdata.default_eval_text(), bos=True)
    assert ids[0] == tok.bos_id and len(ids) - 1 == 9505
    ppl = perplexity(model, ids, seq_len=512, progress=False)
    assert round(ppl, 4) == 3.6445


def test_greedy_decoding_matches_plain_reimplementation(model, tok):
    cfg, w = _parse_llama2c(mdata.path_of("stories260K.bin"))
    prompt = tok.encode("Once upon a time")
    n = len(RECORDED_CONTINUATION)
    full = torch.tensor(prompt + RECORDED_CONTINUATION)
    with torch.no_grad():
        # The plain forward is causal, so its greedy choice at each step is the argmax of its
        # logits at that position given the recorded prefix: it still decodes the recording.
        plain = _plain_forward(cfg, w, full.tolist())
        assert plain[len(prompt) - 1 : -1].argmax(-1).tolist() == RECORDED_CONTINUATION
        assert _greedy(lambda t: _plain_forward(cfg, w, t)[-1], prompt, 5) == (
            RECORDED_CONTINUATION[:5]
        )
        # HF greedy decoding (incremental, with its KV cache) reproduces it token for token
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=tok.eos_id,
        )
        assert out[0, len(prompt) :].tolist() == RECORDED_CONTINUATION
        # full logits agree too, not only their argmax
        diff = (model(full[None]).logits[0] - plain).abs().max()
    assert diff < 1e-3
    assert tok.decode(full.tolist()) == (
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
        "park. One day, she saw a big, red ball."
    )


def _write_checkpoint(path, dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len, shared, seed):
    g = torch.Generator().manual_seed(seed)
    head = dim // n_heads
    kv_dim = head * n_kv
    shapes = [
        (vocab, dim),
        (n_layers, dim),
        (n_layers, dim, dim),
        (n_layers, kv_dim, dim),
        (n_layers, kv_dim, dim),
        (n_layers, dim, dim),
        (n_layers, dim),
        (n_layers, hidden, dim),
        (n_layers, dim, hidden),
        (n_layers, hidden, dim),
        (dim,),
        (seq_len, head // 2),
        (seq_len, head // 2),
    ]
    if not shared:
        shapes.append((vocab, dim))
    arrays = []
    for i, s in enumerate(shapes):
        a = torch.randn(*s, generator=g) * (0.3 if len(s) > 1 else 1.0)
        if i in (1, 6, 10):
            a = 1.0 + 0.1 * a  # norm weights around 1
        arrays.append(a.numpy().astype("<f4").tobytes())
    header = struct.pack(
        "<7i", dim, hidden, n_layers, n_heads, n_kv, vocab if shared else -vocab, seq_len
    )
    path.write_bytes(header + b"".join(arrays))
    return path


@pytest.mark.parametrize("shared", [True, False])
def test_other_sizes_and_unshared_classifier(tmp_path, shared):
    path = _write_checkpoint(
        tmp_path / "m.bin",
        dim=48,
        hidden=80,
        n_layers=2,
        n_heads=6,
        n_kv=2,
        vocab=37,
        seq_len=32,
        shared=shared,
        seed=3,
    )
    m = load_llama2c(path)
    assert m.config.tie_word_embeddings == shared
    assert (m.lm_head.weight is m.model.embed_tokens.weight) == shared
    cfg, w = _parse_llama2c(path)
    tokens = torch.randint(0, 37, (20,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        diff = (m(torch.tensor([tokens])).logits[0] - _plain_forward(cfg, w, tokens)).abs().max()
    assert diff < 1e-4
    assert load_llama2c(path, dtype=torch.bfloat16).lm_head.weight.dtype == torch.bfloat16


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_llama2c(tmp_path / "missing.bin")
    good = _write_checkpoint(tmp_path / "m.bin", 16, 24, 1, 2, 1, 11, 8, True, 0).read_bytes()
    (tmp_path / "trunc.bin").write_bytes(good[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_llama2c(tmp_path / "trunc.bin")
    (tmp_path / "short.bin").write_bytes(good[:10])
    with pytest.raises(ValueError, match="truncated"):
        read_llama2c(tmp_path / "short.bin")
    (tmp_path / "long.bin").write_bytes(good + b"\0" * 8)
    with pytest.raises(ValueError, match="more than its header"):
        load_llama2c(tmp_path / "long.bin")
    (tmp_path / "bad.bin").write_bytes(struct.pack("<7i", 16, 24, 1, 3, 1, 11, 8) + good[28:])
    with pytest.raises(ValueError, match="not a multiple of n_heads"):
        load_llama2c(tmp_path / "bad.bin")
    (tmp_path / "v1.bin").write_bytes(struct.pack("<Ii", 0x616B3432, 1) + b"\0" * 300)
    with pytest.raises(NotImplementedError, match="version 1"):
        load_llama2c(tmp_path / "v1.bin")
    with pytest.raises(TypeError, match="dtype"):
        load_llama2c(dtype=torch.int8)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def _naive_encode(pieces, scores, text):
    """run.c encode, literally: rescan every pair for the best merge after each merge."""
    lookup = {p: i for i, p in reversed(list(enumerate(pieces)))}
    toks = [lookup[b" "]] if text else []
    for ch in text:
        b = ch.encode("utf-8")
        toks += [lookup[b]] if b in lookup else [x + 3 for x in b]
    while True:
        best, best_id, best_i = -1e10, -1, -1
        for i in range(len(toks) - 1):
            j = lookup.get(pieces[toks[i]] + pieces[toks[i + 1]], -1)
            if j != -1 and scores[j] > best:
                best, best_id, best_i = scores[j], j, i
        if best_i == -1:
            return toks
        toks[best_i : best_i + 2] = [best_id]


def test_hand_checked_encoding(tok):
    # Scores fall with the id (score = 259 - id), so the lowest-id merge goes first.
    # "the": " t" "h" "e" -> " t"(259) first -> " t" "he"(260) -> " the"(265).
    assert tok.pieces[259] == b" t" and tok.pieces[260] == b"he" and tok.pieces[265] == b" the"
    assert tok.encode("the") == [1, 265]
    assert tok.encode("a", bos=False) == [261]
    # "\n" is not a piece: byte fallback 0x0A + 3 = 13 after the dummy-prefix space (410)
    assert tok.pieces[410] == b" " and tok.encode("\n", bos=False, eos=True) == [410, 13, 2]
    assert tok.encode("") == [1] and tok.encode("", bos=False) == []
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (512, 1, 2)


def test_encoding_matches_naive_run_c(tok):
    text = mdata.default_calib_text()[:1500] + " caf\u00e9 \u201cquoted\u201d \u20ac5 \u6f22\u5b57"
    assert tok.encode(text, bos=False) == _naive_encode(tok.pieces, tok.scores, text)


def test_round_trip(tok):
    for text in [
        mdata.default_eval_text()[:3000],
        "  two leading spaces",
        "caf\u00e9 \u6f22 \u2603\n",
    ]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode(torch.tensor(ids)) == text
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([1, 600])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


def test_id_cache_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("MOPT_CACHE_DIR", str(tmp_path))
    text = mdata.default_eval_text()[:4000]
    ids = Llama2cTokenizer.from_file().encode(text)
    files = list((tmp_path / "llama2c_ids").glob("*.npy"))
    assert len(files) == 1
    fresh = Llama2cTokenizer.from_file()
    monkeypatch.setattr(fresh, "_bpe", lambda t: pytest.fail("cache not used"))
    assert fresh.encode(text) == ids
    # a damaged entry is recomputed, not trusted
    files[0].write_bytes(b"garbage")
    again = Llama2cTokenizer.from_file()
    assert again.encode(text) == ids


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Llama2cTokenizer.from_file(tmp_path / "nope.bin")
    raw = mdata.path_of("tok512.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="truncated"):
        Llama2cTokenizer.from_file(tmp_path / "t.bin")
