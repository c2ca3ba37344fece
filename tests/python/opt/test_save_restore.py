"""mto.save / mto.restore round trips (SPEC §3): a restored model's outputs and quantizers are
bit-identical to the saved one, for every predefined config and every calibration algorithm.

Each case quantizes a small seeded model with a seeded calibration loop and saves it; a FRESH
model of the same architecture with DIFFERENT random weights is then restored from the file and
compared with the saved model: module classes, every quantizer (attribute config, mode flags, amax
and pre_quant_scale tensors), every state_dict tensor, the mode history and the output on a fixed
input, all exactly (torch.equal). The same holds for restore_from_modelopt_state +
load_state_dict, for a restore from an io.BytesIO, and for a second save of the restored model
(the same bytes). Bad files and error handling are tests/python/opt/test_state_robustness.py;
files written by nvidia-modelopt are test_modelopt_files.py.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import warnings
from typing import Any, Callable

import pytest
import torch
from torch import nn

import mopt.opt as mto
import mopt.quantization as mtq
from mopt import _C
from mopt.quantization.nn import SequentialQuantizer, TensorQuantizer


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The models are tiny: intra-op threads only add overhead, and on a busy machine their spin
    waits make each case tens of times slower. The previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Architectures: each builds a seeded model, has a fixed calibration set and a fixed test input.


def _mlp(seed: int) -> nn.Module:
    # 128 and 256 in-features: whole blocks of INT4 (128), NVFP4 (16), MX (32), FP8 2D (128x128)
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 128)).eval()


def _conv(seed: int) -> nn.Module:
    # Convolutions (weights blocked over their last axis, kw = 3, so padded blocks) and a final
    # linear layer of 576 in-features (4.5 blocks of 128: padding again).
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 16, 3),
                         nn.Flatten(), nn.Linear(16 * 6 * 6, 128)).eval()


def _llama(seed: int) -> nn.Module:
    # A model with attention: the only place the KV-cache quantizers (*[kv]_bmm_quantizer) of
    # FP8_KV_CFG exist (the transformers plugin inserts them into Hugging Face attention).
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    model.set_attn_implementation("sdpa")
    return model.eval()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclasses.dataclass(frozen=True)
class Arch:
    build: Callable[[int], nn.Module]
    calib: Callable[[], list]
    inputs: Callable[[], torch.Tensor]
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _plain_run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _llama_run(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


ARCHS = {
    "mlp": Arch(_mlp, lambda: list(torch.randn(4, 8, 128, generator=_gen(10))),
                lambda: torch.randn(3, 128, generator=_gen(11)), _plain_run),
    "conv": Arch(_conv, lambda: list(torch.randn(3, 2, 8, 8, 8, generator=_gen(20))),
                 lambda: torch.randn(2, 8, 8, 8, generator=_gen(21)), _plain_run),
    "llama": Arch(_llama, lambda: list(torch.randint(3, 96, (2, 2, 16), generator=_gen(30))),
                  lambda: torch.randint(3, 96, (2, 12), generator=_gen(31)), _llama_run),
}


def _loop(arch: Arch, batches: list) -> Callable[[nn.Module], None]:
    def forward_loop(model: nn.Module) -> None:
        for b in batches:
            arch.run(model, b)
    return forward_loop


# ---------------------------------------------------------------------------------------------
# Cases: (config, algorithm, architecture).

PREDEFINED = list(_C.predefined_config_names())
# FP8_KV_CFG enables only the KV-cache quantizers (*[kv]_bmm_quantizer) of attention layers: on
# the MLP and the CNN it matches nothing and quantize raises (test_kv_cache_config_needs_attention),
# so it runs on a tiny Llama, alone and merged into FP8_DEFAULT_CFG (the usual way to use it).
KV_ONLY = {"FP8_KV_CFG"}

# Every calibration algorithm, with a base config whose quantizers it calibrates: the histogram
# methods and SmoothQuant act on static integer activations, AWQ and GPTQ on block weights.
ALGORITHMS: list[tuple[str, Any, str]] = [
    ("max", "max", "INT8_DEFAULT_CFG"),
    ("mse", "mse", "INT8_DEFAULT_CFG"),
    ("mse-int4", {"method": "mse", "num_steps": 6}, "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"),
    ("smoothquant", "smoothquant", "INT8_DEFAULT_CFG"),
    ("smoothquant-0.5", {"method": "smoothquant", "alpha": 0.5}, "INT8_DEFAULT_CFG"),
    ("smoothquant-auto", {"method": "smoothquant", "alpha": "auto"}, "INT8_DEFAULT_CFG"),
    ("awq_lite", "awq_lite", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"),
    ("awq_lite-w4a8", "awq_lite", "W4A8_AWQ_BETA_CFG"),
    ("awq_clip", "awq_clip", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"),
    ("awq_full", "awq_full", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"),
    ("awq_full-nvfp4", "awq_full", "NVFP4_DEFAULT_CFG"),
    ("gptq", "gptq", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"),
    ("gptq-act_order", {"method": "gptq", "block_size": 64, "act_order": True},
     "INT8_WEIGHT_ONLY_CFG"),
    ("entropy", "entropy", "INT8_DEFAULT_CFG"),
    ("percentile", {"method": "percentile", "percentile": 99.0}, "INT8_DEFAULT_CFG"),
    ("histogram_mse", "histogram_mse", "INT8_DEFAULT_CFG"),
    ("histogram_mse-fp8", "histogram_mse", "FP8_DEFAULT_CFG"),
    ("step_percentile", {"method": "step_percentile", "num_steps": 2, "percentile": 90},
     "INT8_DEFAULT_CFG"),
    ("none", None, "INT8_WEIGHT_ONLY_CFG"),
    ("list", ["smoothquant", {"method": "mse"}], "INT8_DEFAULT_CFG"),
    ("lsq", {"method": "lsq", "scale_algorithm": {"method": "max"}}, "INT8_WEIGHT_ONLY_CFG"),
    ("lsq-tied-fp8", {"method": "lsq", "learnable_amax": ["pre", "post"], "tied_amax": True},
     "FP8_DEFAULT_CFG"),
    ("lsq-pre-int4", {"method": "lsq", "learnable_amax": "pre"}, "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"),
]


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    config: str  # predefined names, "+"-joined to merge their quant_cfg
    algorithm: Any  # _DEFAULT: the config's own
    arch: str


_DEFAULT = object()


def _cases() -> list[Case]:
    cases = []
    for name in PREDEFINED:
        if name in KV_ONLY:
            cases.append(Case(f"{name}-llama", name, _DEFAULT, "llama"))
            cases.append(Case(f"FP8_DEFAULT_CFG+{name}-llama", f"FP8_DEFAULT_CFG+{name}",
                              _DEFAULT, "llama"))
            continue
        for arch in ("mlp", "conv"):
            cases.append(Case(f"{name}-{arch}", name, _DEFAULT, arch))
    for label, algorithm, base in ALGORITHMS:
        for arch in ("mlp", "conv"):
            cases.append(Case(f"algo-{label}-{arch}", base, algorithm, arch))
    return cases


CASES = _cases()


def _config(case: Case) -> dict:
    names = case.config.split("+")
    cfg = copy.deepcopy(getattr(mtq, names[0]))
    for name in names[1:]:
        cfg["quant_cfg"].update(copy.deepcopy(getattr(mtq, name)["quant_cfg"]))
    if case.algorithm is not _DEFAULT:
        cfg = {**cfg, "algorithm": copy.deepcopy(case.algorithm)}
    return cfg


@dataclasses.dataclass
class Saved:
    model: nn.Module
    path: Any
    float_out: torch.Tensor
    arch: Arch


_SAVED: dict[str, Saved] = {}


@pytest.fixture
def saved(request, tmp_path_factory) -> Saved:
    """The case's model, quantized and saved once per session (tests only read it)."""
    case: Case = request.param
    if case.id not in _SAVED:
        arch = ARCHS[case.arch]
        model = arch.build(0)
        x = arch.inputs()
        float_out = arch.run(model, x)
        with warnings.catch_warnings():
            # GPTQ / AWQ on convolutions fall back to max calibration, with a warning
            warnings.simplefilter("ignore")
            mtq.quantize(model, _config(case), _loop(arch, arch.calib()))
        path = tmp_path_factory.mktemp("saved") / f"{case.id}.safetensors"
        mto.save(model, path)
        _SAVED[case.id] = Saved(model, path, float_out, arch)
    return _SAVED[case.id]


