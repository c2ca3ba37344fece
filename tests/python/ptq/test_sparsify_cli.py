"""`mopt sparsify`: the table and results.json of a short run on the shipped stories260K, and
usage errors (rc 2, one line on stderr, the model not loaded, nothing written)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from mopt import cli
from mopt import data as mdata
from mopt.models import llama2c
from mopt.ptq import sparsify

ROOT = pathlib.Path(__file__).resolve().parents[3]
# 4 calibration and ~11 evaluation windows of 128 tokens: seconds per mode.
FAST = ("--seq-len", "128", "--calib-samples", "4", "--no-progress")


def run_cli(capsys, *args):
    rc = cli.main(["sparsify", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "eval.txt"
    path.write_text(mdata.default_eval_text()[:3000])
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
    assert len(lines) == 1 and lines[0].startswith("mopt sparsify: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_parse_pattern():
    assert sparsify.parse_pattern("2:4") == (2, 4)
    assert sparsify.parse_pattern(" 1:8 sparsity") == (1, 8)
    for bad in ("5:4", "0:4", "x", "2:4:8", "2/4", "", "-1:4", "2:4 dense", "2:64"):
        with pytest.raises(ValueError, match="sparsity pattern") as e:
            sparsify.parse_pattern(bad)
        assert not str(e.value).startswith("mopt: ")  # the CLI prefixes its own name


def test_resolve_modes():
    assert [m.name for m in sparsify.resolve_modes(None)] == ["magnitude", "wanda", "sparsegpt"]
    modes = sparsify.resolve_modes("sparsegpt_mask_only, magnitude,magnitude")
    assert [m.name for m in modes] == ["sparsegpt_mask_only", "magnitude"]
    assert modes[0].config("2:4 sparsity", None) == {
        "pattern": "2:4 sparsity",
        "update_weights": False,
        "forward_loop": None,
    }
    with pytest.raises(ValueError, match=r"unknown mode name\(s\) \['sparse'\]"):
        sparsify.resolve_modes("magnitude,sparse")
    with pytest.raises(ValueError, match="no mode given"):
        sparsify.resolve_modes(" , ")


def test_run_prints_one_table_and_writes_results(capsys, tmp_path, eval_file):
    out_dir = tmp_path / "out"
    rc, out, err = run_cli(
        capsys, *FAST, "--eval-text", str(eval_file), "--quantize", "fp8", "--out", str(out_dir)
    )
    assert rc == 0, err
    names = ["dense", "fp8"] + [
        f"{m}{q}" for m in ("magnitude", "wanda", "sparsegpt") for q in ("", "+fp8")
    ]
    assert (
        out.count("| config | perplexity | change vs dense | sparsity of sparsified layers |") == 1
    )
    for name in names:
        assert f"| {name} |" in out and f"  {name} " in out  # table row and progress line
    assert f"results: {out_dir / 'results.json'}" in out
    assert f"plot: {out_dir / 'sparsify_plot.png'}" in out

    res = json.loads((out_dir / "results.json").read_text())
    assert list(res) == ["metric", "setup", "sparsity_definition", "date", "machine", "rows"]
    assert res["metric"] == "perplexity"
    assert res["setup"]["pattern"] == "2:4" and res["setup"]["quantize"] == "fp8"
    assert res["setup"]["seq_len"] == 128 and res["setup"]["calib_samples"] == 4
    assert [r["config"] for r in res["rows"]] == names
    rows = {r["config"]: r for r in res["rows"]}
    dense = rows["dense"]
    assert dense["status"] == "dense" and dense["sparsity"] == 0.0
    assert dense["sparse_layers"] == 35  # 5 blocks x (q, k, v, o, gate, up, down); lm_head kept
    for name in names[1:]:
        r = rows[name]
        assert r["status"] == "ok", (name, r)
        assert list(r)[:5] == ["config", "status", "description", "reason", "metric"]
        assert r["change_pct"] == pytest.approx(100 * (r["metric"] / dense["metric"] - 1))
        assert r["seconds"] > 0
    assert rows["fp8"]["change_pct"] < 5
    for mode in ("magnitude", "wanda", "sparsegpt"):
        for r in (rows[mode], rows[mode + "+fp8"]):
            assert r["sparse_layers"] == 35
            # 2 of every 4 weights pruned; a kept weight is rarely exactly zero
            assert 0.5 <= r["sparsity"] < 0.51, r
        assert rows[mode + "+fp8"]["quantize_seconds"] > 0
        assert rows[mode + "+fp8"]["metric"] != rows[mode]["metric"]
    # real text separates the methods: SparseGPT's weight update beats pruning alone
    assert rows["sparsegpt"]["metric"] < rows["magnitude"]["metric"]
    assert (out_dir / "sparsify_plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failing_mode_gives_rc_1_and_keeps_the_others(capsys, tmp_path, eval_file, monkeypatch):
    import mopt.sparsity as mts

    real = mts.sparsify

    def broken(model, mode, config=None):
        if mode[0][0] == "wanda":
            raise RuntimeError("wanda broke\nsecond line")
        return real(model, mode, config=config)

    monkeypatch.setattr(mts, "sparsify", broken)
    out_dir = tmp_path / "out"
    rc, out, err = run_cli(
        capsys,
        *FAST,
        "--eval-text",
        str(eval_file),
        "--modes",
        "wanda,magnitude",
        "--out",
        str(out_dir),
        "--no-plot",
    )
    assert rc == 1
    assert "- wanda: failed: RuntimeError: wanda broke" in out and "| magnitude |" in out
    assert "wanda failed" in err  # the traceback, on stderr
    rows = json.loads((out_dir / "results.json").read_text())["rows"]
    assert [(r["config"], r["status"]) for r in rows] == [
        ("dense", "dense"),
        ("wanda", "failed"),
        ("magnitude", "ok"),
    ]
    assert sorted(p.name for p in out_dir.iterdir()) == ["results.json"]


@pytest.mark.parametrize(
    "args, message",
    [
        (("--modes", "magnitude,sparse"), "unknown mode name(s) ['sparse']"),
        (("--modes", ","), "no mode given"),
        (("--pattern", "5:4"), "sparsity pattern '5:4': N:M needs 1 <= N <= M"),
        (("--pattern", "x"), "unknown sparsity pattern 'x': expected 'N:M sparsity'"),
        (("--pattern", "0:4"), "sparsity pattern '0:4': N:M needs 1 <= N <= M"),
        (("--quantize", "int9"), "unknown config name(s) ['int9']"),
        (("--quantize", "fp8,int8"), "quantize takes one config short name"),
        (("--calib-samples", "0"), "calib_samples must be a positive int"),
        (("--threads", "0"), "--threads must be a positive number"),
        (("--device", "nonsense"), "invalid device"),
        (("--model", "minilm"), "'minilm' is a ptq-only model"),
    ],
)
def test_bad_arguments_fail_before_the_model_loads(capsys, tmp_path, no_model_load, args, message):
    out_dir = tmp_path / "out"
    rc, out, err = run_cli(capsys, *FAST, *args, "--out", str(out_dir))
    assert_usage_error(rc, err, message)
    assert out == "" and not out_dir.exists()


def test_missing_files(capsys, tmp_path, no_model_load):
    out_dir = tmp_path / "out"
    rc, _, err = run_cli(capsys, "--model", str(tmp_path / "nope.bin"), "--out", str(out_dir))
    assert_usage_error(rc, err, "model not found", "nope.bin")
    rc, _, err = run_cli(capsys, "--eval-text", str(tmp_path / "e.txt"), "--out", str(out_dir))
    assert_usage_error(rc, err, "eval text file not found")
    rc, _, err = run_cli(capsys, "--calib-text", str(tmp_path / "c.txt"), "--out", str(out_dir))
    assert_usage_error(rc, err, "calibration text file not found")
    assert not out_dir.exists()


def test_earlier_results_need_overwrite(capsys, tmp_path, no_model_load):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "sparsify_plot.png").write_bytes(b"old plot")
    rc, _, err = run_cli(capsys, *FAST, "--out", str(out_dir))
    assert_usage_error(rc, err, "already holds sparsify_plot.png", "--overwrite")
    assert [p.name for p in out_dir.iterdir()] == ["sparsify_plot.png"]


def test_python_dash_m_entry_point(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mopt",
            "sparsify",
            "--pattern",
            "2:4:8",
            "--out",
            str(tmp_path / "o"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("mopt sparsify: error: unknown sparsity pattern '2:4:8': expected")
    assert not (tmp_path / "o").exists()
