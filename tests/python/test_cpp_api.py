"""The C++ module API against the Python one: predefined configs, config JSON, fnmatch, and a
model quantized from C++ (mopt::quantize on a torch::nn::Sequential) against the same model
quantized from Python, bit for bit."""

import contextlib
import copy
import fnmatch
import io
import json
import random
import warnings

import mopt.quantization as mtq
import pytest
from conftest import cxx_bridge
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
# C++ quantize == Python quantize: the same module and data through both front ends give
# bit-identical weights, amax, pre_quant_scale, outputs and summaries, for every predefined config
# and every calibration algorithm.

# (config, algorithm override or None) pairs: every predefined config with its own algorithm,
# and each algorithm on the formats it applies to.
PARITY_CASES = [(name, None) for name in sorted(mtq.config.choices)] + [
    ("INT8_DEFAULT_CFG", "smoothquant"),
    ("INT8_DEFAULT_CFG", {"method": "smoothquant", "alpha": 0.5}),
    ("INT8_DEFAULT_CFG", {"method": "smoothquant", "alpha": "auto", "alpha_step": 0.25}),
    ("INT8_SMOOTHQUANT_DYNAMIC_CFG", {"method": "smoothquant", "alpha": "auto"}),
    ("INT8_DEFAULT_CFG", "mse"),
    ("INT8_DEFAULT_CFG", {"method": "mse", "num_steps": 7, "start_multiplier": 0.5}),
    ("INT8_DEFAULT_CFG", "entropy"),
    ("INT8_DEFAULT_CFG", {"method": "percentile", "percentile": 99.0}),
    ("INT8_DEFAULT_CFG", {"method": "histogram_mse", "num_bins": 512, "start_bin": 64}),
    ("INT8_DEFAULT_CFG", ["smoothquant", "mse"]),
    ("FP8_DEFAULT_CFG", "percentile"),
    ("INT8_DEFAULT_CFG", {"method": "step_percentile", "num_steps": 2, "percentile": 30.0}),
    ("FP8_DEFAULT_CFG", {"method": "step_percentile", "num_steps": 3, "collect": "mean"}),
    ("FP8_DEFAULT_CFG", "mse"),
    ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "awq_lite"),
    ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "awq_clip"),
    ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", {"method": "awq_full", "alpha_step": 0.25}),
    ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", {"method": "gptq", "block_size": 16}),
    ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", {"method": "gptq", "act_order": True}),
    ("INT8_DEFAULT_CFG", "gptq"),
    ("FP8_DEFAULT_CFG", "gptq"),
    ("NVFP4_DEFAULT_CFG", "gptq"),
    ("INT4_B32_ASYM_CFG", "awq_clip"),
    ("INT4_B32_ASYM_CFG", {"method": "awq_full", "alpha_step": 0.25}),
    ("INT4_B32_ASYM_CFG", {"method": "gptq", "block_size": 16}),
    # learned scales: the calibrated amax, the eligible quantizers and the summary (which shows
    # the pre amax and what learns) agree; refusals (NVFP4/NF4 static blocks, asymmetric or
    # dynamic weights, no weight quantizer) raise the same error on both sides
    ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", {"method": "lsq", "scale_algorithm": {"method": "max"}}),
    ("INT8_WEIGHT_ONLY_CFG", "lsq"),
    ("FP8_DEFAULT_CFG", {"method": "lsq", "learnable_amax": ["pre", "post"]}),
    ("INT8_DEFAULT_CFG", {"method": "lsq", "learnable_amax": ["pre", "post"], "tied_amax": True,
                          "scale_algorithm": {"method": "max"}}),
    ("W4A8_AWQ_BETA_CFG", {"method": "lsq", "learnable_amax": "pre",
                           "scale_algorithm": {"method": "mse", "num_steps": 5}}),
    ("NVFP4_DEFAULT_CFG", "lsq"),
    ("NF4_WEIGHT_ONLY_CFG", "lsq"),
    ("INT4_B32_ASYM_CFG", "lsq"),
    ("MXFP4_DEFAULT_CFG", "lsq"),
    ("FP8_KV_CFG", "lsq"),
]


def _case_id(case) -> str:
    name, algorithm = case
    return name if algorithm is None else f"{name}-{json.dumps(algorithm)}"


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 16))


def _calib_and_input():
    gen = torch.Generator().manual_seed(1)
    # channel-dependent scales give the algorithms something to find
    scale = torch.linspace(0.2, 3.0, 48)
    calib = [torch.randn(16, 48, generator=gen) * scale * (1 + i) for i in range(3)]
    x = torch.randn(8, 48, generator=gen) * scale
    return calib, x


