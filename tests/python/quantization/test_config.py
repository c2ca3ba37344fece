"""Config schema: attribute validation, resolution rules, need_calibration, predefined configs."""

import copy

import pytest
import torch
from torch import nn

import mopt.quantization as mtq
from mopt.quantization import QuantizerAttributeConfig
from mopt.quantization.nn import SequentialQuantizer, TensorQuantizer


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc1 = nn.Linear(16, 8)
        self.lm_head = nn.Linear(8, 5)

    def forward(self, x):
        h = self.conv(x).flatten(1)
        return self.lm_head(torch.relu(self.fc1(h)))


def _calib(model):
    model(torch.randn(3, 2, 4, 4))


def _q(model, name) -> TensorQuantizer:
    return model.get_submodule(name)


# ---------------------------------------------------------------------------------------------
# QuantizerAttributeConfig


def test_attribute_defaults_match_spec():
    c = QuantizerAttributeConfig()
    assert c.model_dump() == {
        "enable": True, "num_bits": 8, "axis": None, "fake_quant": True, "unsigned": False,
        "narrow_range": False, "full_range": False, "asymmetric": False,
        "type": "static", "block_sizes": None,
        "bias": None, "calibrator": "max", "pass_through_bwd": False,
        "trt_high_precision_dtype": "Float", "rotate": False, "learn_amax": False,
    }
    assert QuantizerAttributeConfig.keys() == list(c.model_dump())


def test_attribute_normalization_and_copy():
    c = QuantizerAttributeConfig(num_bits=[4, 3], axis=[0])
    assert c.num_bits == (4, 3) and c.axis == 0
    assert QuantizerAttributeConfig(axis=(0, 2)).axis == (0, 2)
    b = QuantizerAttributeConfig(num_bits=4, block_sizes={-1: 128, "type": "dynamic"})
    assert b.block_sizes == {-1: 128, "type": "dynamic"}
    d = c.model_copy(update={"num_bits": (5, 2)})
    assert d.num_bits == (5, 2) and d.axis == 0 and c.num_bits == (4, 3)
    assert QuantizerAttributeConfig(num_bits=4) == QuantizerAttributeConfig(num_bits=4)
    assert QuantizerAttributeConfig(num_bits=4) != QuantizerAttributeConfig(num_bits=5)
    with pytest.raises(AttributeError):
        c.num_bits = 8
    with pytest.raises(AttributeError):
        c.nonexistent  # noqa: B018


@pytest.mark.parametrize("kw,exc,match", [
    (dict(foo=1), ValueError, "unknown quantizer attribute 'foo'"),
    (dict(axis=0, block_sizes={-1: 16}), ValueError, "'axis' and 'block_sizes'"),
    (dict(num_bits=1), ValueError, "num_bits"),
    (dict(num_bits=(3, 3)), ValueError, r"\(3, 3\) is not a supported format"),
    (dict(num_bits=(0, 3)), NotImplementedError, "no minifloat kernel"),
    (dict(type="sometimes"), ValueError, "'type' must be one of static, dynamic"),
    (dict(enable=1), ValueError, "'enable' must be a bool"),
    (dict(block_sizes={"x": 3}), ValueError, "unknown key 'x' in block_sizes"),
    (dict(block_sizes={-1: 0}), ValueError, "positive block size"),
    (dict(block_sizes={-1: 16, -2: 16, "type": "dynamic"}), ValueError, "exactly one blocked"),
    (dict(num_bits=(4, 3), unsigned=True), ValueError, "integer formats only"),
    (dict(learn_amax=True), ValueError, "learn_amax"),
    (dict(rotate=True), NotImplementedError, "rotate"),
    (dict(fake_quant=False), NotImplementedError, "fake_quant"),
    (dict(bias={"type": "static"}), NotImplementedError, "bias"),
    (dict(calibrator="median"), ValueError,
     r"'calibrator' must be \"max\", \"histogram\" or .* tuple, got \"median\""),
    (dict(calibrator="custom"), ValueError, r"tuple, got 'custom'"),
    (dict(calibrator=42), ValueError, "calibrator"),
])
def test_attribute_validation_errors(kw, exc, match):
    with pytest.raises(exc, match=match):
        QuantizerAttributeConfig(**kw)


def test_quantize_config_validation_names_the_pattern():
    model = Net()
    with pytest.raises(ValueError, match=r"quant_cfg\['\*weight_quantizer'\].*unknown quantizer "
                                         r"attribute 'num_bit'"):
        mtq.quantize(model, {"quant_cfg": {"*weight_quantizer": {"num_bit": 4}}})
    with pytest.raises(ValueError, match="unknown quantize config key"):
        mtq.quantize(model, {"quant_cfg": {}, "algoritm": "max"})
    with pytest.raises(ValueError, match="must be a dict"):
        mtq.quantize(model, {"quant_cfg": [("*", {})]})
    with pytest.raises(ValueError, match=r"quant_cfg\['nn.Linear'\] must be a dict"):
        mtq.quantize(model, {"quant_cfg": {"nn.Linear": 8}})
    with pytest.raises(ValueError, match=r"quant_cfg\['\*input_quantizer'\]"):
        mtq.quantize(model, {"quant_cfg": {"nn.Linear": {"*input_quantizer": {"axis": "x"}}}})
    assert type(model.fc1) is nn.Linear  # validation happens before any conversion