def _params(cases: list[Case]):
    return pytest.mark.parametrize("saved", cases, ids=[c.id for c in cases], indirect=True)


# ---------------------------------------------------------------------------------------------
# Comparison


def _quantizers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (TensorQuantizer, SequentialQuantizer))}


def _same_optional(a: torch.Tensor | None, b: torch.Tensor | None, what: str) -> None:
    if a is None or b is None:
        assert a is None and b is None, f"{what}: {a} vs {b}"
        return
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{list(a.shape)} vs " \
                                                      f"{b.dtype}{list(b.shape)}"
    assert torch.equal(a, b), f"{what} differs"


def assert_same_model(ref: nn.Module, got: nn.Module, arch: Arch) -> None:
    """`got` is `ref`, bit for bit: classes, quantizers, tensors, mode history, outputs."""
    assert [(n, type(m)) for n, m in ref.named_modules()] == \
        [(n, type(m)) for n, m in got.named_modules()]
    qref, qgot = _quantizers(ref), _quantizers(got)
    assert list(qref) == list(qgot)
    assert qref, "the model has no quantizers"
    for name, q in qref.items():
        g = qgot[name]
        if isinstance(q, SequentialQuantizer):
            assert len(q) == len(g), name
            continue
        assert q.attribute_config == g.attribute_config, name
        assert q.mode == g.mode, name
        _same_optional(q.amax, g.amax, f"{name}.amax")
        # learned scales (lsq): the same pre amax and the same trainable parameters
        assert q.learnable_amax == g.learnable_amax, name
        _same_optional(q.amax_pre, g.amax_pre, f"{name}.amax_pre")
        _same_optional(q.pre_quant_scale, g.pre_quant_scale, f"{name}.pre_quant_scale")
    # the same tensors; their order may differ (a restored quantizer registers _amax before
    # _pre_quant_scale, whatever order calibration created them in)
    assert sorted(n for n, _ in ref.named_parameters()) == \
        sorted(n for n, _ in got.named_parameters())
    sref, sgot = ref.state_dict(), got.state_dict()
    assert sorted(sref) == sorted(sgot)
    for k, v in sref.items():
        _same_optional(v, sgot[k], k)
    assert mto.modelopt_state(got) == mto.modelopt_state(ref)
    x = arch.inputs()
    assert torch.equal(arch.run(ref, x), arch.run(got, x))


