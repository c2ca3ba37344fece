"""mopt.ptq.configs: the recipe registry read from C++, name resolution, availability."""

import json

import pytest

import mopt.quantization as mtq
from mopt import _C, ptq
from mopt.ptq.configs import _KEEP


def test_registry_is_the_cpp_recipe_table():
    recipes = _C.recipes()
    assert len(recipes) == len(ptq.PTQ_CONFIGS) > 0
    assert ptq.config_names() == [r["name"] for r in recipes]  # same names, same order
    for r, entry in zip(recipes, ptq.PTQ_CONFIGS.values()):
        assert (entry.name, entry.cfg_name, entry.description, entry.needs_kv_quantizers) == (
            r["name"],
            r["config"],
            r["description"],
            r["needs_kv_quantizers"],
        )
        predefined = getattr(mtq.config, r["config"])
        if r["algorithm"] is None:
            assert entry.algorithm is _KEEP
            assert entry.build()["algorithm"] == predefined["algorithm"]
        else:
            assert entry.algorithm == json.loads(r["algorithm"])
            assert entry.build()["algorithm"] == json.loads(r["algorithm"])
        assert {k: v for k, v in entry.build().items() if k != "algorithm"} == {
            k: v for k, v in predefined.items() if k != "algorithm"
        }


def test_every_recipe_names_a_predefined_config():
    for r in _C.recipes():
        assert r["config"] in mtq.config.choices, r
        assert hasattr(mtq.config, r["config"]), r
    # the CLI offers every predefined config (issue 4: each one appears in `mopt ptq`)
    assert set(mtq.config.choices) <= {c.cfg_name for c in ptq.PTQ_CONFIGS.values()}


def test_build_is_a_deep_copy():
    cfg = ptq.PTQ_CONFIGS["int8_percentile"].build()
    assert cfg["algorithm"] == {"method": "percentile", "percentile": 99.99}
    cfg["algorithm"]["percentile"] = 50.0
    cfg["quant_cfg"].clear()
    again = ptq.PTQ_CONFIGS["int8_percentile"].build()
    assert again["algorithm"]["percentile"] == 99.99 and again["quant_cfg"]


def test_resolve_configs():
    assert [c.name for c in ptq.resolve_configs("int8, fp8")] == ["int8", "fp8"]
    assert [c.name for c in ptq.resolve_configs("all")] == ptq.config_names()
    assert ptq.resolve_configs("INT8_DEFAULT_CFG")[0].build() == mtq.INT8_DEFAULT_CFG
    assert ptq.resolve_configs(["int8", "int8"])[0].name == "int8"
    with pytest.raises(ValueError, match=r"unknown config name\(s\) \['int9'\]"):
        ptq.resolve_configs("int8,int9")
    with pytest.raises(ValueError, match="no config"):
        ptq.resolve_configs(" , ")
    # every registry entry resolves to a valid config, or names what mtq lacks
    for entry in ptq.PTQ_CONFIGS.values():
        reason = ptq.config_availability(entry)
        if reason is None:
            mtq.config.QuantizeConfig(entry.build())
    gptq = ptq.PTQ_CONFIGS["int4_gptq"].build()
    assert gptq["algorithm"]["method"] == "gptq"
    assert ptq.PTQ_CONFIGS["int8_entropy"].build()["algorithm"] == "entropy"


def test_availability_reasons():
    from mopt.quantization import model_calib

    entry = ptq.PtqConfig("x", "NO_SUCH_CFG", "missing")
    assert ptq.config_availability(entry) == "mopt.quantization has no NO_SUCH_CFG"
    entry = ptq.PtqConfig("y", "INT8_DEFAULT_CFG", "unregistered", algorithm="no_such_algo")
    assert "'no_such_algo' is not registered" in ptq.config_availability(entry)
    assert ptq.config_availability(ptq.PTQ_CONFIGS["int8"]) is None
    assert "max" in model_calib.calibration_algorithms()
