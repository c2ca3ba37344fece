"""mopt.ptq: the config registry and the deployed weight-bytes count, checked by hand."""

import copy
import warnings

import pytest
import torch
from torch import nn

import mopt.quantization as mtq
from mopt import ptq


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)  # 80
        self.l1 = nn.Linear(8, 40)  # weight [40, 8] = 320, bias 40
        self.l2 = nn.Linear(40, 6, bias=False)  # weight [6, 40] = 240
        self.lm_head = nn.Linear(8, 10, bias=False)
        self.lm_head.weight = self.emb.weight  # tied: counted once, at 16 bits


def _quantized(weight_cfg, algorithm=None):
    m = Tiny()
    cfg = {
        "quant_cfg": {
            "*weight_quantizer": weight_cfg,
            "*input_quantizer": {"enable": False},
            "*lm_head*": {"enable": False},
            "default": {"enable": False},
        },
        "algorithm": algorithm,
    }
    mtq.quantize(m, cfg)
    return m


# Hand counts in bytes. Unquantized: emb 80 x 2 = 160, l1.bias 40 x 2 = 80 (240 in all).
HAND_COUNTS = {
    # int8 per channel: l1 320 + 40 fp16 scales 80; l2 240 + 6 x 2
    "int8": ({"num_bits": 8, "axis": 0}, 240 + 320 + 80 + 240 + 12),
    # int4 blocks of 128 (one per row here): l1 160 + 40 x 2; l2 120 + 6 x 2
    "int4": ({"num_bits": 4, "block_sizes": {-1: 128}}, 240 + 160 + 80 + 120 + 12),
    # fp8 per tensor: one fp32 scale per weight
    "fp8": ({"num_bits": (4, 3), "axis": None}, 240 + 320 + 4 + 240 + 4),
    # nvfp4: l1 1 block/row -> 40 E4M3 scales + fp32 tensor scale; l2 3 blocks/row -> 18 + 4
    "nvfp4": (
        {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}},
        240 + 160 + 40 + 4 + 120 + 18 + 4,
    ),
    # mxfp4: E8M0 per 32; l1 1 block/row, l2 2 blocks/row; no second level
    "mxfp4": (
        {"num_bits": (2, 1), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}},
        240 + 160 + 40 + 120 + 12,
    ),
    # nf4: int8 scales per 64 (one per row), + fp32 per 256 scales + fp32 mean
    "nf4": (
        {
            "num_bits": 4,
            "block_sizes": {
                -1: 64,
                "type": "dynamic",
                "scale_bits": 8,
                "scale_block_sizes": {-1: 256},
            },
        },
        240 + 160 + 40 + 8 + 120 + 6 + 8,
    ),
    # w4a8: int4 blocks stored (4 bits) + fp16 block scales + the fp8 stage's fp32 tensor scale
    "w4a8": (
        [
            {"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}},
            {"num_bits": (4, 3), "axis": None},
        ],
        240 + 160 + 80 + 4 + 120 + 12 + 4,
    ),
}


@pytest.mark.parametrize("name", list(HAND_COUNTS))
def test_deployed_weight_bytes_hand_count(name):
    weight_cfg, expected = HAND_COUNTS[name]
    wb = ptq.deployed_weight_bytes(_quantized(weight_cfg))
    assert wb.n_params == 680
    assert wb.quantized_params == 560
    assert wb.total_bytes == expected
    assert wb.effective_bits == pytest.approx(8 * expected / 680)


def test_float_and_extras():
    wb = ptq.deployed_weight_bytes(Tiny())
    assert (wb.total_bytes, wb.effective_bits, wb.quantized_params) == (1360, 16.0, 0)
    m = _quantized({"num_bits": 8, "axis": 0})
    m.l1.input_quantizer.pre_quant_scale = torch.ones(8)  # AWQ/SmoothQuant: fp16 per channel
    assert ptq.deployed_weight_bytes(m).total_bytes == 892 + 16
    mtq.disable_quantizer(m, "*l2.weight_quantizer")  # a disabled quantizer stores 16-bit
    assert ptq.deployed_weight_bytes(m).total_bytes == 892 + 16 - 252 + 480


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
    # the CLI offers every predefined config (issue 4: each one appears in `mopt ptq`)
    assert set(mtq.config.choices) <= {c.cfg_name for c in ptq.PTQ_CONFIGS.values()}


def test_availability_reasons(monkeypatch):
    from mopt.quantization import model_calib

    entry = ptq.PtqConfig("x", "NO_SUCH_CFG", "missing")
    assert ptq.config_availability(entry) == "mopt.quantization has no NO_SUCH_CFG"
    entry = ptq.PtqConfig("y", "INT8_DEFAULT_CFG", "unregistered", algorithm="no_such_algo")
    assert "'no_such_algo' is not registered" in ptq.config_availability(entry)
    assert ptq.config_availability(ptq.PTQ_CONFIGS["int8"]) is None
    assert "max" in model_calib.calibration_algorithms()


def test_unavailable_config_is_reported_not_raised():
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x):
            raise NotImplementedError("format X is not built")

    entry = ptq.PtqConfig("int8_wo", "INT8_WEIGHT_ONLY_CFG", "d")
    res = ptq._try_config(entry, Fails(), None, lambda m: m(torch.zeros(1, 4)))
    assert res.status == "not available" and res.reason == "format X is not built"
    base = nn.Sequential(nn.Linear(4, 4))
    kv = ptq._try_config(ptq.PTQ_CONFIGS["fp8_kv"], base, None, lambda m: (0.0, None))
    assert kv.status == "not available" and "k/v bmm" in kv.reason
    ok = ptq._try_config(entry, base, None, lambda m: (1.0, None))
    assert ok.status == "ok" and ok.effective_bits == pytest.approx(8 * (16 + 8 + 8) / 20)
    assert not hasattr(base[0], "weight_quantizer")  # the base model is never modified

    def noisy(m):
        for i in range(3):
            warnings.warn(f"quantizer {i} is odd", stacklevel=1)
        return 1.0, None

    res = ptq._try_config(entry, base, None, noisy)
    assert res.status == "ok" and res.warnings == "3 warning(s), first: quantizer 0 is odd"


def test_table_format():
    rows = [
        ptq.PtqResult(
            "float", "float", metric=3.6445, change_pct=0.0, weight_bytes=1000, effective_bits=16.0
        ),
        ptq.PtqResult(
            "int8",
            "ok",
            metric=3.65,
            change_pct=0.15,
            weight_bytes=600,
            effective_bits=9.6,
            calib_seconds=1.234,
        ),
        ptq.PtqResult("nvfp4", "not available", reason="not built"),
    ]
    table = ptq.format_table(rows)
    assert "| int8 | 3.6500 | +0.15% | 600 (9.60) | 1.23 |" in table
    assert "- nvfp4: not available: not built" in table
    assert copy.deepcopy(rows)[0].config == "float"


def test_cpu_threads_auto_and_restore():
    before = torch.get_num_threads()
    small = nn.Linear(4, 4)
    with ptq._cpu_threads("auto", small, torch.device("cpu")):
        assert torch.get_num_threads() == 1  # a tiny model: threads only add synchronization
    assert torch.get_num_threads() == before
    with ptq._cpu_threads(None, small, torch.device("cpu")):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be"):
        ptq.run_ptq(configs="int8", threads=0, log=None)
