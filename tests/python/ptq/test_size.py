"""mopt.ptq.size: the deployed weight-bytes count, checked by hand."""

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
