"""Real data shipped inside the package, so the demo and tests run without ../shared/data.

* ``stories260K.bin``: a 260K-parameter Llama model trained on TinyStories (llama2.c format).
* ``tok512.bin``: its 512-token BPE tokenizer (llama2.c format).
* ``tinystories_val_slice.txt``: the first 150,000 characters of the TinyStories validation split.
* ``tinystories_finetune_slice.txt``: the next 450,063 characters, training text disjoint from it.
* ``ddpm_fashion_unet.pt``: a U-Net DDPM noise predictor trained on Fashion-MNIST.
* ``ddpm_mnist.pth``: a plain-CNN DDPM noise predictor trained on MNIST.
* ``mnist-t10k-*-ubyte.gz``: the real MNIST test set (10,000 images and labels, idx format).
* ``fid_classifier_*.safetensors``: the small classifiers whose features ``mopt.cache_diffusion``
  scores sample fidelity with (trained by this project, tools/train_fid_classifier.py).

Sources and licenses: LICENSE and NOTICE in this folder.
"""

from __future__ import annotations

import functools
import gzip
import pathlib
import struct

import numpy as np

__all__ = [
    "DATA_DIR",
    "EVAL_CHARS",
    "path_of",
    "default_eval_text",
    "default_calib_text",
    "default_train_text",
    "files",
    "read_idx",
    "mnist_test_set",
    "fashion_mnist",
    "FASHION_MNIST_DIR",
]

DATA_DIR = pathlib.Path(__file__).resolve().parent

# The evaluation text is the first EVAL_CHARS characters of the validation split (the check in
# ../shared/data/README.md: float perplexity 3.6445); calibration text is everything after it,
# so calibration never sees a token that is evaluated.
EVAL_CHARS = 20_000

_FILES = {
    "stories260K.bin": "stories260K model, llama2.c format",
    "tok512.bin": "tok512 tokenizer, llama2.c format",
    "tinystories_val_slice.txt": "first 150,000 characters of the TinyStories validation split",
    "tinystories_finetune_slice.txt": (
        "characters 150,000 to 600,062 of the TinyStories validation split (training text)"
    ),
    "wikitext2_test_slice.txt": "first 2,175 lines (400 paragraph rows) of the WikiText-2 test split",
    "ddpm_fashion_unet.pt": "U-Net DDPM noise predictor trained on Fashion-MNIST (1000 steps)",
    "ddpm_mnist.pth": "plain-CNN DDPM noise predictor trained on MNIST (1000 steps)",
    "mnist-t10k-images-idx3-ubyte.gz": "the MNIST test images (10,000 x 28 x 28, idx format)",
    "mnist-t10k-labels-idx1-ubyte.gz": "the MNIST test labels (10,000, idx format)",
    "fid_classifier_fashion.safetensors": (
        "Fashion-MNIST classifier (trained by mopt) and its features' statistics on the test set"
    ),
    "fid_classifier_mnist.safetensors": (
        "MNIST classifier (trained by mopt) and its features' statistics on MNIST test images "
        "5000-9999"
    ),
}

# Where the Debian package dataset-fashion-mnist installs Fashion-MNIST (not shipped with mopt).
FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


def files() -> dict[str, str]:
    """Name -> description of every shipped data file."""
    return dict(_FILES)


def path_of(name: str) -> pathlib.Path:
    """Absolute path of a shipped data file (see files())."""
    if name not in _FILES:
        raise ValueError(f"mopt.data has no file {name!r}; shipped files: {sorted(_FILES)}")
    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"shipped data file {path} is missing; reinstall mopt")
    return path


@functools.lru_cache(maxsize=1)
def _validation_slice() -> str:
    # newline="" keeps the text byte-for-byte as shipped (no newline translation).
    with open(path_of("tinystories_val_slice.txt"), encoding="utf-8", newline="") as f:
        return f.read()


def _normalize(text: str) -> str:
    # Stories are separated by blank lines; the reference perplexity joins them with one newline.
    return text.replace("\n\n", "\n")


def default_eval_text() -> str:
    """The evaluation text: the first 20,000 characters of the TinyStories validation split, each
    "\\n\\n" replaced by "\\n" (encoded with one BOS and scored in non-overlapping 512-token
    windows, stories260K reaches perplexity 3.6445 over 9,505 predicted tokens)."""
    return _normalize(_validation_slice()[:EVAL_CHARS])


def default_calib_text() -> str:
    """Calibration text: the shipped validation characters after the evaluation text (disjoint
    from it), normalized the same way."""
    return _normalize(_validation_slice()[EVAL_CHARS:])


def default_train_text() -> str:
    """Training text for fine-tuning (QAT, sparsity fine-tuning): the TinyStories validation
    characters right after the shipped slice, disjoint from the evaluation and calibration text,
    normalized the same way."""
    with open(path_of("tinystories_finetune_slice.txt"), encoding="utf-8", newline="") as f:
        return _normalize(f.read())


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Reads an idx file (the MNIST format, gzip-compressed or not) into a numpy array."""
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{str(path)!r} is not an idx file (header {data[:4].hex()!r})")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"idx file {str(path)!r} is truncated inside its header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"idx file {str(path)!r} has {len(data)} bytes, expected {expected} for shape {shape}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


@functools.lru_cache(maxsize=1)
def mnist_test_set() -> tuple[np.ndarray, np.ndarray]:
    """The shipped MNIST test set: uint8 images (10000, 28, 28) and uint8 labels (10000,)."""
    images = read_idx(path_of("mnist-t10k-images-idx3-ubyte.gz"))
    labels = read_idx(path_of("mnist-t10k-labels-idx1-ubyte.gz"))
    return images, labels


def fashion_mnist(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` ("train": 60,000, "test": 10,000) from the Debian package
    dataset-fashion-mnist: uint8 images (N, 28, 28) and uint8 labels (N,). FileNotFoundError
    naming the package when it is not installed."""
    if split not in ("train", "test"):
        raise ValueError(f"fashion_mnist: split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    images_path = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (images_path, labels_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file {str(p)!r} not found; install the Debian package "
                "dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
            )
    return read_idx(images_path), read_idx(labels_path)
