"""`mopt qat`: the table, results.json (ptq's schema plus loss curves) and the loss plot of a
short run on the shipped stories260K, and usage errors (rc 2, one line on stderr, the model not
loaded, nothing written)."""

import json

import pytest
from mopt import cli
from mopt import data as mdata
from mopt.models import llama2c

# 4 calibration and ~11 evaluation windows of 128 tokens, 4 training steps of 4 x 64 tokens.
FAST = ("--seq-len", "128", "--calib-samples", "4", "--no-progress", "--steps", "4",
        "--train-batch-size", "4", "--train-seq-len", "64")


def run_cli(capsys, *args):
    rc = cli.main(["qat", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    (folder / "eval.txt").write_text(mdata.default_eval_text()[:3000])
    (folder / "train.txt").write_text(mdata.default_train_text()[:6000])
    return folder


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading the model fails the test: these errors must come before it."""

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(llama2c, "load_llama2c", load)


def assert_usage_error(rc, err, *needles):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mopt qat: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_run_prints_one_table_and_writes_results(capsys, tmp_path, texts):
    out_dir = tmp_path / "out"
    rc, out, err = run_cli(capsys, *FAST, "--eval-text", str(texts / "eval.txt"), "--train-text",
                           str(texts / "train.txt"), "--lsq", "--out", str(out_dir))
    assert rc == 0, err
    names = ["float", "ptq", "qat", "qad", "qat_lsq"]
    assert out.count("| row | perplexity | change vs float | ptq gap recovered |") == 1
    for name in names:
        assert f"| {name} |" in out and f"  {name} " in out  # table row and progress line
    assert f"results: {out_dir / 'results.json'}" in out
    assert f"plot: {out_dir / 'qat_plot.png'}" in out

    res = json.loads((out_dir / "results.json").read_text())
    assert list(res) == ["metric", "setup", "date", "machine", "loss_curves", "rows"]
    assert res["metric"] == "perplexity"
    assert res["setup"]["config"] == "int4_b32" and res["setup"]["steps"] == 4
    assert res["setup"]["train_batch_size"] == 4 and res["setup"]["train_seq_len"] == 64
    assert [r["config"] for r in res["rows"]] == names
    rows = {r["config"]: r for r in res["rows"]}
    fl, ptq = rows["float"], rows["ptq"]
    assert fl["status"] == "float" and ptq["status"] == "ok", ptq
    assert ptq["metric"] > fl["metric"]  # 4-bit weights lose quality
    for name in names[1:]:
        r = rows[name]
        assert r["status"] == "ok", (name, r)
        assert list(r)[:5] == ["config", "status", "description", "reason", "metric"]
        assert r["change_pct"] == pytest.approx(100 * (r["metric"] / fl["metric"] - 1))
    for name in names[2:]:
        r = rows[name]
        assert r["metric"] != ptq["metric"] and r["steps"] == 4 and r["train_seconds"] > 0
        assert r["recovered_pct"] == pytest.approx(
            100 * (ptq["metric"] - r["metric"]) / (ptq["metric"] - fl["metric"]))
        curves = res["loss_curves"][name]
        assert len(curves["next_token"]) == 4
        assert len(curves["distillation"]) == (4 if name == "qad" else 0)
    assert (out_dir / "qat_plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unsupported_learned_scales_is_a_row_not_a_failure(capsys, tmp_path, texts):
    rc, out, err = run_cli(capsys, *FAST, "--steps", "1", "--config", "w4a8_awq", "--lsq",
                           "--no-qad", "--eval-text", str(texts / "eval.txt"), "--train-text",
                           str(texts / "train.txt"), "--no-plot")
    assert rc == 0, err
    assert "qat_lsq  not available: learned scales start from a max or mse calibration" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (("--steps", "0"), "steps must be a positive int"),
        (("--lr", "0"), "lr must be a positive finite number"),
        (("--lr", "nan"), "lr must be a positive finite number"),
        (("--config", "int9"), "unknown config name(s) ['int9']"),
        (("--config", "int8,fp8"), "config takes one mopt ptq short name"),
        (("--train-seq-len", "0"), "train_seq_len must be a positive int"),
        (("--train-batch-size", "-1"), "train_batch_size must be a positive int"),
        (("--kd-loss-weight", "1.5"), "kd_loss_weight must be a number in [0, 1]"),
        (("--threads", "0"), "--threads must be a positive number"),
        (("--model", "minilm"), "'minilm' is a ptq-only model"),
    ],
)
def test_bad_arguments_fail_before_the_model_loads(capsys, tmp_path, no_model_load, args,
                                                   message):
    out_dir = tmp_path / "out"
    rc, out, err = run_cli(capsys, *FAST, *args, "--out", str(out_dir))
    assert_usage_error(rc, err, message)
    assert out == "" and not out_dir.exists()


def test_missing_files(capsys, tmp_path, no_model_load):
    out_dir = tmp_path / "out"
    rc, _, err = run_cli(capsys, "--train-text", str(tmp_path / "t.txt"), "--out", str(out_dir))
    assert_usage_error(rc, err, "training text file not found")
    rc, _, err = run_cli(capsys, "--eval-text", str(tmp_path / "e.txt"), "--out", str(out_dir))
    assert_usage_error(rc, err, "eval text file not found")
    assert not out_dir.exists()


def test_earlier_results_need_overwrite(capsys, tmp_path, no_model_load):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "results.json").write_text("{}")
    rc, _, err = run_cli(capsys, *FAST, "--out", str(out_dir))
    assert_usage_error(rc, err, "already holds results.json", "--overwrite")
    assert [p.name for p in out_dir.iterdir()] == ["results.json"]