def _python_side(cfg, calib, x):
    model = _mlp()
    with contextlib.redirect_stdout(io.StringIO()):
        mtq.quantize(model, copy.deepcopy(cfg), lambda m: [m(b) for b in calib])
    with torch.no_grad():
        out = model(x)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mtq.print_quant_summary(model)
    quantizers = {name: (q.amax, q.pre_quant_scale)
                  for name, q in model.named_modules()
                  if isinstance(q, mtq.nn.TensorQuantizer)}
    weights = [m.weight.detach() for m in model if isinstance(m, nn.Linear)]
    return {"out": out, "summary": buf.getvalue(), "weights": weights, "quantizers": quantizers}


def _cxx_side(cfg, calib, x):
    model = _mlp()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with contextlib.redirect_stdout(io.StringIO()):
        return cxx_bridge().quantize_mlp([m.weight.detach().clone() for m in linears],
                                         [m.bias.detach().clone() for m in linears],
                                         json.dumps(cfg), calib, x)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("case", PARITY_CASES, ids=_case_id)
def test_cxx_quantize_is_bit_identical_to_python(case):
    name, algorithm = case
    cfg = copy.deepcopy(getattr(mtq.config, name))
    if algorithm is not None:
        cfg["algorithm"] = algorithm
    calib, x = _calib_and_input()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            py = _python_side(cfg, calib, x)
        except Exception as e:  # a config this module cannot take: C++ must refuse it the same way
            with pytest.raises(type(e)) as cxx_error:
                _cxx_side(cfg, calib, x)
            # same error up to the front end's own advice after the first ";"
            assert str(cxx_error.value).split(";")[0] == str(e).split(";")[0]
            return
        cxx = _cxx_side(cfg, calib, x)
    assert len(py["weights"]) == len(cxx["weights"]) == 3
    for i, (a, b) in enumerate(zip(py["weights"], cxx["weights"])):
        assert torch.equal(a, b), f"weight of layer {i}"
    assert set(py["quantizers"]) == set(cxx["quantizers"])
    for qname, (amax, pqs) in py["quantizers"].items():
        cxx_amax, cxx_pqs = cxx["quantizers"][qname]
        assert _same(amax, cxx_amax), f"{qname}.amax: {amax} vs {cxx_amax}"
        assert _same(pqs, cxx_pqs), f"{qname}.pre_quant_scale"
    assert torch.equal(cxx["out"], py["out"])
    assert cxx["summary"] == py["summary"]
    assert "TensorQuantizers found in model" in cxx["summary"]


def test_parity_cases_cover_every_config_and_algorithm():
    covered = {json.dumps(a) if not isinstance(a, str) else a for _, a in PARITY_CASES if a}
    methods = set()
    for _, a in PARITY_CASES:
        for step in ([a] if not isinstance(a, list) else a):
            if step is not None:
                methods.add(step if isinstance(step, str) else step["method"])
    for name in mtq.config.choices:
        algo = getattr(mtq.config, name)["algorithm"]
        if algo is not None:
            methods.add(algo if isinstance(algo, str) else algo["method"])
    assert covered
    assert methods == set(_C.calibration_methods())


def test_cxx_quantize_nan_calibration_names_the_layer():
    model = _mlp()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    bad = torch.randn(4, 48)
    bad[2, 5] = float("nan")
    with pytest.raises(RuntimeError, match=r"quantizer '0.input_quantizer' of module '0' "
                                           r"\(QuantLinear\): amax=nan"):
        cxx_bridge().quantize_mlp([m.weight.detach() for m in linears],
                                  [m.bias.detach() for m in linears],
                                  json.dumps(mtq.config.INT8_DEFAULT_CFG), [bad],
                                  torch.randn(2, 48))


def test_cxx_quantize_needs_a_forward_loop_for_smoothquant():
    model = _mlp()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with pytest.raises(ValueError, match="smoothquant needs forward_loop"):
        cxx_bridge().quantize_mlp([m.weight.detach() for m in linears],
                                  [m.bias.detach() for m in linears],
                                  json.dumps(mtq.config.INT8_SMOOTHQUANT_CFG), [],
                                  torch.randn(2, 48))


# ---------------------------------------------------------------------------------------------
# Learned scales (lsq) across the front ends: a model trained with learned scales in one saves a
# file the other restores with the same amaxes, the same learnable ones and the same outputs.

LSQ_CASES = {
    "int4-b16-pre-post": ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG",
                          {"method": "lsq", "scale_algorithm": {"method": "max"},
                           "learnable_amax": ["pre", "post"]}),
    "int8-post": ("INT8_WEIGHT_ONLY_CFG", {"method": "lsq"}),
    "fp8-tied": ("FP8_DEFAULT_CFG", {"method": "lsq", "learnable_amax": ["pre", "post"],
                                     "tied_amax": True, "scale_algorithm": {"method": "max"}}),
}


