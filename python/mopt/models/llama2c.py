"""llama2.c checkpoints and tokenizers (https://github.com/karpathy/llama2.c).

``load_llama2c(path)`` reads a legacy (version 0) llama2.c checkpoint of any size into a Hugging
Face ``LlamaForCausalLM``; ``Llama2cTokenizer`` is llama2.c's BPE tokenizer (run.c ``encode`` /
``decode``) with an on-disk cache of encoded ids. Without a path both use the stories260K model
and tok512 tokenizer shipped in ``mopt.data``.

Checkpoint layout: 7 little-endian int32 ``dim, hidden_dim, n_layers, n_heads, n_kv_heads,
vocab_size, seq_len`` (a negative vocab_size means the classifier is not shared with the token
embedding), then float32 arrays: token embedding [vocab, dim]; rms_att [L, dim]; wq [L, dim, dim];
wk, wv [L, kv_dim, dim]; wo [L, dim, dim]; rms_ffn [L, dim]; w1 [L, hidden, dim];
w2 [L, dim, hidden]; w3 [L, hidden, dim]; rms_final [dim]; two RoPE tables
[seq_len, head_dim / 2] (unused: recomputed); then, if unshared, the classifier [vocab, dim].
"""

from __future__ import annotations

import hashlib
import heapq
import os
import pathlib
import struct
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Llama2cConfig",
    "llama2c_config",
    "read_llama2c",
    "load_llama2c",
    "Llama2cTokenizer",
    "cache_dir",
]

_HEADER = struct.Struct("<7i")
# Newer llama2.c exports (version 1/2: fp32 reordered, int8) start with this magic ("ak42").
_MAGIC_V1 = 0x616B3432


