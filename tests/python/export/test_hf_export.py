"""mopt's unified Hugging Face checkpoint against nvidia-modelopt's own export of the same
quantized model.

nvidia-modelopt (in its own process, modelopt_hf_writer.py) quantizes a seeded Llama and writes
both its state (mto.save) and its export_hf_checkpoint folder; mopt restores that state into the
same model and exports it. The two folders must hold the same files, configs, tensor names,
dtypes, shapes and values. NVFP4 AWQ is exported by mopt only: ModelOpt's AWQ search for NVFP4
needs CUDA ("amax must be a CUDA tensor for dynamic block quantization").
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from safetensors import safe_open  # noqa: E402

import mopt.opt as mto  # noqa: E402
import mopt.quantization as mtq  # noqa: E402
from mopt.export import export_hf_checkpoint  # noqa: E402
from mopt.export.files import ExportError  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from modelopt_hf_writer import build_llama, calib_batches  # noqa: E402

FORMATS = ["fp8", "int8_sq", "int4_awq", "w4a8_awq", "nvfp4"]


@pytest.fixture(scope="module")
def modelopt_dir(tmp_path_factory):
    # find_spec, not import: ModelOpt must never be imported into this process (it registers
    # its pickle globals with torch; tests/python/opt/test_modelopt_files.py checks none are)
    if importlib.util.find_spec("modelopt") is None:
        pytest.skip("nvidia-modelopt is not installed")
    out = tmp_path_factory.mktemp("modelopt_hf")
    r = subprocess.run([sys.executable, os.path.join(HERE, "modelopt_hf_writer.py"), str(out),
                        *FORMATS], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHONPATH": ""})
    failed = [line for line in r.stderr.splitlines() if line.startswith("FAILED")]
    assert r.returncode == 0 and not failed, r.stderr[-3000:]
    return out


def _tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _without_producer(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    d.pop("producer", None)
    d.get("quantization_config", {}).pop("producer", None)
    return d


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_checkpoint_as_modelopt(modelopt_dir, tmp_path, fmt):
    model = build_llama()
    mto.restore(model, str(modelopt_dir / f"{fmt}.pth"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ours = tmp_path / "mopt"
    export_hf_checkpoint(model, export_dir=str(ours))
    ref = modelopt_dir / f"{fmt}_hf"

    assert sorted(os.listdir(ours)) == sorted(os.listdir(ref))
    hq_ours = json.loads((ours / "hf_quant_config.json").read_text())
    hq_ref = json.loads((ref / "hf_quant_config.json").read_text())
    assert hq_ours["producer"]["name"] == "mopt"
    assert _without_producer(hq_ours) == _without_producer(hq_ref)
    cfg_ours = json.loads((ours / "config.json").read_text())
    cfg_ref = json.loads((ref / "config.json").read_text())
    assert _without_producer(cfg_ours)["quantization_config"] == \
        _without_producer(cfg_ref)["quantization_config"]
    for key in ("architectures", "hidden_size", "num_hidden_layers", "vocab_size"):
        assert cfg_ours[key] == cfg_ref[key]

    t_ours, t_ref = _tensors(ours / "model.safetensors"), _tensors(ref / "model.safetensors")
    assert sorted(t_ours) == sorted(t_ref)
    for k in t_ref:
        a, b = t_ours[k], t_ref[k]
        assert (a.dtype, tuple(a.shape)) == (b.dtype, tuple(b.shape)), k
        if a.dtype == torch.int8:
            # ModelOpt's export divides by the rounded fp32 scale, round(w / (amax / 127)); its
            # fake quantization and mopt's codes use w * (127 / amax). Where the exact quotient
            # lies within an ulp of a .5 tie the two round apart by one code (2 of 1.3M codes
            # here, e.g. 26.5000017 -> 26 in ModelOpt's export, 27 in mopt's).
            diff = (a.int() - b.int()).abs()
            assert diff.max() <= 1 and (diff > 0).sum() <= max(1, a.numel() // 10000), k
        elif a.dtype in (torch.float8_e4m3fn, torch.uint8):
            diff = (a.view(torch.uint8) != b.view(torch.uint8)).sum().item()
            assert diff == 0, f"{k}: {diff} of {a.numel()} codes differ"
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    # the caller's model is untouched (the fusion ran on a copy)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _dequantize_oracle(t: dict[str, torch.Tensor], prefix: str, fmt: str) -> torch.Tensor:
    """The weight an engine reconstructs from ModelOpt's documented layout, written here
    independently of mopt's kernels."""
    w, s = t[prefix + "weight"], t[prefix + "weight_scale"]
    if fmt == "int4_awq":
        lo = (w & 0x0F).to(torch.int16)
        hi = (w >> 4).to(torch.int16)
        codes = torch.empty(w.shape[0] * 2, w.shape[1], dtype=torch.int16)
        codes[0::2], codes[1::2] = lo, hi
        codes = torch.where(codes > 7, codes - 16, codes).float()
        block = codes.shape[1] // s.shape[1]
        return codes * s.repeat_interleave(block, dim=1)
    if fmt == "nvfp4":
        e2m1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])
        codes = torch.stack([w & 0x0F, w >> 4], dim=-1).reshape(w.shape[0], -1).long()
        scale = s.float() * t[prefix + "weight_scale_2"].float()
        return e2m1[codes] * scale.repeat_interleave(16, dim=1)
    raise AssertionError(fmt)