def _lsq_config(case: str) -> dict:
    name, algorithm = LSQ_CASES[case]
    cfg = copy.deepcopy(getattr(mtq.config, name))
    if name == "INT4_BLOCKWISE_WEIGHT_ONLY_CFG":
        cfg["quant_cfg"]["*weight_quantizer"]["block_sizes"] = {-1: 16}
    cfg["algorithm"] = algorithm
    return cfg


def _lsq_view(model: nn.Module) -> dict:
    return {name: (q.amax_pre, q.amax_post, q.learnable_amax, bool(q._lsq and q._lsq[2]))
            for name, q in model.named_modules() if isinstance(q, mtq.nn.TensorQuantizer)}


def _assert_same_lsq(py: dict, cxx: dict):
    assert set(py) == set(cxx)
    learned = 0
    for name, (pre, post, learn, tied) in py.items():
        c_pre, c_post, c_learn, c_tied = cxx[name]
        assert _same(pre, c_pre) and _same(post, c_post), name
        assert (learn, tied) == (c_learn, c_tied), name
        learned += bool(learn)
    assert learned > 0


def _sizes(model: nn.Sequential) -> list:
    return [(m.out_features, m.in_features) for m in model if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("case", list(LSQ_CASES))
def test_lsq_trained_in_python_restores_in_cxx(case, tmp_path):
    import mopt.opt as mto

    calib, x = _calib_and_input()
    target = torch.sin(x[:, :16])
    model = _mlp()
    with contextlib.redirect_stdout(io.StringIO()):
        mtq.quantize(model, _lsq_config(case), lambda m: [m(b) for b in calib])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(4):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        opt.step()
    view = _lsq_view(model)
    if "pre-post" in case:  # trained apart: the file holds two different amaxes
        assert not torch.equal(view["0.weight_quantizer"][0], view["0.weight_quantizer"][1])
    mto.save(model, tmp_path / "py.pth")
    with torch.no_grad():
        out = model(x)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mtq.print_quant_summary(model)
        cxx = cxx_bridge().restore_mlp(_sizes(model), str(tmp_path / "py.pth"), x)
    assert torch.equal(cxx["out"], out)
    _assert_same_lsq(view, cxx["lsq"])
    assert cxx["parameters"] == [n for n, _ in model.named_parameters()]
    assert cxx["summary"] == buf.getvalue()


@pytest.mark.parametrize("case", list(LSQ_CASES))
def test_lsq_trained_in_cxx_restores_in_python(case, tmp_path):
    import mopt.opt as mto

    calib, x = _calib_and_input()
    target = torch.sin(x[:, :16])
    model = _mlp()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with contextlib.redirect_stdout(io.StringIO()):
        cxx = cxx_bridge().train_lsq_mlp([m.weight.detach().clone() for m in linears],
                                         [m.bias.detach().clone() for m in linears],
                                         json.dumps(_lsq_config(case)), calib, x, target, 6,
                                         1e-2, str(tmp_path / "cxx.pth"))
    assert cxx["losses"][-1] < cxx["losses"][0]
    mto.restore(model, tmp_path / "cxx.pth")
    with torch.no_grad():
        assert torch.equal(model(x), cxx["out"])
    _assert_same_lsq(_lsq_view(model), cxx["lsq"])
    assert [n for n, _ in model.named_parameters()] == cxx["parameters"]
    learned = [n for n, p in model.named_parameters() if n.endswith(("_amax", "_amax_pre"))]
    assert learned and all(isinstance(model.get_submodule(n.rsplit(".", 1)[0])._parameters[
        n.rsplit(".", 1)[1]], nn.Parameter) for n in learned)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mtq.print_quant_summary(model)
    assert buf.getvalue() == cxx["summary"]


def test_lsq_quantized_in_cxx_equals_python_before_training():
    # training from the same start: the same losses step by step (same ops, same Adam math)
    calib, x = _calib_and_input()
    target = torch.sin(x[:, :16])
    cfg = _lsq_config("int4-b16-pre-post")
    model = _mlp()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with contextlib.redirect_stdout(io.StringIO()):
        cxx = cxx_bridge().train_lsq_mlp([m.weight.detach().clone() for m in linears],
                                         [m.bias.detach().clone() for m in linears],
                                         json.dumps(cfg), calib, x, target, 3, 1e-2, "")
        mtq.quantize(model, cfg, lambda m: [m(b) for b in calib])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == cxx["losses"][0]
    assert losses == pytest.approx(cxx["losses"], rel=1e-5)