@dataclass(frozen=True)
class Llama2cConfig:
    """The header of a llama2.c checkpoint."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.n_kv_heads

    def array_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every float32 array in file order."""
        L, d, h, kv = self.n_layers, self.dim, self.hidden_dim, self.kv_dim
        shapes = [
            ("tok_embeddings", (self.vocab_size, d)),
            ("rms_att", (L, d)),
            ("wq", (L, d, d)),
            ("wk", (L, kv, d)),
            ("wv", (L, kv, d)),
            ("wo", (L, d, d)),
            ("rms_ffn", (L, d)),
            ("w1", (L, h, d)),
            ("w2", (L, d, h)),
            ("w3", (L, h, d)),
            ("rms_final", (d,)),
            ("freq_cis_real", (self.seq_len, self.head_dim // 2)),
            ("freq_cis_imag", (self.seq_len, self.head_dim // 2)),
        ]
        if not self.shared_classifier:
            shapes.append(("wcls", (self.vocab_size, d)))
        return shapes

    def file_size(self) -> int:
        """Exact size in bytes of a checkpoint with this header."""
        return _HEADER.size + 4 * sum(int(np.prod(s)) for _, s in self.array_shapes())


def _default_model_path() -> pathlib.Path:
    from ..data import path_of

    return path_of("stories260K.bin")


def _default_tokenizer_path() -> pathlib.Path:
    from ..data import path_of

    return path_of("tok512.bin")


def _check_file(path: str | os.PathLike, what: str) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} file not found: {str(p)!r}")
    if not p.is_file():
        raise ValueError(f"{what} path {str(p)!r} is not a file")
    return p


def _read_header(path: pathlib.Path, size: int) -> Llama2cConfig:
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise ValueError(
            f"llama2.c checkpoint {str(path)!r} is truncated: {size} bytes, shorter than the "
            f"{_HEADER.size}-byte header"
        )
    if struct.unpack_from("<I", head)[0] == _MAGIC_V1:
        raise NotImplementedError(
            f"{str(path)!r} is a llama2.c version 1/2 export (magic 'ak42'); only the legacy "
            "(version 0) format written by export.py --version 0 / model.export() is supported"
        )
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = _HEADER.unpack(head)
    cfg = Llama2cConfig(dim, hidden, n_layers, n_heads, n_kv_heads, abs(vocab), seq_len, vocab > 0)
    problems = []
    for name in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"):
        if getattr(cfg, name) <= 0:
            problems.append(f"{name}={getattr(cfg, name)} must be positive")
    if not problems:
        if cfg.dim % cfg.n_heads:
            problems.append(f"dim={cfg.dim} is not a multiple of n_heads={cfg.n_heads}")
        elif cfg.head_dim % 2:
            problems.append(f"head_dim={cfg.head_dim} must be even for RoPE")
        if cfg.n_heads % cfg.n_kv_heads:
            problems.append(
                f"n_heads={cfg.n_heads} is not a multiple of n_kv_heads={cfg.n_kv_heads}"
            )
    if problems:
        raise ValueError(
            f"{str(path)!r} does not hold a llama2.c checkpoint header: " + "; ".join(problems)
        )
    return cfg


def _checked_config(p: pathlib.Path) -> Llama2cConfig:
    size = p.stat().st_size
    cfg = _read_header(p, size)
    expected = cfg.file_size()
    if size < expected:
        raise ValueError(
            f"llama2.c checkpoint {str(p)!r} is truncated: {size} bytes, but its header "
            f"(dim={cfg.dim}, n_layers={cfg.n_layers}, vocab_size={cfg.vocab_size}, "
            f"shared_classifier={cfg.shared_classifier}) needs {expected} bytes"
        )
    if size > expected:
        raise ValueError(
            f"llama2.c checkpoint {str(p)!r} has {size - expected} bytes more than its header "
            f"needs ({expected}); it is not a legacy llama2.c checkpoint or the header is wrong"
        )
    return cfg


def llama2c_config(path: str | os.PathLike | None = None) -> Llama2cConfig:
    """The header of a llama2.c checkpoint, after checking the file size matches it (the
    weights are not read)."""
    return _checked_config(
        _check_file(_default_model_path() if path is None else path, "llama2.c checkpoint")
    )


def read_llama2c(
    path: str | os.PathLike | None = None,
) -> tuple[Llama2cConfig, dict[str, np.ndarray]]:
    """Reads a llama2.c checkpoint: its header and float32 arrays by name (see the module doc).

    Raises FileNotFoundError for a missing file and ValueError for a truncated file or one whose
    size does not match its header.
    """
    p = _check_file(_default_model_path() if path is None else path, "llama2.c checkpoint")
    cfg = _checked_config(p)
    data = np.fromfile(p, dtype="<f4", offset=_HEADER.size)
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape in cfg.array_shapes():
        n = int(np.prod(shape))
        arrays[name] = data[offset : offset + n].reshape(shape)
        offset += n
    bad = [k for k, v in arrays.items() if not np.isfinite(v).all()]
    if bad:
        raise ValueError(f"llama2.c checkpoint {str(p)!r} holds NaN/Inf in {bad}")
    return cfg, arrays


def _rope_rows_to_half_split(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    # llama2.c rotates adjacent pairs (x[2i], x[2i+1]) of each head; HF's rotate_half pairs x[i]
    # with x[i + head_dim/2]. Reordering the projection rows turns one into the other.
    out_dim, in_dim = w.shape
    return (
        w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)
    )


def load_llama2c(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """Loads a llama2.c checkpoint (None: the shipped stories260K) as a Hugging Face
    ``LlamaForCausalLM`` in eval mode, with weights in `dtype`.

    The classifier is tied to the token embedding when the header's vocab_size is positive and a
    separate ``lm_head`` otherwise. q and k rows are permuted from llama2.c's interleaved RoPE to
    HF's half-split order, so the HF model computes the same function.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:  # pragma: no cover - transformers is a declared extra
        raise ImportError(
            "load_llama2c needs the 'transformers' package (pip install transformers)"
        ) from e

    cfg, arrays = read_llama2c(path)
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.seq_len,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=cfg.shared_classifier,
        bos_token_id=1,
        eos_token_id=2,
        rope_theta=10000.0,
        attention_bias=False,
        mlp_bias=False,
    )
    model = LlamaForCausalLM(hf_cfg)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    sd = {
        "model.embed_tokens.weight": t(arrays["tok_embeddings"]),
        "model.norm.weight": t(arrays["rms_final"]),
    }
    for i in range(cfg.n_layers):
        pre = f"model.layers.{i}."
        sd[pre + "input_layernorm.weight"] = t(arrays["rms_att"][i])
        sd[pre + "post_attention_layernorm.weight"] = t(arrays["rms_ffn"][i])
        sd[pre + "self_attn.q_proj.weight"] = _rope_rows_to_half_split(
            t(arrays["wq"][i]), cfg.n_heads
        )
        sd[pre + "self_attn.k_proj.weight"] = _rope_rows_to_half_split(
            t(arrays["wk"][i]), cfg.n_kv_heads
        )
        sd[pre + "self_attn.v_proj.weight"] = t(arrays["wv"][i])
        sd[pre + "self_attn.o_proj.weight"] = t(arrays["wo"][i])
        sd[pre + "mlp.gate_proj.weight"] = t(arrays["w1"][i])
        sd[pre + "mlp.down_proj.weight"] = t(arrays["w2"][i])
        sd[pre + "mlp.up_proj.weight"] = t(arrays["w3"][i])
    sd["lm_head.weight"] = (
        sd["model.embed_tokens.weight"] if cfg.shared_classifier else t(arrays["wcls"])
    )
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (cfg.shared_classifier and k == "lm_head.weight")]
    if missing or unexpected:  # a transformers version that renamed Llama's parameters
        raise RuntimeError(
            "LlamaForCausalLM parameter names differ from the llama2.c mapping: "
            f"missing {missing}, unexpected {unexpected}"
        )
    if cfg.shared_classifier and model.lm_head.weight is not model.model.embed_tokens.weight:
        model.tie_weights()
    return model.to(dtype).eval()


# ---------------------------------------------------------------------------------------------
# Tokenizer


def cache_dir() -> pathlib.Path:
    """mopt's cache folder: $MOPT_CACHE_DIR, else ~/.cache/mopt."""
    env = os.environ.get("MOPT_CACHE_DIR")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "mopt"


# Texts shorter than this are encoded directly: the disk round trip would cost more than BPE.
_DISK_CACHE_MIN_CHARS = 512


class Llama2cTokenizer:
    """llama2.c's BPE tokenizer (the merge rule of run.c ``encode``).

    Encoding: a dummy-prefix space, then each UTF-8 character becomes its token (a character
    missing from the vocabulary becomes its bytes, id = byte + 3), then the adjacent pair whose
    concatenation is in the vocabulary with the highest score is merged, the leftmost on ties,
    until no pair merges. Ids of long texts are cached on disk (``cache_dir()/llama2c_ids``),
    keyed by hashes of the tokenizer file and the text.
    """

    def __init__(
        self,
        pieces: list[bytes],
        scores: list[float],
        max_token_length: int,
        file_hash: str = "",
        bos_id: int = 1,
        eos_id: int = 2,
    ) -> None:
        if len(pieces) != len(scores):
            raise ValueError(f"{len(pieces)} pieces but {len(scores)} scores")
        if len(pieces) < 3 + 256:
            raise ValueError(
                f"a llama2.c vocabulary holds <unk>, <s>, </s> and 256 byte tokens first; got only "
                f"{len(pieces)} tokens"
            )
        self.pieces = list(pieces)
        self.scores = [float(s) for s in scores]
        self.max_token_length = max_token_length
        self.bos_id = bos_id
        self.eos_id = eos_id
        self._file_hash = (
            file_hash
            or hashlib.sha256(
                b"\0".join(self.pieces) + np.asarray(self.scores, "<f4").tobytes()
            ).hexdigest()
        )
        # run.c looks pieces up with bsearch over a sorted copy; with unique pieces that is a dict.
        self._lookup: dict[bytes, int] = {}
        for i, piece in enumerate(self.pieces):
            self._lookup.setdefault(piece, i)
        self._memory_cache: dict[tuple[str, bool, bool], list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @classmethod
    def from_file(cls, path: str | os.PathLike | None = None) -> Llama2cTokenizer:
        """Reads a llama2.c tokenizer.bin (None: the shipped tok512): int32 max_token_length,
        then per token float32 score, int32 length, bytes."""
        p = _check_file(_default_tokenizer_path() if path is None else path, "llama2.c tokenizer")
        raw = p.read_bytes()
        if len(raw) < 4:
            raise ValueError(f"llama2.c tokenizer {str(p)!r} is truncated: {len(raw)} bytes")
        (max_len,) = struct.unpack_from("<i", raw, 0)
        if max_len <= 0:
            raise ValueError(f"{str(p)!r} is not a llama2.c tokenizer: max_token_length={max_len}")
        pieces, scores, off = [], [], 4
        while off < len(raw):
            if off + 8 > len(raw):
                raise ValueError(
                    f"llama2.c tokenizer {str(p)!r} is truncated inside the record of token "
                    f"{len(pieces)} (offset {off} of {len(raw)})"
                )
            score, length = struct.unpack_from("<fi", raw, off)
            off += 8
            if length < 0 or length > max_len or off + length > len(raw):
                raise ValueError(
                    f"llama2.c tokenizer {str(p)!r} is truncated or corrupt at token "
                    f"{len(pieces)}: length {length}, max_token_length {max_len}, "
                    f"{len(raw) - off} bytes left"
                )
            pieces.append(raw[off : off + length])
            scores.append(score)
            off += length
        return cls(pieces, scores, max_len, hashlib.sha256(raw).hexdigest())

    # -- encoding -------------------------------------------------------------------------------
    def _bpe(self, text: str) -> list[int]:
        lookup = self._lookup
        syms: list[bytes] = []
        ids: list[int] = []
        if text:
            space = lookup.get(b" ")
            if space is None:
                raise ValueError("this vocabulary has no ' ' token for the dummy prefix")
            syms.append(b" ")
            ids.append(space)
        for ch in text:
            b = ch.encode("utf-8")
            tid = lookup.get(b)
            if tid is not None:
                syms.append(b)
                ids.append(tid)
            else:
                for byte in b:
                    syms.append(bytes([byte]))
                    ids.append(byte + 3)
        n = len(ids)
        if n < 2:
            return ids
        # run.c rescans every pair for the best merge after each merge (quadratic). A heap of
        # candidate pairs keyed by (-score, left position) pops the same pair: merged symbols
        # keep their left position, so the smallest position is the leftmost pair.
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        version = [0] * n
        scores = self.scores

        def candidate(i: int) -> tuple[float, int, int, int, int, int] | None:
            # the merge of symbol i with its right neighbour, if that concatenation is a piece
            j = nxt[i]
            tid = lookup.get(syms[i] + syms[j]) if j >= 0 else None
            return None if tid is None else (-scores[tid], i, j, version[i], version[j], tid)

        heap = [c for c in map(candidate, range(n - 1)) if c is not None]
        heapq.heapify(heap)

        def push(i: int) -> None:
            c = candidate(i)
            if c is not None:
                heapq.heappush(heap, c)

        alive = [True] * n
        while heap:
            _, i, j, vi, vj, tid = heapq.heappop(heap)
            if not (
                alive[i] and alive[j] and nxt[i] == j and version[i] == vi and version[j] == vj
            ):
                continue
            syms[i] = syms[i] + syms[j]
            ids[i] = tid
            version[i] += 1
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            if prv[i] >= 0:
                push(prv[i])
            push(i)
        out, i = [], 0
        while i >= 0:
            out.append(ids[i])
            i = nxt[i]
        return out

    def _disk_path(self, text: str, bos: bool, eos: bool) -> pathlib.Path:
        h = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return (
            cache_dir()
            / "llama2c_ids"
            / f"{self._file_hash[:24]}-{h[:32]}-{int(bos)}{int(eos)}.npy"
        )

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of `text` (run.c ``encode``), with BOS first when `bos` and EOS last when
        `eos`."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        key = (text, bool(bos), bool(eos))
        cached = self._memory_cache.get(key)
        if cached is not None:
            return list(cached)
        use_disk = len(text) >= _DISK_CACHE_MIN_CHARS
        ids = self._load_cached(self._disk_path(text, bos, eos)) if use_disk else None
        if ids is None:
            ids = ([self.bos_id] if bos else []) + self._bpe(text) + ([self.eos_id] if eos else [])
            if use_disk:
                self._store_cached(self._disk_path(text, bos, eos), ids)
        if len(self._memory_cache) > 64:
            self._memory_cache.clear()
        self._memory_cache[key] = ids
        return list(ids)

    def _load_cached(self, path: pathlib.Path) -> list[int] | None:
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if (
            arr.ndim != 1
            or arr.dtype != np.int32
            or (arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size))
        ):
            return None  # a damaged entry is recomputed and overwritten
        return arr.tolist()

    @staticmethod
    def _store_cached(path: pathlib.Path, ids: list[int]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.asarray(ids, dtype=np.int32), allow_pickle=False)
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        except OSError as e:
            warnings.warn(
                f"mopt: cannot write the token id cache in {path.parent}: {e}", stacklevel=3
            )

    # -- decoding -------------------------------------------------------------------------------
    def _piece_bytes(self, tid: int) -> bytes:
        piece = self.pieces[tid]
        # byte-fallback tokens are stored as the text "<0xAB>"
        if len(piece) == 6 and piece.startswith(b"<0x") and piece.endswith(b">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                return piece
        return piece

    def decode(self, ids: list[int] | torch.Tensor | np.ndarray) -> str:
        """Text of `ids`: BOS/EOS are dropped, byte tokens become their bytes, and the leading
        space of the first piece (the dummy prefix) is removed, so
        ``decode(encode(text)) == text``."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            ids = ids.tolist()
        out = bytearray()
        first = True
        for tid in ids:
            if not isinstance(tid, (int, np.integer)) or not 0 <= tid < self.vocab_size:
                raise ValueError(
                    f"token id {tid!r} is outside the vocabulary [0, {self.vocab_size})"
                )
            if tid in (self.bos_id, self.eos_id):
                first = True  # run.c: the piece after BOS drops its leading space
                continue
            piece = self._piece_bytes(int(tid))
            if first and piece.startswith(b" "):
                piece = piece[1:]
            first = False
            out += piece
        return out.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return (
            f"Llama2cTokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id})"
        )
