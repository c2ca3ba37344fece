"""`mopt ptq` on bad input: one clear line on stderr, rc 2 (usage) and nothing written or lost.

Each error case checks the --out folder afterwards: one that did not exist is not created, an
existing results folder is byte for byte as it was. The runs that succeed use the shipped
stories260K, one cheap config and a few short windows.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from mopt import cli
from mopt import data as mdata
from mopt.models import llama2c
from mopt.ptq import report

ROOT = pathlib.Path(__file__).resolve().parents[3]
FAST = ("--configs", "int8_wo", "--seq-len", "64", "--calib-samples", "2", "--no-progress")


def run_cli(capsys, *args):
    rc = cli.main(["ptq", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(folder: pathlib.Path) -> dict:
    """Every file under `folder` with its bytes and mtime (None when `folder` does not exist)."""
    if not folder.exists():
        return None
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def previous_run(folder: pathlib.Path) -> dict:
    """A results folder as an earlier run left it, plus a file of the user's."""
    folder.mkdir(parents=True)
    (folder / "results.json").write_text('{"metric": "perplexity", "rows": []}\n')
    (folder / "ptq_plot.png").write_bytes(b"\x89PNG\r\n\x1a\nold plot")
    (folder / "notes.txt").write_text("mine")
    return snapshot(folder)


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text(mdata.default_eval_text()[:1500])
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading the model fails the test: these errors must come before it."""

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(llama2c, "load_llama2c", load)


def assert_usage_error(rc, err, *needles):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mopt ptq: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -- the output folder ------------------------------------------------------------------------


def test_out_is_a_file_or_under_one(capsys, tmp_path, eval_file, no_model_load):
    target = tmp_path / "results"
    target.write_text("not a folder")
    rc, _, err = run_cli(capsys, *FAST, "--eval-text", str(eval_file), "--out", str(target))
    assert_usage_error(rc, err, "is a file, not a folder", str(target))
    assert target.read_text() == "not a folder"
    rc, _, err = run_cli(
        capsys, *FAST, "--eval-text", str(eval_file), "--out", str(target / "sub" / "dir")
    )
    assert_usage_error(rc, err, "cannot create the output folder", str(target / "sub" / "dir"))
    assert target.read_text() == "not a folder"


def test_out_that_cannot_be_created(capsys, tmp_path, eval_file, monkeypatch, no_model_load):
    target = tmp_path / "ro" / "new" / "out"

    def refuse(self, *args, **kwargs):  # a read-only parent (root ignores chmod, so fake it)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    rc, _, err = run_cli(capsys, *FAST, "--eval-text", str(eval_file), "--out", str(target))
    assert_usage_error(rc, err, "cannot create the output folder", str(target))
    assert not target.parent.exists()


def test_out_that_cannot_be_written(capsys, tmp_path, eval_file, monkeypatch, no_model_load):
    target = tmp_path / "out" / "deeper"

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(report.tempfile, "TemporaryFile", refuse)  # root ignores chmod
    rc, _, err = run_cli(capsys, *FAST, "--eval-text", str(eval_file), "--out", str(target))
    assert_usage_error(rc, err, "cannot write to the output folder", "Permission denied")
    assert not (tmp_path / "out").exists()  # the folders it created are gone again


def test_read_only_out(capsys, tmp_path, eval_file, monkeypatch, no_model_load):
    target = tmp_path / "ro"
    target.mkdir()

    def refuse(*args, **kwargs):  # a read-only folder (root ignores chmod, so fake it)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(report.tempfile, "TemporaryFile", refuse)
    rc, _, err = run_cli(capsys, *FAST, "--eval-text", str(eval_file), "--out", str(target))
    assert_usage_error(rc, err, "cannot write to the output folder", str(target))
    assert snapshot(target) == {}
    assert target.is_dir()  # a folder the user made is kept


def test_existing_results_are_not_overwritten(capsys, tmp_path, eval_file, no_model_load):
    out = tmp_path / "out"
    before = previous_run(out)
    rc, _, err = run_cli(capsys, *FAST, "--eval-text", str(eval_file), "--out", str(out))
    assert_usage_error(rc, err, "already holds results.json and ptq_plot.png", "--overwrite")
    assert snapshot(out) == before
    (out / "results.json").unlink()  # a plot alone is an earlier run's output too
    before = snapshot(out)
    rc, _, err = run_cli(capsys, *FAST, "--eval-text", str(eval_file), "--out", str(out))
    assert_usage_error(rc, err, "already holds ptq_plot.png")
    assert snapshot(out) == before


def test_overwrite_replaces_both_outputs_and_removes_a_stale_plot(capsys, tmp_path, eval_file):
    out = tmp_path / "out"
    previous_run(out)
    rc, stdout, err = run_cli(
        capsys, *FAST, "--eval-text", str(eval_file), "--out", str(out), "--overwrite", "--no-plot"
    )
    assert rc == 0, err
    assert stdout.count("| config | perplexity |") == 1  # one table
    res = json.loads((out / "results.json").read_text())
    assert [r["config"] for r in res["rows"]] == ["float", "int8_wo"]
    assert res["setup"]["seq_len"] == 64
    assert not (out / "ptq_plot.png").exists()  # no stale plot beside the new results.json
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "results.json"]


def test_a_failing_plot_keeps_the_results(tmp_path, monkeypatch, caplog):
    rows = [report.PtqResult("float", "float", metric=2.0, effective_bits=16.0)]
    out = tmp_path / "out"
    previous_run(out)

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(report, "plot_results", broken)
    results = report.results_dict(rows, "perplexity", {"model": "m"})
    report.write_results(results, rows, out, "perplexity", True, lambda s: None)
    assert json.loads((out / "results.json").read_text())["setup"] == {"model": "m"}
    assert not (out / "ptq_plot.png").exists() and results["plot"] is None
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "results.json"]
    assert "the plot failed, none written: RuntimeError: no display" in caplog.text


def test_input_error_after_the_folder_check_leaves_it_as_it_was(capsys, tmp_path):
    out = tmp_path / "out"
    before = previous_run(out)
    rc, _, err = run_cli(
        capsys,
        *FAST,
        "--eval-text",
        str(tmp_path / "missing.txt"),
        "--out",
        str(out),
        "--overwrite",
    )
    assert_usage_error(rc, err, "eval text file not found")
    assert snapshot(out) == before
    new = tmp_path / "a" / "b"
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time.")
    rc, _, err = run_cli(capsys, *FAST, "--eval-text", str(short), "--out", str(new))
    assert_usage_error(rc, err, "too short for one window")
    assert not (tmp_path / "a").exists()  # created for the check, removed again


def test_entry_point_gives_one_line_and_rc_2(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    proc = subprocess.run(
        [sys.executable, "-m", "mopt", "ptq", *FAST, "--out", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"mopt ptq: error: the output folder (--out) {str(target)!r} is a file, not a folder"
    ]


# -- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--seq-len", "0", "seq_len must be a positive int"),
        ("--seq-len", "-5", "seq_len must be a positive int"),
        ("--seq-len", str(2**31), "seq_len must be a positive int (below 2**31)"),
        ("--seq-len", "100000", "seq_len 100000 exceeds the model's maximum of 512"),
        ("--calib-seq-len", "0", "calib_seq_len must be a positive int"),
        ("--calib-seq-len", "-1", "calib_seq_len must be a positive int"),
        ("--calib-samples", "0", "calib_samples must be a positive int"),
        ("--calib-samples", "-3", "calib_samples must be a positive int"),
        ("--calib-samples", "100000", "calibration text is too short"),
        ("--batch-size", "0", "batch_size must be a positive int"),
        ("--batch-size", "-8", "batch_size must be a positive int"),
        ("--eval-rows", "0", "eval_rows must be a positive int"),
        ("--seed", "-1", "seed must be an int in [0, 2**64)"),
        ("--seed", str(2**64), "seed must be an int in [0, 2**64)"),
        ("--threads", "1000000", "threads must be a positive int (at most"),
        ("--threads", "-2", "--threads must be a positive number"),
        ("--device", "meta", "device 'meta' is not supported"),
        ("--device", "nonsense", "invalid device"),
        ("--configs", ",", "no config given"),
    ],
)
def test_bad_numbers(capsys, tmp_path, eval_file, option, value, message):
    out = tmp_path / "out"
    args = [*FAST, "--eval-text", str(eval_file), "--out", str(out), option, value]
    rc, _, err = run_cli(capsys, *args)
    assert_usage_error(rc, err, message)
    assert not out.exists()


def test_non_numbers_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["ptq", "--seq-len", "1e3"])
    assert e.value.code == 2 and "invalid int value: '1e3'" in capsys.readouterr().err


# -- files ------------------------------------------------------------------------------------


def test_unreadable_text_and_tokenizer_files(capsys, tmp_path, eval_file):
    out = tmp_path / "out"
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    rc, _, err = run_cli(capsys, *FAST, "--calib-text", str(binary), "--out", str(out))
    assert_usage_error(rc, err, "calibration text file", "is not UTF-8 text")
    rc, _, err = run_cli(capsys, *FAST, "--eval-text", str(tmp_path), "--out", str(out))
    assert_usage_error(rc, err, "is not a file")
    rc, _, err = run_cli(capsys, *FAST, "--tokenizer", str(tmp_path / "t.bin"), "--out", str(out))
    assert_usage_error(rc, err, "tokenizer file not found")
    rc, _, err = run_cli(capsys, *FAST, "--tokenizer", str(binary), "--out", str(out))
    assert_usage_error(rc, err, "tokenizer", "truncated")
    assert not out.exists()


def test_unreadable_file_is_one_line(capsys, tmp_path, eval_file, monkeypatch):
    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "read_text", denied)  # root ignores chmod
    rc, _, err = run_cli(capsys, *FAST, "--eval-text", str(eval_file))
    assert_usage_error(rc, err, "eval text file", "cannot be read: Permission denied")


# -- Hugging Face model folders ---------------------------------------------------------------


def _tiny_tokenizer(folder: pathlib.Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(mdata.default_eval_text()[:1500].split()))
    vocab = {"<unk>": 0, "<s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>")
    tok.save_pretrained(folder)


def _llama_config(**overrides) -> dict:
    cfg = {
        "model_type": "llama",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "vocab_size": 600,
        "max_position_embeddings": 128,
    }
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON: Expecting property name"),
        ("", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object, not a list"),
        ('{"hidden_size": 16}', "names no model_type"),
        ('{"model_type": "no-such-model"}', "is not usable: ValueError"),
        (json.dumps(_llama_config(hidden_size="wide")), "is not usable: "),
        (json.dumps(_llama_config(max_position_embeddings=-4)), "max_position_embeddings must be"),
    ],
)
def test_bad_config_json(capsys, tmp_path, content, message):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(content)
    _tiny_tokenizer(folder)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, *FAST, "--model", str(folder), "--out", str(out))
    assert_usage_error(rc, err, repr(str(folder / "config.json")), message)
    assert not out.exists()


def test_hugging_face_folder_without_tokenizer_or_weights(capsys, tmp_path, eval_file):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_llama_config()))
    out = tmp_path / "out"
    args = [*FAST, "--model", str(folder), "--eval-text", str(eval_file), "--out", str(out)]
    rc, _, err = run_cli(capsys, *args)
    assert_usage_error(rc, err, "cannot load a Hugging Face tokenizer from", str(folder))
    rc, _, err = run_cli(capsys, *args, "--tokenizer", str(tmp_path / "nope"))
    assert_usage_error(rc, err, "tokenizer not found")
    assert not out.exists()
    _tiny_tokenizer(folder)  # a tokenizer but no weights: fails at loading, after the folder check
    before = previous_run(out)
    rc, _, err = run_cli(capsys, *args, "--overwrite", "--calib-text", str(eval_file))
    assert_usage_error(rc, err, "cannot load a causal LM from the Hugging Face folder")
    assert snapshot(out) == before