# ---------------------------------------------------------------------------------------------
# Resolution rules


def test_default_is_applied_first_wherever_it_stands():
    model = Net()
    cfg = {"quant_cfg": {"*weight_quantizer": {"num_bits": 4, "axis": 0},
                         "default": {"num_bits": 6}}, "algorithm": None}
    mtq.quantize(model, cfg)
    assert _q(model, "fc1.weight_quantizer").num_bits == 4
    assert _q(model, "fc1.input_quantizer").num_bits == 6
    assert _q(model, "fc1.output_quantizer").num_bits == 6
    assert _q(model, "fc1.output_quantizer").is_enabled  # "default" enables every quantizer


def test_last_match_wins():
    a = {"*fc1*": {"num_bits": 5}, "*input_quantizer": {"num_bits": 7}}
    b = {"*input_quantizer": {"num_bits": 7}, "*fc1*": {"num_bits": 5}}
    ma, mb = Net(), Net()
    mtq.quantize(ma, {"quant_cfg": a, "algorithm": None})
    mtq.quantize(mb, {"quant_cfg": b, "algorithm": None})
    assert _q(ma, "fc1.input_quantizer").num_bits == 7
    assert _q(mb, "fc1.input_quantizer").num_bits == 5
    assert _q(ma, "fc1.weight_quantizer").num_bits == 5 == _q(mb, "fc1.weight_quantizer").num_bits


def test_quantize_resets_every_attribute_but_set_quantizer_by_cfg_only_given_keys():
    cfg = {"*": {"num_bits": 4, "axis": 0, "narrow_range": True},
           "*input_quantizer": {"num_bits": 8}}
    model = Net()
    mtq.quantize(model, {"quant_cfg": cfg, "algorithm": None})
    q = _q(model, "fc1.input_quantizer")
    assert (q.num_bits, q.axis, q.narrow_range) == (8, None, False)  # omitted fields: defaults
    mtq.set_quantizer_by_cfg(model, cfg)
    assert (q.num_bits, q.axis, q.narrow_range) == (8, 0, True)  # plain dict: only given keys
    # a full QuantizerAttributeConfig given to set_quantizer_by_cfg sets every field
    mtq.set_quantizer_by_cfg(model, {"*input_quantizer": QuantizerAttributeConfig(num_bits=6)})
    assert (q.num_bits, q.axis, q.narrow_range) == (6, None, False)


def test_class_pattern_applies_only_below_that_class():
    model = Net()
    cfg = {"quant_cfg": {"*input_quantizer": {"num_bits": 8},
                         "nn.Conv2d": {"*input_quantizer": {"num_bits": 4}},
                         "nn.Linear": {"*weight_quantizer": {"enable": False}}},
           "algorithm": None}
    mtq.quantize(model, cfg)
    assert _q(model, "conv.input_quantizer").num_bits == 4
    assert _q(model, "fc1.input_quantizer").num_bits == 8
    assert _q(model, "conv.weight_quantizer").is_enabled
    assert not _q(model, "fc1.weight_quantizer").is_enabled
    assert not _q(model, "lm_head.weight_quantizer").is_enabled


def test_callable_patterns_and_set_quantizer_attribute():
    model = Net()
    mtq.quantize(model, {"quant_cfg": {lambda n: n.startswith("lm_head"): {"num_bits": 6}},
                         "algorithm": None})
    assert _q(model, "lm_head.input_quantizer").num_bits == 6
    assert _q(model, "fc1.input_quantizer").num_bits == 8
    n = mtq.set_quantizer_attribute(model, "*fc1.*_quantizer", {"num_bits": 5})
    assert n == 3 and _q(model, "fc1.output_quantizer").num_bits == 5
    n = mtq.set_quantizer_attribute(model, lambda name: "conv" in name, {"enable": False})
    assert n == 3 and not _q(model, "conv.input_quantizer").is_enabled
    n = mtq.set_quantizer_attribute(model, "*input_quantizer", {"num_bits": 3},
                                    parent_class=nn.Linear)
    assert n == 2 and _q(model, "fc1.input_quantizer").num_bits == 3
    assert _q(model, "conv.input_quantizer").num_bits == 8


