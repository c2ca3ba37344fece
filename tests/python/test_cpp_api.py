"""The C++ module API against the Python one: predefined configs, config JSON, fnmatch, and a
model quantized from C++ (mopt::quantize on a torch::nn::Sequential) against the same model
quantized from Python, bit for bit."""

import contextlib
import copy
import fnmatch
import io
import json
import random

import mopt.quantization as mtq
import pytest
from mopt import _C

import torch
from torch import nn

CORE_CONFIGS = [
    "INT8_DEFAULT_CFG",
    "INT8_WEIGHT_ONLY_CFG",
    "FP8_DEFAULT_CFG",
    "FP8_PER_CHANNEL_PER_TOKEN_CFG",
    "FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG",
    "INT4_BLOCKWISE_WEIGHT_ONLY_CFG",
]


def _python_configs() -> dict:
    return {name: getattr(mtq.config, name) for name in sorted(mtq.config.choices)}


def test_core_configs_exist_on_both_sides():
    cxx = set(_C.predefined_config_names())
    py = set(mtq.config.choices)
    for name in CORE_CONFIGS:
        assert name in cxx and name in py
    assert cxx == py  # every predefined config exists on both sides


BOTH_SIDES = sorted(set(_C.predefined_config_names()) & set(mtq.config.choices))


@pytest.mark.parametrize("name", BOTH_SIDES)
def test_predefined_config_json_equals_python_dict(name):
    # Same keys, same values and the same order (dict order decides which entry wins).
    expected = json.dumps(getattr(mtq.config, name))
    assert json.dumps(json.loads(_C.predefined_config_json(name))) == expected


def test_quantize_config_defaults_match_python():
    expected = json.dumps(dict(mtq.config.QuantizeConfig({})))
    assert json.dumps(json.loads(_C.normalize_quantize_config("{}"))) == expected


def test_unknown_predefined_config():
    with pytest.raises(ValueError, match="unknown predefined config 'NOPE'"):
        _C.predefined_config_json("NOPE")


@pytest.mark.parametrize("name", sorted(mtq.config.choices))
def test_cxx_parser_accepts_every_python_config(name):
    cfg = getattr(mtq.config, name)
    assert json.loads(_C.normalize_quantize_config(json.dumps(cfg))) == json.loads(json.dumps(cfg))


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        ({"quant_cfg": {}, "algoritm": "max"}, ValueError, "unknown quantize config key"),
        ({"quant_cfg": {"*w*": {"num_bitz": 8}}}, ValueError, r"quant_cfg\['\*w\*'\]"),
        ({"quant_cfg": {"nn.Linear": [{"enable": False}]}}, ValueError, "sub-patterns"),
        ({"quant_cfg": {}, "algorithm": 5}, TypeError, "algorithm must be"),
    ],
)
def test_cxx_parser_errors(bad, exc, match):
    with pytest.raises(exc, match=match):
        _C.normalize_quantize_config(json.dumps(bad))


def test_fnmatch_matches_python_on_random_patterns():
    rng = random.Random(0)
    alphabet = "ab.*?[]!-_c"
    names = ["", "a", "b.a", "a.b_c", "ab-c", "a]b", "a[b", "c!a", "_.-", "layers.0.k_bmm"]
    names += ["".join(rng.choice("abc._-[]!") for _ in range(rng.randint(0, 8)))
              for _ in range(60)]
    checked = 0
    for _ in range(400):
        pattern = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        for name in names:
            assert _C.fnmatch(name, pattern) == fnmatch.fnmatchcase(name, pattern), (name, pattern)
            checked += 1
    assert checked == 400 * len(names)


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("x3", "x[9-0]"), ("x3", "x[!9-0]"), ("x-", "x[a-]"), ("x]", "x[]]"), ("x]", "x[!]]"),
        ("x[", "x["), ("x!", "x[!]"), ("a\\b", "a\\b"), ("é", "?"), ("a-c", "a[--/]c"),
        ("m", "[a-cz-bm]"), ("attn.v_bmm_quantizer", "*[kv]_bmm_quantizer"),
    ],
)
def test_fnmatch_edge_cases(name, pattern):
    assert _C.fnmatch(name, pattern) == fnmatch.fnmatchcase(name, pattern)


# ---------------------------------------------------------------------------------------------
# C++ quantize == Python quantize

PARITY_CONFIGS = CORE_CONFIGS + [
    "NVFP4_DEFAULT_CFG",
    "W4A8_NVFP4_FP8_CFG",
    "MXFP8_DEFAULT_CFG",
    "MXFP4_DEFAULT_CFG",
    "MXINT8_DEFAULT_CFG",
]


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 16))


@pytest.mark.parametrize("name", [n for n in PARITY_CONFIGS if n in mtq.config.choices])
def test_cxx_quantize_is_bit_identical_to_python(name):
    cfg = getattr(mtq.config, name)
    model = _mlp()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    weights = [m.weight.detach().clone() for m in linears]
    biases = [m.bias.detach().clone() for m in linears]
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 48, generator=gen) * (1 + i) for i in range(3)]
    x = torch.randn(8, 48, generator=gen)

    with contextlib.redirect_stdout(io.StringIO()):
        mtq.quantize(model, copy.deepcopy(cfg), lambda m: [m(b) for b in calib])
    with torch.no_grad():
        py_out = model(x)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mtq.print_quant_summary(model)
    py_summary = buf.getvalue()
    cxx_out, cxx_summary = _C._cxx_quantize_mlp(weights, biases, json.dumps(cfg), calib, x)
    assert torch.equal(cxx_out, py_out)
    assert cxx_summary == py_summary
    assert "TensorQuantizers found in model" in cxx_summary


def test_cxx_quantize_nan_calibration_names_the_layer():
    model = _mlp()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    bad = torch.randn(4, 48)
    bad[2, 5] = float("nan")
    with pytest.raises(RuntimeError, match=r"quantizer '0.input_quantizer' of module '0' "
                                           r"\(QuantLinear\): amax=nan"):
        _C._cxx_quantize_mlp([m.weight.detach() for m in linears],
                             [m.bias.detach() for m in linears],
                             json.dumps(mtq.config.INT8_DEFAULT_CFG), [bad], torch.randn(2, 48))


def test_cxx_quantize_refuses_python_only_algorithms():
    model = _mlp()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with pytest.raises(NotImplementedError, match="smoothquant"):
        _C._cxx_quantize_mlp([m.weight.detach() for m in linears],
                             [m.bias.detach() for m in linears],
                             json.dumps(mtq.config.INT8_SMOOTHQUANT_CFG), [], torch.randn(2, 48))