def _fresh(s: Saved) -> nn.Module:
    """A model of the same architecture with other random weights."""
    fresh = s.arch.build(1)
    ref = dict(s.model.named_parameters())
    name, p = next(iter(fresh.named_parameters()))
    assert not torch.equal(p, ref[name])
    return fresh


# ---------------------------------------------------------------------------------------------
# Coverage of the parametrization


def test_every_predefined_config_and_algorithm_is_covered():
    configs = {part for c in CASES for part in c.config.split("+")}
    assert configs == set(PREDEFINED) == set(mtq.config.choices)
    methods = set()
    for _, algorithm, _ in ALGORITHMS:
        methods |= {m for m, _ in _C.parse_algorithm(json.dumps(algorithm), [])}
    assert set(mtq.calibration_algorithms()) <= methods


def test_kv_cache_config_needs_attention():
    """Why FP8_KV_CFG is not run on the MLP / CNN: it enables only KV-cache quantizers, which a
    model without attention does not have, so quantize raises and leaves the model as it was."""
    for arch in ("mlp", "conv"):
        model = ARCHS[arch].build(0)
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(ValueError, match=r"\*\[kv\]_bmm_quantizer.*match no quantizer"):
            mtq.quantize(model, mtq.FP8_KV_CFG, _loop(ARCHS[arch], ARCHS[arch].calib()))
        assert not _quantizers(model) and not mto.is_converted(model)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------
# Round trips, for every case


@_params(CASES)
def test_restore_is_bit_identical(saved):
    # the case quantizes something this input sees
    assert not torch.equal(saved.arch.run(saved.model, saved.arch.inputs()), saved.float_out)
    fresh = _fresh(saved)
    assert mto.restore(fresh, saved.path) is fresh
    assert_same_model(saved.model, fresh, saved.arch)
    # the history after the restore is the one in the file
    assert mto.modelopt_state(fresh) == mto.load_modelopt_state(saved.path)
    assert [m for m, _ in mto.modelopt_state(fresh)["modelopt_state_dict"]] == ["quantize"]


@_params(CASES)
def test_restore_from_modelopt_state_and_load_state_dict(saved):
    fresh = _fresh(saved)
    state = mto.modelopt_state(saved.model)
    assert mto.restore_from_modelopt_state(fresh, state) is fresh
    fresh.load_state_dict(saved.model.state_dict())
    assert_same_model(saved.model, fresh, saved.arch)


@_params(CASES)
def test_second_save_writes_the_same_file(saved, tmp_path):
    fresh = _fresh(saved)
    mto.restore(fresh, saved.path)
    again = tmp_path / "again.safetensors"
    mto.save(fresh, again)
    t1, m1 = _C.load_safetensors(str(saved.path))
    t2, m2 = _C.load_safetensors(str(again))
    assert m1 == m2  # the state, as JSON text
    t1, t2 = dict(t1), dict(t2)  # the tensors (in the order of each model's state_dict)
    assert sorted(t1) == sorted(t2)
    for k, a in t1.items():
        _same_optional(a, t2[k], k)