def test_list_value_makes_a_sequential_quantizer_and_back():
    model = Net()
    w4a8 = [{"num_bits": 4, "block_sizes": {-1: 8}}, {"num_bits": (4, 3)}]
    mtq.quantize(model, {"quant_cfg": {"*weight_quantizer": w4a8}, "algorithm": "max"})
    seq = model.fc1.weight_quantizer
    assert isinstance(seq, SequentialQuantizer) and len(seq) == 2
    assert seq[0].num_bits == 4 and seq[1].num_bits == (4, 3)
    assert seq[0].amax is not None and seq[1].amax is not None  # weight-only calibration
    # a plain dict updates every quantizer of the sequence, which stays
    mtq.set_quantizer_by_cfg(model, {"*weight_quantizer": {"enable": False}})
    assert model.fc1.weight_quantizer is seq and not seq[0].is_enabled and not seq[1].is_enabled
    assert seq[0].num_bits == 4 and seq[0].amax is not None
    with mtq.set_quantizer_by_cfg_context(model, {"*weight_quantizer": {"enable": True}}):
        assert seq.is_enabled
    assert model.fc1.weight_quantizer is seq and not seq.is_enabled
    # a full config (as quantize() applies it) makes it a single quantizer again
    mtq.set_quantizer_by_cfg(model, {"*fc1.weight_quantizer": QuantizerAttributeConfig(
        num_bits=8, axis=0)})
    assert isinstance(model.fc1.weight_quantizer, TensorQuantizer)
    assert model.fc1.weight_quantizer.num_bits == 8 and model.fc1.weight_quantizer.is_enabled
    mtq.quantize(model, {"quant_cfg": {"*conv.weight_quantizer": {"num_bits": 6}},
                         "algorithm": None})
    assert isinstance(model.conv.weight_quantizer, TensorQuantizer)
    assert model.conv.weight_quantizer.num_bits == 6


def test_set_quantizer_by_cfg_context_restores():
    model = Net()
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, _calib)
    q = _q(model, "fc1.input_quantizer")
    amax = q.amax.clone()
    with mtq.set_quantizer_by_cfg_context(model, {"*": {"enable": False},
                                                  "*fc1.input_quantizer": {"num_bits": 4}}):
        assert not _q(model, "fc1.weight_quantizer").is_enabled
        assert q.num_bits == 4 and not q.is_enabled
    assert q.num_bits == 8 and q.is_enabled and torch.equal(q.amax, amax)
    assert _q(model, "fc1.weight_quantizer").is_enabled
    assert not _q(model, "lm_head.input_quantizer").is_enabled  # was disabled before too
    with pytest.raises(ValueError, match="sequential"), mtq.set_quantizer_by_cfg_context(
        model, {"*": [{"num_bits": 4}, {"num_bits": 8}]}
    ):
        pass


def test_enable_disable_quantizer_by_wildcard_and_filter():
    model = Net()
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, _calib)
    mtq.disable_quantizer(model, "*input_quantizer")
    assert not _q(model, "fc1.input_quantizer").is_enabled
    assert _q(model, "fc1.weight_quantizer").is_enabled
    mtq.enable_quantizer(model, lambda n: n.startswith("fc1."))
    assert _q(model, "fc1.input_quantizer").is_enabled
    assert _q(model, "fc1.output_quantizer").is_enabled
    assert not _q(model, "conv.input_quantizer").is_enabled


# ---------------------------------------------------------------------------------------------
# need_calibration and predefined configs


@pytest.mark.parametrize("name,expected", [
    ("INT8_DEFAULT_CFG", True),
    ("INT8_WEIGHT_ONLY_CFG", False),
    ("FP8_DEFAULT_CFG", True),
    ("FP8_PER_CHANNEL_PER_TOKEN_CFG", False),  # dynamic per-token activations
    ("FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG", False),
    ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", False),
    ("INT4_AWQ_CFG", True),
    ("INT8_SMOOTHQUANT_CFG", True),
    ("NVFP4_DEFAULT_CFG", True),  # dynamic blocks, but a calibrated tensor scale
    ("MXFP8_DEFAULT_CFG", False),
    ("FP8_KV_CFG", True),
])
def test_need_calibration_predefined(name, expected):
    assert mtq.need_calibration(getattr(mtq, name)) is expected


