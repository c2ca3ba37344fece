"""compressed-tensors export of stories260K, loaded back by transformers + compressed-tensors.

Each config quantizes the shipped stories260K on TinyStories calibration text (the windows
``mopt ptq`` uses), exports it, loads the folder with
``AutoModelForCausalLM.from_pretrained`` (compressed-tensors decompresses the weights) and
checks: the codes compressed-tensors unpacks equal mopt's packed codes exactly; the weights
transformers holds equal mopt's fake-quantized weights within the fp32 rounding of the two
dequantization formulas; the perplexity on the (disjoint) evaluation text matches mopt's
fake-quantized model.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import pytest
import torch

pytest.importorskip("compressed_tensors")
transformers = pytest.importorskip("transformers")

import mopt.quantization as mtq  # noqa: E402
from mopt import data as mdata  # noqa: E402
from mopt.eval import make_forward_loop, perplexity, text_calibration_batches  # noqa: E402
from mopt.export import export_compressed_tensors  # noqa: E402
from mopt.export.files import ExportError  # noqa: E402
from mopt.models.llama2c import Llama2cTokenizer, load_llama2c  # noqa: E402

SEQ_LEN = 256
# |CT - mopt| of one dequantized weight: compressed-tensors computes code * fl(amax / bound)
# and mopt code / fl(bound / amax) (int) or fl(code * fl(amax / bound)) (pack's scale); each is
# within 2 roundings (2 * 2^-24 relative) of code * amax / bound, so they differ by at most
# 2^-22 relative. NVFP4 divides by 1 / scale_2 instead of multiplying by scale_2: one more
# rounding on each side (3 * 2^-24 each).
RTOL = {"default": 2.0**-22, "nvfp4-pack-quantized": 6 * 2.0**-24}


@pytest.fixture(scope="module")
def setup():
    tok = Llama2cTokenizer.from_file()
    calib = text_calibration_batches(tok.encode(mdata.default_calib_text()), 16, SEQ_LEN, 0)
    eval_ids = tok.encode(mdata.default_eval_text())
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # stories260K: threads only add synchronization
    yield load_llama2c().eval(), make_forward_loop(calib, 4), eval_ids
    torch.set_num_threads(previous)


def _quantized(setup, cfg):
    base, loop, _ = setup
    model = copy.deepcopy(base)
    with contextlib.redirect_stdout(io.StringIO()):
        mtq.quantize(model, cfg, loop)
    return model


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def _ppl(model, ids):
    return perplexity(model, ids, SEQ_LEN, batch_size=8, progress=False)


def _fake_quant_weights(model):
    with torch.no_grad():
        return {n: m.weight_quantizer(m.weight).detach().clone()
                for n, m in model.named_modules()
                if hasattr(m, "weight_quantizer") and m.weight_quantizer.is_enabled}


def _unpacked_codes(tensors, prefix, fmt, bits):
    """The codes compressed-tensors' own helpers read back from the file."""
    if fmt == "pack-quantized":
        from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

        shape = torch.Size(tensors[prefix + "weight_shape"].tolist())
        return unpack_from_int32(tensors[prefix + "weight_packed"], bits, shape)
    return tensors[prefix + "weight"]


# (config, compressed-tensors format of the quantized layers, activation handling,
#  perplexity tolerance relative to mopt's)
CASES = {
    "int8_wo": ("INT8_WEIGHT_ONLY_CFG", "pack-quantized", None, 1e-5),
    "int8_w8a8": ("INT8_DEFAULT_CFG", "int-quantized", "static", 2e-3),
    "int8_dyn": ("INT8_DYNAMIC_CFG", "int-quantized", "token", 5e-3),
    "fp8": ("FP8_DEFAULT_CFG", "float-quantized", "static", 2e-3),
    "int4_g128": ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "pack-quantized", None, 1e-5),
    "int4_g32": ("INT4_B32_WEIGHT_ONLY_CFG", "pack-quantized", None, 1e-5),
    "int4_g32_asym": ("INT4_B32_ASYM_CFG", "pack-quantized", None, 1e-5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_export_loads_in_transformers(setup, tmp_path, case):
    cfg_name, fmt, act, ppl_rtol = CASES[case]
    _, _, eval_ids = setup
    model = _quantized(setup, getattr(mtq, cfg_name))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "ct"
    summary = export_compressed_tensors(model, out)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "export modified the model"
    assert set(summary["layers"]) == {fmt}
    assert summary["ignore"] == ["lm_head"]

    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qcfg["quant_method"] == "compressed-tensors" and qcfg["format"] == fmt
    (group,) = qcfg["config_groups"].values()
    assert group["targets"] == ["Linear"]
    if act is None:
        assert group["input_activations"] is None
    else:
        ia = group["input_activations"]
        assert ia["strategy"] == ("tensor" if act == "static" else "token")
        assert ia["dynamic"] is (act == "token")

    # codes: what compressed-tensors unpacks equals mopt's packed codes, exactly
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))
    bits = group["weights"]["num_bits"]
    for name, mod in model.named_modules():
        if not (hasattr(mod, "weight_quantizer") and mod.weight_quantizer.is_enabled):
            continue
        packed = mtq.pack_weight(mod.weight.detach(), mod.weight_quantizer)
        got = _unpacked_codes(tensors, name + ".", fmt, bits)
        want = packed.codes
        if want.dtype == torch.uint8 and got.dtype == torch.int8:  # asymmetric: offset codes
            want = (want.to(torch.int16) - (1 << (bits - 1))).to(torch.int8)
        if want.dtype == torch.float8_e4m3fn:
            got, want = got.view(torch.uint8), want.view(torch.uint8)
        assert torch.equal(got, want), name

    # weights transformers holds == mopt's fake-quantized weights (within the derived rounding)
    loaded = _load(out)
    fq = _fake_quant_weights(model)
    rtol = RTOL.get(fmt, RTOL["default"])
    for name, w in fq.items():
        lw = loaded.get_submodule(name).weight.detach().float()
        assert lw.shape == w.shape
        bound = rtol * w.abs() + 1e-30
        assert bool(((lw - w).abs() <= bound).all()), (
            f"{name}: max |diff| {float((lw - w).abs().max()):.3e}")
    # unquantized modules come back bit for bit
    for key in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(loaded.state_dict()[key], model.state_dict()[key]), key

    ppl_mopt, ppl_ct = _ppl(model, eval_ids), _ppl(loaded, eval_ids)
    assert math.isfinite(ppl_ct)
    assert abs(ppl_ct / ppl_mopt - 1) <= ppl_rtol, (ppl_mopt, ppl_ct)