@_params(CASES)
def test_save_to_and_restore_from_a_stream(saved):
    buf = io.BytesIO()
    mto.save(saved.model, buf)
    assert buf.getvalue() == saved.path.read_bytes()
    buf.seek(0)
    fresh = _fresh(saved)
    mto.restore(fresh, buf)
    assert_same_model(saved.model, fresh, saved.arch)


# ---------------------------------------------------------------------------------------------
# Histories other than one quantize


def test_unquantized_model_restores_with_an_empty_history(tmp_path):
    arch = ARCHS["mlp"]
    model = arch.build(0)
    path = tmp_path / "plain.safetensors"
    mto.save(model, path)
    assert json.loads(_C.load_safetensors_metadata(str(path))[_C.state_metadata_key()])[
        "modelopt_state_dict"] == []
    fresh = arch.build(1)
    mto.restore(fresh, path)
    assert not mto.is_converted(fresh)
    assert mto.modelopt_state(fresh)["modelopt_state_dict"] == []
    assert [type(m) for m in fresh.modules()] == [type(m) for m in model.modules()]
    assert list(model.state_dict()) == list(fresh.state_dict())
    for k, a in model.state_dict().items():
        _same_optional(a, fresh.state_dict()[k], k)
    x = arch.inputs()
    assert torch.equal(arch.run(model, x), arch.run(fresh, x))
    # an empty history is still a fresh model: it can be quantized afterwards
    mtq.quantize(fresh, mtq.INT8_DEFAULT_CFG, _loop(arch, arch.calib()))


@pytest.mark.parametrize("second", ["fp8-inputs", "NVFP4_DEFAULT_CFG"])
def test_quantize_twice_restores_identically(tmp_path, second):
    arch = ARCHS["mlp"]
    loop = _loop(arch, arch.calib())
    model = arch.build(0)
    mtq.quantize(model, mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG, loop)
    after_first = {n: q.attribute_config for n, q in _quantizers(model).items()}
    if second == "fp8-inputs":  # changes only the input quantizers, the weights stay INT4
        cfg = {"quant_cfg": {"*input_quantizer": {"num_bits": (4, 3), "axis": None}},
               "algorithm": "max"}
    else:  # replaces every quantizer
        cfg = mtq.NVFP4_DEFAULT_CFG
    mtq.quantize(model, cfg, loop)
    changed = {n for n, q in _quantizers(model).items() if q.attribute_config != after_first[n]}
    assert changed, "the second quantize changed nothing"
    path = tmp_path / "twice.safetensors"
    mto.save(model, path)
    fresh = arch.build(1)
    mto.restore(fresh, path)
    assert [m for m, _ in mto.modelopt_state(fresh)["modelopt_state_dict"]] == ["quantize",
                                                                                "quantize"]
    assert mto.modelopt_state(fresh) == mto.load_modelopt_state(path)
    assert_same_model(model, fresh, arch)


# ---------------------------------------------------------------------------------------------
# The file format: a safetensors file is recognised whatever its header length


@pytest.mark.parametrize("low_bytes", [0x80, 0x4B50])
def test_any_header_length_is_read_as_safetensors(tmp_path, low_bytes):
    """The 8-byte little-endian header length starts a safetensors file, so its first bytes can
    be anything (a multiple of 8 here): 0x80, a raw pickle's first byte, and b"PK" (0x4B50), a
    zip's, included. A file mto.save wrote must restore whatever its header length (the metadata
    is padded here to reach each value; FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG on the MLP reaches 0x80
    by itself)."""
    arch = ARCHS["mlp"]
    model = arch.build(0)
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, _loop(arch, arch.calib()))
    path = tmp_path / "model.safetensors"
    mto.save(model, path)
    tensors, metadata = _C.load_safetensors(str(path))
    modulus = 1 << (8 if low_bytes < 256 else 16)

    def header_length(pad: int) -> int:
        _C.save_safetensors(str(path), tensors, {**metadata, "pad": " " * pad})
        return int.from_bytes(path.read_bytes()[:8], "little")

    base = (low_bytes - header_length(0)) % modulus
    for pad in range(max(base - 8, 0), base + 8):
        if header_length(pad) % modulus == low_bytes:
            break
    else:
        pytest.fail(f"no padding gives a header length ending in {low_bytes:#x}")
    width = 1 if low_bytes < 256 else 2
    assert path.read_bytes()[:width] == low_bytes.to_bytes(2, "little")[:width]
    fresh = arch.build(1)
    mto.restore(fresh, path)
    assert_same_model(model, fresh, arch)