def test_need_calibration_rules():
    static_in = {"*input_quantizer": {"num_bits": 8}}
    assert mtq.need_calibration({"quant_cfg": static_in, "algorithm": "max"})
    assert not mtq.need_calibration({"quant_cfg": static_in, "algorithm": None})
    assert mtq.need_calibration({"quant_cfg": {"default": {"num_bits": 8}}, "algorithm": "max"})
    weights = {"*weight_quantizer": {"num_bits": 8}, "default": {"enable": False}}
    assert not mtq.need_calibration({"quant_cfg": weights, "algorithm": "max"})
    assert mtq.need_calibration({"quant_cfg": weights, "algorithm": {"method": "mse"}})
    assert not mtq.need_calibration({"quant_cfg": weights, "algorithm": {"method": "max"}})
    cls = {"nn.Linear": {"*weight_quantizer": {"num_bits": 4}}, "default": {"enable": False}}
    assert not mtq.need_calibration({"quant_cfg": cls, "algorithm": "max"})
    cls["nn.Linear"]["*input_quantizer"] = QuantizerAttributeConfig(num_bits=8)
    assert mtq.need_calibration({"quant_cfg": cls, "algorithm": "max"})
    dyn = {"*input_quantizer": {"num_bits": 8, "type": "dynamic"}, "default": {"enable": False}}
    assert not mtq.need_calibration({"quant_cfg": dyn, "algorithm": "max"})


SPEC_CONFIGS = ["INT8_DEFAULT_CFG", "INT8_WEIGHT_ONLY_CFG", "FP8_DEFAULT_CFG",
                "FP8_PER_CHANNEL_PER_TOKEN_CFG", "FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG",
                "INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "INT8_SMOOTHQUANT_CFG", "INT4_AWQ_CFG",
                "W4A8_AWQ_BETA_CFG", "NVFP4_DEFAULT_CFG", "MXFP8_DEFAULT_CFG", "FP8_KV_CFG"]


def test_choices_and_every_predefined_config_validates():
    for name in SPEC_CONFIGS:
        assert name in mtq.config.choices
    for name in mtq.config.choices:
        cfg = getattr(mtq, name)
        mtq.config.QuantizeConfig(copy.deepcopy(cfg))  # raises on an invalid entry


def _resolved(cfg_name):
    quant_cfg = getattr(mtq, cfg_name)["quant_cfg"]
    return (QuantizerAttributeConfig(**quant_cfg["*weight_quantizer"]),
            QuantizerAttributeConfig(**quant_cfg["*input_quantizer"]))


def test_predefined_configs_match_the_spec_table():
    w, a = _resolved("INT8_DEFAULT_CFG")
    assert (w.num_bits, w.axis, a.num_bits, a.axis, a.enable) == (8, 0, 8, None, True)
    w, a = _resolved("INT8_WEIGHT_ONLY_CFG")
    assert (w.num_bits, w.axis, a.enable) == (8, 0, False)
    w, a = _resolved("FP8_DEFAULT_CFG")
    assert (w.num_bits, w.axis, a.num_bits, a.axis) == ((4, 3), None, (4, 3), None)
    w, a = _resolved("FP8_PER_CHANNEL_PER_TOKEN_CFG")
    assert (w.num_bits, w.axis) == ((4, 3), 0)
    assert (a.num_bits, a.type, a.block_sizes[-1]) == ((4, 3), "dynamic", None)
    w, a = _resolved("FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG")
    assert w.num_bits == (4, 3) and w.block_sizes[-1] == 128 and w.block_sizes[-2] == 128
    assert not a.enable
    w, a = _resolved("INT4_BLOCKWISE_WEIGHT_ONLY_CFG")
    assert w.num_bits == 4 and w.block_sizes[-1] == 128 and not a.enable
    for name in SPEC_CONFIGS:
        cfg = getattr(mtq, name)
        assert cfg["quant_cfg"]["default"] == {"enable": False}
        if name == "FP8_KV_CFG":
            continue
        for pattern in ("*lm_head*", "*proj_out.*", "*router*", "*mlp.gate.*",
                        "*block_sparse_moe.gate*", "*mlp.shared_expert_gate.*", "*output_layer*",
                        "output.*"):
            assert cfg["quant_cfg"][pattern] == {"enable": False}, (name, pattern)
        for cls in ("nn.BatchNorm1d", "nn.BatchNorm2d", "nn.BatchNorm3d", "nn.LeakyReLU"):
            assert cfg["quant_cfg"][cls] == {"*": {"enable": False}}, (name, cls)
    assert mtq.INT8_DEFAULT_CFG["algorithm"] == "max"
    assert mtq.MXFP8_DEFAULT_CFG["algorithm"] is None


def test_predefined_config_keeps_lm_head_and_batchnorm_in_float():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.LeakyReLU(), nn.Flatten(),
                          nn.Linear(8, 3))
    model.lm_head = nn.Linear(3, 2)
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, lambda m: m(torch.randn(2, 1, 4, 4)))
    assert not model[1].input_quantizer.is_enabled and not model[2].input_quantizer.is_enabled
    assert not model.lm_head.weight_quantizer.is_enabled
    assert model[0].weight_quantizer.is_enabled and model[4].input_quantizer.is_enabled
    # the config dict itself is not modified by quantize
    assert mtq.INT8_DEFAULT_CFG["quant_cfg"]["*weight_quantizer"] == {"num_bits": 8, "axis": 0}
