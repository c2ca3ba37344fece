"""Real data shipped inside the package, so the demo and tests run without ../shared/data.

* ``stories260K.bin``: a 260K-parameter Llama model trained on TinyStories (llama2.c format).
* ``tok512.bin``: its 512-token BPE tokenizer (llama2.c format).
* ``tinystories_val_slice.txt``: the first 150,000 characters of the TinyStories validation split.

Sources and licenses: LICENSE and NOTICE in this folder.
"""

from __future__ import annotations

import functools
import pathlib

__all__ = [
    "DATA_DIR",
    "EVAL_CHARS",
    "path_of",
    "default_eval_text",
    "default_calib_text",
    "files",
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
    "wikitext2_test_slice.txt": "first 2,175 lines (400 paragraph rows) of the WikiText-2 test split",
}


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
