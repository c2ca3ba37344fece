"""ModelOpt 0.47 compatibility, measured: every public name of ModelOpt's quantization and utils
modules (modelopt_0_47_inventory.json, produced by tools/modelopt_inventory.py from ModelOpt's
source) resolves in mopt at the same path, to an implementation with a compatible signature or
to a refusal that raises NotImplementedError naming what mopt lacks.

``python3 tests/python/compat/test_modelopt_inventory.py`` prints the counts and the refusals.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pathlib
import re

import pytest
import torch
from torch import nn

import mopt.quantization as mtq  # noqa: F401  (loads the package the inventory walks)

INVENTORY = json.loads(
    (pathlib.Path(__file__).with_name("modelopt_0_47_inventory.json")).read_text())


def _entries():
    for module, data in INVENTORY["modules"].items():
        for name, entry in data["names"].items():
            yield module, data["mopt"], name, entry


def _resolve(mopt_path: str, name: str):
    return getattr(importlib.import_module(mopt_path), name)


def _method_entries():
    """Methods of the classes mopt implements (a refused class refuses its methods too)."""
    for module, mopt_path, name, entry in _entries():
        if not entry.get("methods") or _refusal(getattr(
                importlib.import_module(mopt_path), name, None)) is not None:
            continue
        for meth, m in entry["methods"].items():
            yield module, mopt_path, name, meth, m


def _refusal(obj) -> str | None:
    try:
        msg = object.__getattribute__(obj, "__mopt_refused__")
    except AttributeError:
        msg = None
    if msg is None and isinstance(obj, property):
        msg = getattr(obj.fget, "__mopt_refused__", None)
    return msg


# -- signatures ------------------------------------------------------------------------------------
_PYBIND_SIG = re.compile(r"^\w+\((.*)\)(?: -> .*)?$")


def _param_names(obj) -> list[inspect.Parameter] | None:
    """The parameters of a callable (a class: its constructor, without self); pybind11
    constructors are read from their docstring; None when unknown."""
    try:
        sig = inspect.signature(obj)
        return list(sig.parameters.values())
    except (TypeError, ValueError):
        pass
    doc = (getattr(getattr(obj, "__init__", None), "__doc__", None) or "").strip()
    m = _PYBIND_SIG.match(doc.splitlines()[0]) if doc else None
    if not m:
        return None
    params = []
    keyword_only = False
    for part in re.split(r",\s*(?![^\[\(]*[\]\)])", m.group(1)):
        pname = part.split(":")[0].split("=")[0].strip()
        if pname == "*":  # the rest are keyword-only
            keyword_only = True
            continue
        if not pname or pname == "self":
            continue
        kind = (inspect.Parameter.KEYWORD_ONLY if keyword_only
                else inspect.Parameter.POSITIONAL_OR_KEYWORD)
        default = inspect.Parameter.empty if "=" not in part else None
        if pname.startswith("**"):
            kind, pname = inspect.Parameter.VAR_KEYWORD, pname[2:]
        elif pname.startswith("*"):
            kind, pname = inspect.Parameter.VAR_POSITIONAL, pname[1:]
        params.append(inspect.Parameter(pname, kind, default=default))
    return params


def signature_problems(reference: list[dict], ours: list[inspect.Parameter]) -> list[str]:
    """Empty when a call written against `reference` binds the same way to `ours`: the
    reference's positional parameters appear in the same order (at least those without
    defaults), every reference name exists (or ours takes **kwargs), and ours requires nothing
    the reference does not."""
    problems = []
    ours_named = [p for p in ours if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    ours_names = [p.name for p in ours_named]
    has_var_kw = any(p.kind == p.VAR_KEYWORD for p in ours)
    has_var_pos = any(p.kind == p.VAR_POSITIONAL for p in ours)
    ref_named = [p for p in reference if p["kind"] not in ("var_positional", "var_keyword")]
    ref_positional = [p for p in ref_named if p["kind"] != "keyword_only"]
    ours_positional = [p.name for p in ours_named
                       if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for i, p in enumerate(ref_positional):
        if i < len(ours_positional):
            if ours_positional[i] != p["name"] and ("default" not in p or p["name"] in ours_names):
                problems.append(f"positional parameter {i} is `{ours_positional[i]}`, "
                                f"ModelOpt's is `{p['name']}`")
        elif "default" not in p and not has_var_pos:
            problems.append(f"required parameter `{p['name']}` missing")
    for p in ref_named:
        if p["name"] not in ours_names and not has_var_kw and (
                p["kind"] == "keyword_only" or not has_var_pos):
            problems.append(f"parameter `{p['name']}` missing")
    ref_names = {p["name"] for p in reference}
    for p in ours_named:
        if p.default is inspect.Parameter.empty and p.name not in ref_names:
            problems.append(f"mopt requires `{p.name}`, which ModelOpt does not have")
    return problems


def _trigger(obj):
    """Uses a refused object the way a script would."""
    if isinstance(obj, type):
        return obj()
    if callable(obj) and not hasattr(type(obj), "_refuse"):
        return obj()
    return obj["x"]


# -- the walk --------------------------------------------------------------------------------------
@pytest.mark.parametrize("module,mopt_path,name,entry", list(_entries()),
                         ids=[f"{m.split('.', 2)[-1]}.{n}" for m, _, n, _ in _entries()])
def test_name_resolves(module, mopt_path, name, entry):
    obj = _resolve(mopt_path, name)  # AttributeError: the name is missing
    msg = _refusal(obj)
    if msg is not None:
        assert name in msg and "mopt does not implement" in msg, msg
        with pytest.raises(NotImplementedError, match=re.escape(name)):
            _trigger(obj)
        return
    kind = entry["kind"]
    if kind == "module":
        assert inspect.ismodule(obj)
    elif kind == "class":
        assert isinstance(obj, type) or isinstance(obj, tuple) or obj is not None
    elif kind == "autograd_function_apply":
        owner = getattr(obj, "__self__", None)
        assert isinstance(owner, type) and issubclass(owner, torch.autograd.Function), (
            f"{name} must be an autograd Function's apply, as in ModelOpt")
        params = list(inspect.signature(owner.forward).parameters.values())[1:]  # drop ctx
        assert not signature_problems(entry["signature"], params)
    elif kind == "function":
        assert callable(obj)
    if kind in ("function", "class") and entry.get("signature") is not None and callable(obj):
        params = _param_names(obj)
        if params is not None:
            problems = signature_problems(entry["signature"], params)
            assert not problems, f"{name}{entry['signature_text']}: {problems}"


@pytest.mark.parametrize("module,mopt_path,name,meth,entry", list(_method_entries()),
                         ids=[f"{n}.{m}" for _, _, n, m, _ in _method_entries()])
def test_method_resolves(module, mopt_path, name, meth, entry):
    cls = _resolve(mopt_path, name)
    assert hasattr(cls, meth), f"{name}.{meth} is missing"
    attr = inspect.getattr_static(cls, meth)
    msg = _refusal(attr)
    if msg is not None:
        assert meth in msg, msg
        return
    if entry["kind"] in ("method", "staticmethod", "classmethod") and entry.get("signature"):
        fn = getattr(cls, meth)
        params = _param_names(fn)
        if params is None:
            return
        if entry["kind"] == "method" and params and params[0].name == "self":
            params = params[1:]
        problems = signature_problems(entry["signature"], params)
        assert not problems, f"{name}.{meth}{entry['signature_text']}: {problems}"


def test_inventory_covers_the_brief():
    names = {n for _, _, n, _ in _entries()}
    for n in ("QuantLinear", "Conv2d", "QuantMaxPool2d", "QuantInstanceNorm1d",
              "QUANT_DESC_8BIT_PER_TENSOR", "fake_tensor_quant", "scaled_e4m3",
              "replace_quant_module", "reduce_amax", "enable_fake_quant", "unwrap_model"):
        assert n in names
    assert "reset_amax" in INVENTORY["modules"]["modelopt.torch.quantization.nn"]["names"][
        "SequentialQuantizer"]["methods"]


# -- behaviour of the names a new user met first ---------------------------------------------------
def test_quant_linear_constructed_directly_quantizes():
    tq = mtq.tensor_quant
    layer = mtq.nn.QuantLinear(16, 8, quant_desc_input=tq.QUANT_DESC_8BIT_PER_TENSOR,
                               quant_desc_weight=tq.QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW)
    assert isinstance(layer, nn.Linear)
    assert layer.weight_quantizer.axis == 0 and layer.input_quantizer.axis is None
    x = torch.randn(4, 16)
    y = layer(x)
    wq = torch.ops.mopt.fake_quant_int(layer.weight, layer.weight.abs().amax(1, keepdim=True),
                                       8, False, False, False)
    xq = torch.ops.mopt.fake_quant_int(x, x.abs().amax(), 8, False, False, False)
    torch.testing.assert_close(y, torch.nn.functional.linear(xq, wq, layer.bias))
    assert not torch.allclose(y, torch.nn.functional.linear(x, layer.weight, layer.bias))
    # default descriptors, and a 4-bit one given as a dict
    assert mtq.nn.QuantLinear(4, 4).weight_quantizer.num_bits == 8
    assert mtq.nn.Linear(4, 4, quant_desc_weight={"num_bits": 4}).weight_quantizer.num_bits == 4


@pytest.mark.parametrize("cls,args,shape", [
    ("QuantConv1d", (2, 3, 3), (1, 2, 8)), ("QuantConv2d", (2, 3, 3), (1, 2, 8, 8)),
    ("QuantConv3d", (2, 3, 3), (1, 2, 5, 5, 5)), ("QuantConvTranspose1d", (2, 3, 3), (1, 2, 8)),
    ("QuantConvTranspose2d", (2, 3, 3), (1, 2, 6, 6)),
    ("QuantConvTranspose3d", (2, 3, 3), (1, 2, 4, 4, 4)),
    ("Conv2d", (2, 3, 3), (1, 2, 8, 8)),
])
def test_conv_constructed_directly(cls, args, shape):
    desc = mtq.tensor_quant.QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR
    m = getattr(mtq.nn, cls)(*args, quant_desc_input=desc)
    assert m.input_quantizer.unsigned and m.weight_quantizer.is_enabled
    out = m(torch.rand(shape))
    float_cls = next(c for c in type(m).__mro__ if c.__module__.startswith("torch.nn"))
    ref = float_cls(*args)
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if "quantizer" not in k})
    assert out.shape == ref(torch.rand(shape)).shape


@pytest.mark.parametrize("name,args,shape", [
    ("QuantMaxPool2d", (2,), (1, 2, 4, 4)), ("MaxPool1d", (2,), (1, 2, 4)),
    ("QuantAvgPool3d", (2,), (1, 1, 4, 4, 4)), ("AdaptiveAvgPool2d", (1,), (1, 2, 4, 4)),
    ("QuantInstanceNorm2d", (2,), (1, 2, 4, 4)),
])
def test_pooling_and_instance_norm(name, args, shape):
    m = getattr(mtq.nn, name)(*args, quant_desc_input=mtq.tensor_quant.QUANT_DESC_8BIT_PER_TENSOR)
    x = torch.randn(shape)
    xq = torch.ops.mopt.fake_quant_int(x, x.abs().amax(), 8, False, False, False)
    float_cls = next(c for c in type(m).__mro__ if c.__module__.startswith("torch.nn"))
    torch.testing.assert_close(m(x), float_cls(*args)(xq))


def test_quant_desc_constants():
    tq = mtq.tensor_quant
    assert tq.QUANT_DESC_8BIT_PER_TENSOR.num_bits == 8 and tq.QUANT_DESC_8BIT_PER_TENSOR.axis is None
    assert tq.QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR.unsigned
    assert tq.QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL.axis == 0
    assert mtq.nn.QUANT_DESC_8BIT_PER_TENSOR is tq.QUANT_DESC_8BIT_PER_TENSOR


def test_function_objects_bind_like_modelopt():
    tq = mtq.tensor_quant

    class Holder:
        quant = tq.fake_tensor_quant
        fp8 = tq.scaled_e4m3

    x = torch.randn(8, 8)
    amax = x.abs().amax()
    h = Holder()
    # an autograd Function's apply does not bind self: the call takes the tensor first
    torch.testing.assert_close(h.quant(x, amax), torch.ops.mopt.fake_quant_int(
        x, amax, 8, False, True, False))
    torch.testing.assert_close(h.fp8(x, amax, None, 4, 3),
                               torch.ops.mopt.fake_quant_fp(x, amax, 4, 3, False))
    # gradient: the op's clipped straight-through estimator
    xg = (torch.randn(16) * 2).requires_grad_()
    tq.fake_tensor_quant(xg, torch.tensor(1.0)).sum().backward()
    torch.testing.assert_close(xg.grad, (xg.detach().abs() <= 1.0).float())
    xi = torch.tensor([-200.0, -3.4, 0.5, 1.5, 2.5, 300.0], requires_grad=True)
    out = tq.int_cast_ste(xi, 8)
    torch.testing.assert_close(out.detach(), torch.tensor([-127.0, -3.0, 0.0, 2.0, 2.0, 127.0]))


@pytest.mark.parametrize("axis,keepdims", [(None, True), (0, True), (1, False), ((0, 2), True),
                                           (-1, False)])
def test_reduce_amax_equals_torch(axis, keepdims):
    x = torch.randn(4, 5, 6)
    got = mtq.utils.reduce_amax(x, axis=axis, keepdims=keepdims)
    if axis is None:
        ref = x.abs().max()
    else:
        ref = x.abs().amax(dim=axis, keepdim=keepdims)
    assert got.shape == ref.shape and got.dtype == x.dtype
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_enable_fake_quant_and_mode_contexts():
    model = nn.Sequential(nn.Linear(4, 4))
    mtq.replace_quant_module(model)
    wq = model[0].weight_quantizer
    with mtq.utils.enable_fake_quant(model):
        assert wq.fake_quant
    wq.disable_quant()
    with mtq.utils.enable_quant(wq):
        assert wq.is_quant_enabled
    assert not wq.is_quant_enabled


def test_replace_quant_module_prints(capsys):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Conv2d(1, 1, 1))
    mtq.replace_quant_module(model)
    assert "Inserted 6 quantizers" in capsys.readouterr().out
    assert isinstance(model[0], mtq.nn.QuantLinear)
    with pytest.raises(ValueError):
        mtq.replace_quant_module(model)


def test_sequential_quantizer_reset_amax():
    sq = mtq.nn.SequentialQuantizer(mtq.nn.TensorQuantizer(), mtq.nn.TensorQuantizer())
    for q in sq:
        q.amax = torch.tensor(2.0)
    assert sq.amax == 2.0
    sq.reset_amax()
    assert all(q.amax is None for q in sq)


def test_unwrap_model():
    import mopt.utils as mu

    model = nn.Linear(2, 2)
    assert mu.unwrap_model(nn.DataParallel(model)) is model
    assert mu.unwrap_model(model) is model
    with pytest.raises(ValueError, match="wrapped"):
        mu.unwrap_model(nn.DataParallel(model), raise_error=True)
    with pytest.warns(UserWarning):
        mu.unwrap_model(nn.DataParallel(model), warn=True)
    # DDP: the wrapper type is what matters; build one without a process group
    ddp = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(ddp)
    ddp.module = model
    assert mu.unwrap_model(ddp) is model
    assert mu.get_unwrapped_name("module.0.weight", nn.DataParallel(model)) == "0.weight"


def test_refusal_names_what_is_missing():
    with pytest.raises(NotImplementedError, match="AutoQuantize"):
        mtq.auto_quantize(nn.Linear(2, 2))
    with pytest.raises(NotImplementedError, match="RNN"):
        mtq.nn.QuantRNNBase()
    # refused constants print, and fail when used
    assert "refused" in repr(mtq.config.NVFP4_KV_CFG)
    with pytest.raises(NotImplementedError, match="NVFP4_KV_CFG"):
        mtq.config.NVFP4_KV_CFG["quant_cfg"]


def report() -> dict:
    """Counts of inventoried, implemented and refused names (and methods)."""
    out = {"names": 0, "implemented": 0, "refused": {}, "methods": 0, "methods_refused": {}}
    for _, mopt_path, name, _ in _entries():
        out["names"] += 1
        msg = _refusal(_resolve(mopt_path, name))
        if msg is None:
            out["implemented"] += 1
        else:
            out["refused"][f"{mopt_path}.{name}"] = msg
    for _, mopt_path, name, meth, _ in _method_entries():
        cls = _resolve(mopt_path, name)
        out["methods"] += 1
        msg = _refusal(inspect.getattr_static(cls, meth, None))
        if msg is not None:
            out["methods_refused"][f"{name}.{meth}"] = msg
    return out


if __name__ == "__main__":
    r = report()
    print(f"{r['names']} names: {r['implemented']} implemented, {len(r['refused'])} refused; "
          f"{r['methods']} methods of implemented classes, {len(r['methods_refused'])} refused")
    for k, v in sorted({**r["refused"], **r["methods_refused"]}.items()):
        print(f"  {k}: {v.split(': ', 1)[1]}")