@pytest.mark.parametrize("cfg_name,fmt", [("INT4_AWQ_CFG", "int4_awq"),
                                          ("NVFP4_DEFAULT_CFG", "nvfp4")])
def test_exported_weights_are_the_fake_quantized_weights(tmp_path, cfg_name, fmt):
    """Layers outside any fused group (o_proj, down_proj) dequantize, by the layout's own
    formula (code * scale, as an engine computes it), to the weight mopt's fake quantization
    computes: exactly for NVFP4; within one fp32 rounding for INT4, whose kernel forms
    code * amax / 7 in another order (pack_weight's own dequantize replays it exactly)."""
    model = build_llama()
    batches = calib_batches()
    mtq.quantize(model, getattr(mtq, cfg_name), lambda m: [m(b) for b in batches])
    export_hf_checkpoint(model, export_dir=str(tmp_path / "x"))
    t = _tensors(tmp_path / "x" / "model.safetensors")
    for name in ("model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj"):
        lin = model.get_submodule(name)
        with torch.no_grad():
            fq = lin.weight_quantizer(lin.weight)
        deq = _dequantize_oracle(t, name + ".", fmt)
        if fmt == "nvfp4":
            assert torch.equal(deq, fq), name
        else:
            torch.testing.assert_close(deq, fq, rtol=2.0**-22, atol=0)  # one ulp of the value


def test_nvfp4_awq_folds_scales_into_the_previous_linear(tmp_path):
    model = build_llama()
    batches = calib_batches()
    mtq.quantize(model, mtq.NVFP4_AWQ_LITE_CFG, lambda m: [m(b) for b in batches])
    export_hf_checkpoint(model, export_dir=str(tmp_path / "x"))
    hq = json.loads((tmp_path / "x" / "hf_quant_config.json").read_text())["quantization"]
    assert hq["quant_algo"] == "NVFP4_AWQ" and hq["group_size"] == 16
    t = _tensors(tmp_path / "x" / "model.safetensors")
    # down_proj's scale went into up_proj; q/k/v and gate/up share one folded into the norms;
    # o_proj keeps its own (grouped-query attention: v_proj has fewer rows than o_proj's input)
    assert "model.layers.0.mlp.down_proj.pre_quant_scale" not in t
    assert "model.layers.0.mlp.up_proj.pre_quant_scale" not in t
    assert "model.layers.0.self_attn.q_proj.pre_quant_scale" not in t
    assert "model.layers.0.self_attn.o_proj.pre_quant_scale" in t
    assert t["model.layers.0.mlp.up_proj.weight"].dtype == torch.uint8


def test_bad_input_is_refused_and_nothing_is_written(tmp_path):
    model = build_llama()
    with pytest.raises(ExportError, match="no quantized weights"):
        export_hf_checkpoint(model, export_dir=str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()

    mtq.quantize(model, mtq.FP8_DEFAULT_CFG, None)  # static inputs, never calibrated
    with pytest.raises(ExportError, match="not calibrated.*input_quantizer"):
        export_hf_checkpoint(model, export_dir=str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()

    model = build_llama()
    batches = calib_batches()
    mtq.quantize(model, mtq.FP8_DEFAULT_CFG, lambda m: [m(b) for b in batches])
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_hf_checkpoint(model, export_dir=str(full))
    assert os.listdir(full) == ["keep.txt"]

    model = build_llama()
    mtq.quantize(model, mtq.MXFP8_DEFAULT_CFG, lambda m: [m(b) for b in batches])
    with pytest.raises(ExportError, match="mxfp8.*no equivalent"):
        export_hf_checkpoint(model, export_dir=str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_not_a_transformers_model(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(32, 32))
    mtq.quantize(net, mtq.FP8_DEFAULT_CFG, lambda m: m(torch.randn(4, 32)))
    with pytest.raises(ExportError, match="Hugging Face transformers model"):
        export_hf_checkpoint(net, export_dir=str(tmp_path / "x"))
