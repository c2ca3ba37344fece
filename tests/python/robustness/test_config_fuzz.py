"""Bounded, seeded fuzz of config validation: random and mutated attribute dicts, quantize
configs, algorithms and raw JSON text, fed to QuantizerAttributeConfig, QuantizeConfig, the C++
parsers through mopt._C and, for a sample, mtq.quantize on a tiny model.

Every case must give a valid config or a clear error (ValueError, TypeError, KeyError or
NotImplementedError with a message): never a crash, a hang or another exception type. The C++
side of the same fuzz (tests/cpp/quant/test_config_fuzz.cpp) also runs under ASan + UBSan
(`make test-sanitize`).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from typing import Any

import pytest
import torch
from torch import nn

import mopt.quantization as mtq
from mopt import _C
from mopt.quantization import QuantizeConfig, QuantizerAttributeConfig
from mopt.quantization.model_calib import calibration_steps

CLEAR_ERRORS = (ValueError, TypeError, KeyError, NotImplementedError)
SEED = 20240909
CASES = 1500
SLOW_CASE_S = 5.0  # a parse that takes longer is a hang in the making

ATTRIBUTE_SEEDS: list[dict] = [
    {},
    {"num_bits": 8, "axis": 0},
    {"num_bits": 8, "axis": None, "enable": False},
    {"num_bits": (4, 3), "axis": None},
    {"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}, "enable": True},
    {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)},
     "axis": None, "enable": True},
    {"num_bits": (2, 1), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}},
    {"num_bits": 4, "block_sizes": {-1: 64, "scale_bits": 8, "scale_block_sizes": {-1: 256}}},
    {"num_bits": (4, 3), "type": "dynamic", "block_sizes": {-1: None}},
    {"num_bits": 8, "axis": (0, 1), "unsigned": True, "narrow_range": True,
     "calibrator": "histogram", "pass_through_bwd": True, "trt_high_precision_dtype": "Half"},
]

ALGORITHM_SEEDS: list[Any] = [
    "max",
    None,
    {"method": "smoothquant", "alpha": 0.5},
    {"method": "smoothquant", "alpha": "auto", "alpha_step": 0.25, "max_tokens_per_batch": 32},
    {"method": "awq_lite", "alpha_step": 0.1},
    {"method": "awq_clip", "min_clip_ratio": 0.5, "shrink_step": 0.05},
    {"method": "awq_full", "alpha_step": 0.25},
    {"method": "gptq", "block_size": 128, "percdamp": 0.01, "act_order": False},
    {"method": "mse", "num_steps": 10, "start_multiplier": 0.25, "stop_multiplier": 4.0},
    {"method": "mse", "step_size": 0.5},
    {"method": "entropy", "num_bins": 2048, "stride": 1, "start_bin": 128},
    {"method": "percentile", "percentile": 99.9},
    {"method": "step_percentile", "num_steps": 4, "percentile": 90, "collect": "mean"},
    ["max", {"method": "histogram_mse", "num_bins": 256}],
    {"method": "lsq", "scale_algorithm": {"method": "max"}, "learnable_amax": ["pre", "post"],
     "tied_amax": True, "quantize_pre_scale": False},
    {"method": "lsq", "learnable_amax": "pre"},
]

HOSTILE_SCALARS: list[Any] = [
    0, -1, 1, 2, 4, 8, 16, 17, 2**31 - 1, 2**31, 2**32, 2**32 + 4, 2**63 - 1, 2**63, 2**64 - 1,
    2**64, 2**100, -(2**63), -(2**32) + 8,
    0.5, 4.0, -0.0, 8.0, math.nan, math.inf, -math.inf, 1e300, -1e300, 1e-300, 5e-324,
    True, False, None,
    "", "max", "dynamic", "static", "-1", "8", "ü中😀", "\ud800", "\x00", "x" * 3000,
    b"8", object(), {1, 2}, (), [], {},
]

KEYS: list[Any] = [
    "enable", "num_bits", "axis", "fake_quant", "unsigned", "narrow_range", "type", "block_sizes",
    "bias", "calibrator", "pass_through_bwd", "trt_high_precision_dtype", "rotate", "learn_amax",
    "scale_bits", "scale_block_sizes", -1, -2, 0, 1, 2**70, "1e3", " 1", 1.5, None, "method",
    "alpha", "alpha_step", "num_steps", "step_size", "block_size", "num_bins", "ü", "",
]


def random_value(rng: random.Random, depth: int) -> Any:
    pick = rng.random()
    if depth <= 0 or pick < 0.6:
        return rng.choice(HOSTILE_SCALARS)
    if pick < 0.8:
        if rng.random() < 0.05:
            return list(range(10000))  # a huge list
        items = [random_value(rng, depth - 1) for _ in range(rng.randrange(4))]
        return tuple(items) if rng.random() < 0.3 else items
    return {rng.choice(KEYS): random_value(rng, depth - 1) for _ in range(rng.randrange(4))}


def nested(depth: int, leaf: Any = 8) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def mutate(doc: Any, rng: random.Random) -> Any:
    """`doc` with one value replaced, deleted, added, wrapped or nested somewhere."""
    doc = copy.deepcopy(doc)
    if not isinstance(doc, (dict, list)) or not doc or rng.random() < 0.3:
        op = rng.randrange(3)
        if op == 0:
            return random_value(rng, 3)
        if op == 1:
            return nested(rng.randrange(1, 40), doc)
        return [doc, doc]
    if isinstance(doc, dict):
        key = rng.choice(list(doc))
        op = rng.randrange(4)
        if op == 0:
            del doc[key]
        elif op == 1:
            doc[rng.choice(KEYS)] = random_value(rng, 3)
        else:
            doc[key] = mutate(doc[key], rng)
        return doc
    i = rng.randrange(len(doc))
    doc[i] = mutate(doc[i], rng)
    return doc


def run_case(what: str, case: Any, fn) -> Any:
    """fn(case): its result, or None after a clear error; anything else fails with the case."""
    start = time.monotonic()
    try:
        return fn(case)
    except CLEAR_ERRORS as e:
        assert str(e).strip(), f"{what}: {type(e).__name__} without a message for {case!r:.300}"
        return None
    except Exception as e:  # noqa: BLE001 - any other type is the failure this test looks for
        pytest.fail(f"{what}: {type(e).__name__}: {e}\ncase: {case!r:.500}")
    finally:
        elapsed = time.monotonic() - start
        assert elapsed < SLOW_CASE_S, f"{what} took {elapsed:.1f} s on {case!r:.300}"


def _check_attributes(kwargs: dict) -> QuantizerAttributeConfig:
    cfg = QuantizerAttributeConfig(**kwargs)
    num_bits = cfg.num_bits
    if isinstance(num_bits, tuple):
        assert num_bits in {(4, 3), (5, 2), (2, 1), (3, 2), (2, 3), (1, 2)}, kwargs
    else:
        assert type(num_bits) is int and 2 <= num_bits <= 16, kwargs
    for axis, size in (cfg.block_sizes or {}).items():
        if isinstance(axis, int) and size is not None:
            assert type(size) is int and 0 < size < 2**63, kwargs
    assert QuantizerAttributeConfig(**cfg.model_dump()) == cfg, kwargs
    return cfg


def test_attribute_config_fuzz():
    rng = random.Random(SEED)
    accepted = 0
    for i in range(CASES):
        if i % 4 == 0:
            kwargs = random_value(rng, 3)
            kwargs = kwargs if isinstance(kwargs, dict) else {"num_bits": kwargs}
        else:
            kwargs = rng.choice(ATTRIBUTE_SEEDS)
            for _ in range(1 + rng.randrange(3)):
                kwargs = mutate(kwargs, rng)
            if not isinstance(kwargs, dict):
                kwargs = {"block_sizes": kwargs}
        kwargs = {str(k): v for k, v in kwargs.items()}  # keyword names are str
        accepted += run_case("QuantizerAttributeConfig", kwargs, _check_attributes) is not None
    assert 0 < accepted < CASES  # the fuzz reaches both outcomes


def test_quantize_config_fuzz():
    rng = random.Random(SEED + 1)
    for _ in range(CASES // 2):
        quant_cfg: dict = {}
        for _ in range(1 + rng.randrange(3)):
            pattern = rng.choice(["*weight_quantizer", "*input_quantizer", "default", "nn.Linear"])
            attrs = rng.choice(ATTRIBUTE_SEEDS)
            quant_cfg[pattern] = {"*input_quantizer": attrs} if pattern == "nn.Linear" else attrs
        config: Any = {"quant_cfg": quant_cfg, "algorithm": rng.choice(ALGORITHM_SEEDS)}
        for _ in range(rng.randrange(4)):
            config = mutate(config, rng)
        run_case("QuantizeConfig", config, QuantizeConfig)
        # the C++ QuantizeConfig: also the whole config as JSON text
        try:
            text = json.dumps(config)
        except (TypeError, ValueError):
            continue
        run_case("normalize_quantize_config", text, _C.normalize_quantize_config)


def test_algorithm_fuzz():
    rng = random.Random(SEED + 2)
    for i in range(CASES):
        algorithm = rng.choice(ALGORITHM_SEEDS)
        if isinstance(algorithm, dict) and i % 2:
            algorithm = dict(algorithm)
            key = rng.choice([k for k in algorithm if k != "method"] or ["method"])
            algorithm[key] = rng.choice(HOSTILE_SCALARS)  # an option with a hostile value
        else:
            algorithm = mutate(algorithm, rng)
        steps = run_case("parse_algorithm", algorithm, calibration_steps)
        for method, options in steps or []:
            assert isinstance(method, str) and isinstance(options, dict), algorithm


def _text_mutations(rng: random.Random, text: str) -> str:
    op = rng.randrange(5)
    if op == 0:
        return text[: rng.randrange(len(text) + 1)]
    if op == 1:
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice('{}[],:"\\\x00\xff9-eN') + text[i:]
    if op == 2:
        return text.replace("8", "99999999999999999999999", 1)
    if op == 3:
        return text.replace(":", ": NaN, \"x\":", 1)
    return text + text


def test_raw_json_text_fuzz():
    """The C++ entry points take JSON text: broken text is a ValueError, never a crash."""
    rng = random.Random(SEED + 3)
    entry_points = [_C.normalize_quantizer_config, _C.normalize_quantize_config,
                    lambda t: _C.parse_algorithm(t, []), _C.format_info]
    for _ in range(CASES // 2):
        seed = json.dumps(QuantizerAttributeConfig(**rng.choice(ATTRIBUTE_SEEDS)).model_dump())
        text = _text_mutations(rng, seed)
        for fn in entry_points:
            run_case("raw JSON", text, fn)


@pytest.mark.parametrize("depth", [100, 5000, 200000])
@pytest.mark.parametrize("key", ["num_bits", "axis", "block_sizes"])
def test_deep_nesting_is_a_value_error(key, depth):
    value = "[" * depth + "8" + "]" * depth
    text = f'{{"{key}": {value}}}'
    with pytest.raises(ValueError, match="nests deeper"):
        _C.normalize_quantizer_config(text)
    with pytest.raises(ValueError, match="nests deeper"):
        _C.normalize_quantize_config(f'{{"quant_cfg": {{"*": {text}}}}}')
    with pytest.raises(ValueError, match="nests deeper"):
        _C.parse_algorithm(f'{{"method": "max", "x": {value}}}', [])


@pytest.mark.parametrize("text", ['{"num_bits": 1e400}', '{"axis": -1e999}'])
def test_numbers_beyond_double_are_value_errors(text):
    with pytest.raises(ValueError, match="not valid JSON"):
        _C.normalize_quantizer_config(text)


@pytest.mark.parametrize("kwargs", [
    {"num_bits": 2**32 + 4},      # read as 4 through a 32-bit int before the fix
    {"num_bits": 2**32 + 8},
    {"num_bits": (2**32 + 4, 3)},
    {"num_bits": (4, 2**32 + 3)},
    {"num_bits": 2**64 - 1},
    {"axis": 2**64 - 1},          # read as axis -1 through int64 before the fix
    {"axis": (0, 2**63)},
    {"block_sizes": {-1: 2**64 - 1}},
    {"block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (2**32 + 4, 3)}},
])
def test_integers_beyond_range_are_rejected(kwargs):
    with pytest.raises(ValueError):
        QuantizerAttributeConfig(**kwargs)


@pytest.mark.parametrize("algorithm", [
    {"method": "mse", "step_size": 1e-300},
    {"method": "mse", "num_steps": 2**62},
    {"method": "awq_lite", "alpha_step": 1e-9},
    {"method": "awq_clip", "shrink_step": 1e-12},
    {"method": "entropy", "num_bins": 2**40},
    {"method": "gptq", "block_size": 2**64 - 1},
])
def test_unbounded_searches_are_rejected(algorithm):
    start = time.monotonic()
    with pytest.raises(ValueError):
        calibration_steps(algorithm)
    assert time.monotonic() - start < 1.0


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _block_sizes_within(attrs: Any, limit: int) -> bool:
    """False when a block size anywhere in `attrs` exceeds `limit`."""
    if isinstance(attrs, dict):
        for k, v in attrs.items():
            if (k in ("block_sizes", "scale_block_sizes") and isinstance(v, dict)
                    and any(isinstance(s, int) and not isinstance(s, bool) and s > limit
                            for s in v.values())):
                return False
            if not _block_sizes_within(v, limit):
                return False
    elif isinstance(attrs, (list, tuple)):
        return all(_block_sizes_within(a, limit) for a in attrs)
    return True


def test_quantize_sample():
    """mtq.quantize with mutated configs: a quantized model or a clear error that leaves the
    model as it was."""
    rng = random.Random(SEED + 4)
    data = torch.randn(4, 8)
    done = 0
    while done < 40:
        config: Any = {
            "quant_cfg": {"*weight_quantizer": mutate(rng.choice(ATTRIBUTE_SEEDS), rng),
                          "*input_quantizer": rng.choice(ATTRIBUTE_SEEDS)},
            "algorithm": rng.choice(["max", None, {"method": "mse", "num_steps": 4}]),
        }
        # Block sizes far beyond the tensor pad it to the whole block (memory in proportion to
        # the block); that is a different test, not this fuzz of config validation.
        if not _block_sizes_within(config, 4096):
            continue
        done += 1
        model = _Tiny()
        before = copy.deepcopy(model.state_dict())

        def quantize(cfg, model=model):
            return mtq.quantize(model, cfg, forward_loop=lambda m: m(data))

        if run_case("mtq.quantize", config, quantize) is None:
            assert type(model.fc1) is nn.Linear and type(model.fc2) is nn.Linear, config
            for k, v in model.state_dict().items():
                assert torch.equal(v, before[k]), (k, config)
        else:
            assert torch.isfinite(model(data)).all(), config