def _mha(model):
    """stories260K with its 4 key/value heads repeated for its 8 query heads: the same function
    (transformers' repeat_kv does this at run time), but every head has its own v_proj rows."""
    from transformers import LlamaForCausalLM

    cfg = copy.deepcopy(model.config)
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    cfg.num_key_value_heads = cfg.num_attention_heads
    mha = LlamaForCausalLM(cfg).eval()
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight")):
            v = v.reshape(-1, head_dim, v.shape[-1]).repeat_interleave(group, dim=0)
            v = v.reshape(-1, v.shape[-1])
        state[k] = v
    mha.load_state_dict(state)
    return mha


def test_smoothquant_scales_folded_into_norms_and_rows(setup, tmp_path):
    """SmoothQuant's input pre_quant_scale moves into the RMSNorm weight (q/k/v and gate/up share
    one) and into the output rows of up_proj (for down_proj) and v_proj (for o_proj)."""
    base, loop, eval_ids = setup
    mha = _mha(base)
    ids = torch.tensor(eval_ids[:SEQ_LEN]).unsqueeze(0)
    with torch.no_grad():  # the MHA copy is the same model
        torch.testing.assert_close(mha(ids).logits, base(ids).logits, rtol=1e-4, atol=1e-4)
    with contextlib.redirect_stdout(io.StringIO()):
        mtq.quantize(mha, mtq.INT8_SMOOTHQUANT_CFG, loop)
    layer = mha.model.layers[0]
    assert layer.self_attn.q_proj.input_quantizer.pre_quant_scale is not None
    assert layer.self_attn.o_proj.input_quantizer.pre_quant_scale is not None
    out = tmp_path / "sq"
    export_compressed_tensors(mha, out)
    loaded = _load(out)
    sq = layer.self_attn.q_proj.input_quantizer.pre_quant_scale
    torch.testing.assert_close(loaded.model.layers[0].input_layernorm.weight,
                               layer.input_layernorm.weight * sq, rtol=2**-23, atol=0)
    ppl_mopt, ppl_ct = _ppl(mha, eval_ids), _ppl(loaded, eval_ids)
    assert abs(ppl_ct / ppl_mopt - 1) <= 2e-3, (ppl_mopt, ppl_ct)


def test_smoothquant_gqa_o_proj_not_foldable(setup, tmp_path):
    """stories260K has 2 query heads per key/value head: o_proj's per-channel smoothing differs
    between them, so no v_proj row scaling reproduces it."""
    model = _quantized(setup, mtq.INT8_SMOOTHQUANT_CFG)
    with pytest.raises(ExportError, match=r"layers\.0\.self_attn\.o_proj.*key/value head"):
        export_compressed_tensors(model, tmp_path / "sq")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cfg_name, words", [
    ("NF4_WEIGHT_ONLY_CFG", ["nf4", "layers.0"]),
    ("W4A8_AWQ_BETA_CFG", ["SequentialQuantizer", "layers.0"]),
    ("INT4_AWQ_CFG", ["pre_quant_scale", "layers.0"]),
])
def test_formats_without_equivalent(setup, tmp_path, cfg_name, words):
    model = _quantized(setup, getattr(mtq, cfg_name))
    out = tmp_path / "x"
    with pytest.raises(ExportError) as e:
        export_compressed_tensors(model, out)
    for w in words:
        assert w in str(e.value)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_input(setup, tmp_path):
    base, _, _ = setup
    with pytest.raises(ExportError, match="no quantized layer"):
        export_compressed_tensors(copy.deepcopy(base), tmp_path / "a")
    assert not (tmp_path / "a").exists()

    # an input quantizer that never saw data: mtq.quantize without a forward loop
    model = copy.deepcopy(base)
    with contextlib.redirect_stdout(io.StringIO()):
        mtq.quantize(model, mtq.INT8_DEFAULT_CFG, None)
    with pytest.raises(ExportError, match="never calibrated"):
        export_compressed_tensors(model, tmp_path / "b")
    assert not (tmp_path / "b").exists()

    model = _quantized(setup, mtq.INT8_WEIGHT_ONLY_CFG)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_compressed_tensors(model, full)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]

    with pytest.raises(TypeError, match="save_pretrained"):
        export_compressed_tensors(model, tmp_path / "c", tokenizer=Llama2cTokenizer.from_file())
    assert not (tmp_path / "c").exists()


def test_tokenizer_files_written(setup, tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    vocab = {"<unk>": 0, "a": 1, "b": 2}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, "<unk>")),
                                  unk_token="<unk>")
    model = _quantized(setup, mtq.INT8_WEIGHT_ONLY_CFG)
    summary = export_compressed_tensors(model, tmp_path / "t", tokenizer=tok)
    assert "tokenizer.json" in summary["files"]
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(str(tmp_path / "t"))
    assert back("a b")["input_ids"] == tok("a b")["input_ids"]
