"""`mopt export`: one config, one format, a folder written whole; bad input exits 2 with
nothing written."""

from __future__ import annotations

import json
import os

import pytest
from safetensors import safe_open

from mopt import cli


def run(capsys, *args):
    rc = cli.main(["export", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_fp8_to_hf_folder(capsys, tmp_path):
    out_dir = tmp_path / "fp8_hf"
    rc, out, err = run(capsys, "--config", "fp8", "--format", "hf", "--out", str(out_dir),
                       "--no-progress", "--calib-samples", "4")
    assert rc == 0, err
    assert sorted(os.listdir(out_dir)) == ["config.json", "generation_config.json",
                                           "hf_quant_config.json", "model.safetensors",
                                           "results.json"]
    results = json.loads((out_dir / "results.json").read_text())
    row = results["rows"][0]
    assert results["setup"]["format"] == "hf" and row["config"] == "fp8"
    assert row["metric"] > 1 and row["files"]["model.safetensors"] > 0
    assert "model.safetensors" in out and "load it with" in out and "perplexity" in out
    with safe_open(str(out_dir / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert "model.layers.0.self_attn.q_proj.weight_scale" in names


@pytest.mark.parametrize("args,message", [
    (["--config", "int9", "--format", "hf"], "unknown config name"),
    (["--config", "fp8", "--format", "tflite"], "invalid choice"),
    (["--config", "mxfp8", "--format", "hf"], "no equivalent"),
])
def test_bad_input_writes_nothing(capsys, tmp_path, args, message):
    out_dir = tmp_path / "x"
    try:
        rc, _, err = run(capsys, *args, "--out", str(out_dir), "--no-progress",
                         "--calib-samples", "2")
    except SystemExit as e:  # argparse's own choices check
        rc, err = e.code, capsys.readouterr().err
    assert rc == 2 and message in err
    assert not out_dir.exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_non_empty_out_is_refused(capsys, tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    rc, _, err = run(capsys, "--config", "fp8", "--format", "hf", "--out", str(tmp_path))
    assert rc == 2 and "not empty" in err
    assert os.listdir(tmp_path) == ["mine.txt"]


def test_int8_to_onnx_runs_in_onnxruntime_at_any_length(capsys, tmp_path):
    np = pytest.importorskip("numpy")
    pytest.importorskip("onnxruntime")
    from mopt.export.onnx import onnxruntime_session

    out_dir = tmp_path / "int8_onnx"
    rc, out, err = run(capsys, "--config", "int8", "--format", "onnx", "--out", str(out_dir),
                       "--no-progress", "--calib-samples", "2", "--seq-len", "64")
    assert rc == 0, err
    assert sorted(os.listdir(out_dir)) == ["model.onnx", "results.json"]
    sess = onnxruntime_session(str(out_dir / "model.onnx"))
    for n in (3, 17):  # the sequence axis is dynamic
        logits = sess.run(None, {"input_ids": np.arange(1, n + 1, dtype=np.int64)[None]})[0]
        assert logits.shape == (1, n, 512) and np.isfinite(logits).all()


def test_int8_weight_only_to_compressed_tensors_loads_in_transformers(capsys, tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    from mopt import data as mdata
    from mopt.eval import perplexity
    from mopt.ptq.models import resolve_model

    out_dir = tmp_path / "ct"
    rc, _, err = run(capsys, "--config", "int8_wo", "--format", "compressed-tensors", "--out",
                     str(out_dir), "--no-progress", "--calib-samples", "2")
    assert rc == 0, err
    ours = json.loads((out_dir / "results.json").read_text())["rows"][0]["metric"]
    model = AutoModelForCausalLM.from_pretrained(str(out_dir))
    ids = resolve_model("default").encode(mdata.default_eval_text())
    theirs = perplexity(model, ids, 512, progress=False)
    assert abs(theirs - ours) / ours < 1e-4, (theirs, ours)


def test_q8_0_to_gguf_loads_in_llama_cpp(capsys, tmp_path):
    np = pytest.importorskip("numpy")
    llama_cpp = pytest.importorskip("llama_cpp")

    out_dir = tmp_path / "gguf"
    rc, _, err = run(capsys, "--config", "gguf_q8_0", "--format", "gguf", "--out", str(out_dir),
                     "--no-progress", "--calib-samples", "2")
    assert rc == 0, err
    assert sorted(os.listdir(out_dir)) == ["model.gguf", "results.json"]
    llm = llama_cpp.Llama(model_path=str(out_dir / "model.gguf"), logits_all=True, n_ctx=64,
                          n_batch=64, verbose=False)
    try:
        llm.eval(list(range(1, 33)))
        assert np.isfinite(np.asarray(llm.scores[:32])).all()
    finally:
        llm.close()
