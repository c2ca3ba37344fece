"""ONNX export with QuantizeLinear / DequantizeLinear nodes (TensorRT, onnxruntime).

``export_onnx(model, args, path)`` writes a fake-quantized model as an ONNX graph in which every
enabled TensorQuantizer that the forward runs becomes ``QuantizeLinear -> DequantizeLinear`` with
the quantizer's own step (``amax / maxbound``, both from the C++ core) and zero point, the graph
ModelOpt's ONNX export gives TensorRT. How:

1. Every enabled quantizer is checked (calibrated, static, a format ONNX has) before anything
   runs; one eager forward on `args` records the shape each quantizer sees, which fixes the
   ONNX ``axis`` / ``block_size`` of its kept amax axes (``TensorQuantizer.kept_axes``).
2. Inside the export only, each quantizer's forward becomes one call of the marker operator
   ``mopt_onnx::qdq`` whose eager and fake kernels are the quantizer's own C++ op
   (``torch.ops.mopt.quantize_tensor``: the traced numbers are mopt's) and whose translation
   (``custom_translation_table`` of the dynamo-based ``torch.onnx.export``) is the Q/DQ pair.
   The step and zero point are temporary buffers of the quantizer, so they become initializers
   named ``<quantizer>._onnx_scale`` / ``<quantizer>._onnx_zero_point``.
3. Weights (``fold_weights=True``, the default): a QuantizeLinear whose input is an initializer
   is evaluated once by ONNX's reference implementation of the operator and replaced by its
   int8 / int4 / fp8 codes, so the file holds quantized weights and only DequantizeLinear
   (about 4x / 8x smaller for INT8 / INT4; onnxruntime and TensorRT run it). With
   ``fold_weights=False`` the float weights stay, each behind Q/DQ, as ModelOpt writes them.

Formats: INT8 (signed or unsigned, per tensor, per channel, asymmetric with an int8 zero
point), FP8 E4M3 / E5M2 per tensor or channel (opset >= 19), INT4 / UINT4 blocks along one axis
(opset 21). Anything else raises ExportError naming the quantizer and its format: dynamic
(per-token or dynamic-block) quantizers, NVFP4 / MX / NF4 (two-level block scales), 2-D blocks,
more than one kept axis, other bit widths, learned scales with separate pre and post amax, and
SequentialQuantizer chains.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from .files import ExportError, atomic_file, check_output_file

__all__ = ["export_onnx", "DEFAULT_OPSET", "OnnxQuantizerPlan", "plan_quantizers",
           "onnxruntime_session"]

# Opset 21 is the first with int4 and blocked QuantizeLinear / DequantizeLinear.
DEFAULT_OPSET = 21
_MIN_OPSET = {"fp8": 19, "int4": 21, "block": 21}

# ONNX element types of the codes (onnx.TensorProto values, named to keep onnx lazy).
_ONNX_TYPE = {"int8": 3, "uint8": 2, "int4": 22, "uint4": 21, "float8e4m3fn": 17,
              "float8e5m2": 19}
# The zero point's torch dtype where torch has one; 4-bit zero points travel as int8 and are
# cast in the graph.
_TORCH_ZP_DTYPE = {"int8": torch.int8, "uint8": torch.uint8, "int4": torch.int8,
                   "uint4": torch.uint8, "float8e4m3fn": torch.float8_e4m3fn,
                   "float8e5m2": torch.float8_e5m2}


@dataclass
class OnnxQuantizerPlan:
    """How one quantizer becomes Q/DQ: the step (scale) and zero point tensors and attributes."""

    name: str
    qtype: str  # a key of _ONNX_TYPE
    scale: torch.Tensor  # float32: scalar, [C] per channel, or the input's rank for blocks
    zero_point: torch.Tensor  # in _TORCH_ZP_DTYPE[qtype], the shape of scale
    axis: int
    block_size: int
    calls: int  # how many times the recorded forward ran the quantizer


def _format_name(q: Any) -> str:
    try:
        return str(q.format.get("name", "?"))
    except Exception:  # noqa: BLE001 - a name for a message only
        return "?"


def _fail(name: str, q: Any, why: str) -> ExportError:
    return ExportError(f"ONNX export: quantizer '{name}' (format {_format_name(q)}, "
                       f"num_bits={q.num_bits}, block_sizes={q.block_sizes}): {why}")


def _enabled_quantizers(model: nn.Module) -> list[tuple[str, Any]]:
    from ..quantization.nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer

    found, enabled = 0, []
    for name, m in model.named_modules():
        if isinstance(m, SequentialQuantizer):
            if m.is_enabled:
                raise ExportError(
                    f"ONNX export: '{name}' is a SequentialQuantizer (two quantizations in a "
                    "row, e.g. W4A8's INT4 then FP8); ONNX has no chained Q/DQ with two-level "
                    "scales that onnxruntime runs")
            continue
        if isinstance(m, TensorQuantizer):
            found += 1
            if m.is_enabled and m.is_quant_enabled:
                enabled.append((name, m))
    if not found:
        raise ExportError("ONNX export: the model has no TensorQuantizer; quantize it first "
                          "(mtq.quantize) or export the float model with torch.onnx.export")
    if not enabled:
        raise ExportError(f"ONNX export: all {found} TensorQuantizers of the model are disabled; "
                          "nothing would be quantized")
    return enabled


def _qtype(name: str, q: Any) -> str:
    """The ONNX element type of `q`'s codes, or ExportError."""
    fmt = q.format
    if fmt.get("kernel") != "fake_quant":
        raise _fail(name, q, "two-level block scales (NVFP4, MX, NF4) have no ONNX "
                    "QuantizeLinear form that onnxruntime runs")
    if fmt.get("dynamic") or not q.is_static:
        raise _fail(name, q, "dynamic quantization (a scale computed from each input, e.g. "
                    "per token) has no static ONNX Q/DQ form; calibrate a static amax instead")
    bits = q.num_bits
    if isinstance(bits, (tuple, list)):
        kind = {(4, 3): "float8e4m3fn", (5, 2): "float8e5m2"}.get(tuple(bits))
        if kind is None:
            raise _fail(name, q, f"minifloat E{bits[0]}M{bits[1]} has no ONNX type onnxruntime "
                        "quantizes to (E4M3 and E5M2 do)")
        if q.asymmetric:
            raise _fail(name, q, "asymmetric FP8 does not exist in ONNX")
        return kind
    if bits not in (4, 8):
        raise _fail(name, q, f"{bits}-bit integers have no ONNX type (8 and 4 do)")
    if q.unsigned and q.asymmetric:
        raise _fail(name, q, "unsigned and asymmetric at once has no ONNX form here")
    return ("u" if q.unsigned else "") + f"int{bits}"


def _check(name: str, q: Any, opset: int) -> str:
    """Everything that can be checked without running the model; returns the element type."""
    kind = _qtype(name, q)
    if q.amax is None:
        raise _fail(name, q, "static quantizer without amax (never calibrated); run "
                    "mtq.calibrate / mtq.quantize with a forward_loop first")
    if q._lsq is not None and not q._lsq[2]:
        pre, post = q.amax_pre, q.amax_post
        if not torch.equal(pre, post):
            raise _fail(name, q, "learned scales with separate quantization and dequantization "
                        "amax (untied LSQ); a Q/DQ pair has one scale")
    if kind.startswith("float8") and opset < _MIN_OPSET["fp8"]:
        raise _fail(name, q, f"FP8 QuantizeLinear needs opset >= 19, asked for {opset}")
    if kind.endswith("int4") and opset < _MIN_OPSET["int4"]:
        raise _fail(name, q, f"INT4 QuantizeLinear needs opset >= 21, asked for {opset}")
    bs = q.block_sizes
    if bs is not None:
        if bs.get("scale_bits") is not None:
            raise _fail(name, q, "quantized block scales have no ONNX form")
        if opset < _MIN_OPSET["block"]:
            raise _fail(name, q, f"blocked QuantizeLinear needs opset >= 21, asked for {opset}")
    # narrow_range needs no check: ONNX saturates to the full range, which differs only for
    # inputs below -amax (by one step), as in ModelOpt's export
    return kind


def _step(q: Any, amax: torch.Tensor) -> torch.Tensor:
    """amax / maxbound (the C++ core's maxbound); 1 where the amax is zero, as ModelOpt does
    (ONNX scales must be positive; an all-zero weight row quantizes to 0 either way)."""
    step = amax.detach().float() / float(q.maxbound)
    return torch.where(step > 0, step, torch.ones_like(step))


def _block_layout(name: str, q: Any, t: torch.Tensor, axis: int, want: list[int]) -> torch.Tensor:
    """A tensor in the block view's amax layout [.., nblocks, 1, ..] (leading 1s may be dropped)
    as ONNX's blocked scale: the input's rank, nblocks along `axis`, the reduced axes broadcast
    to the input's sizes."""
    view_ndim = len(want) + 1
    try:
        t = t.reshape((1,) * (view_ndim - t.dim()) + tuple(t.shape)).squeeze(axis + 1)
        return t.expand(want).contiguous()
    except RuntimeError as e:
        raise _fail(name, q, f"amax of shape {tuple(q.amax.shape)} does not fit the blocks of "
                    f"{want[axis]} along axis {axis} of the input: {e}") from None


def _plan(name: str, q: Any, kind: str, shape: torch.Size, calls: int) -> OnnxQuantizerPlan:
    ndim = len(shape)
    amax = q.amax.detach().float()
    zp = q.zero_point
    zp = None if zp is None else zp.detach().float()
    bs = q.block_sizes
    keep = q.kept_axes(ndim)
    if bs is None:
        if amax.numel() == 1:
            scale, axis = _step(q, amax).reshape(()), 0
            zp = None if zp is None else zp.reshape(())
        elif len(keep) == 1:
            axis = keep[0]
            if amax.numel() != shape[axis]:
                raise _fail(name, q, f"amax of shape {tuple(amax.shape)} does not fit the "
                            f"input of shape {tuple(shape)} at axis {axis}")
            scale = _step(q, amax).reshape(-1)
            zp = None if zp is None else zp.reshape(-1)
        else:
            raise _fail(name, q, f"amax kept along axes {keep} of the input; ONNX Q/DQ scales "
                        "have one axis")
        block = 0
    else:
        blocked = [(int(a) % ndim, int(b)) for a, b in bs.items()
                   if isinstance(a, int) and b not in (None, 0)]
        if len(blocked) != 1:
            raise _fail(name, q, "blocks along more than one axis (2-D blocks) have no ONNX "
                        "form; ONNX blocks run along one axis")
        axis, block = blocked[0]
        block = min(block, shape[axis])
        nblocks = -(-shape[axis] // block)
        # amax in the block view [.., nblocks, 1, ..] (leading 1s may be dropped): drop the
        # block-contents axis, then broadcast the reduced axes to the input's sizes.
        want = list(shape)
        want[axis] = nblocks
        full = _block_layout(name, q, amax, axis, want)
        if zp is not None:
            zp = _block_layout(name, q, zp, axis, want)
        scale = _step(q, full)
    if zp is None:
        zp = torch.zeros_like(scale)
    return OnnxQuantizerPlan(name, kind, scale.contiguous(),
                             zp.to(_TORCH_ZP_DTYPE[kind]).contiguous(), axis, block, calls)


def plan_quantizers(model: nn.Module, args: tuple, kwargs: dict | None = None,
                    opset: int = DEFAULT_OPSET) -> dict[str, OnnxQuantizerPlan]:
    """Checks every enabled quantizer and records, with one eager forward on `args`, what Q/DQ
    each becomes (ExportError for what ONNX cannot express). Quantizers the forward does not
    run are left out."""
    enabled = _enabled_quantizers(model)
    kinds = {name: _check(name, q, opset) for name, q in enabled}
    seen: dict[str, list] = {}
    hooks = []
    for name, q in enabled:
        def record(module, inputs, _name=name):
            entry = seen.setdefault(_name, [None, 0])
            entry[0] = inputs[0].shape
            entry[1] += 1
        hooks.append(q.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            model(*args, **(kwargs or {}))
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise ExportError("ONNX export: the forward on the example inputs ran none of the "
                          f"{len(enabled)} enabled quantizers")
    return {name: _plan(name, q, kinds[name], seen[name][0], seen[name][1])
            for name, q in enabled if name in seen}


# -- the marker operator ---------------------------------------------------------------------------
@torch.library.custom_op("mopt_onnx::qdq", mutates_args=())
def _qdq(x: torch.Tensor, amax: torch.Tensor, zero_point: torch.Tensor | None, cfg: str,
         scale: torch.Tensor, onnx_zero_point: torch.Tensor, axis: int, block_size: int,
         qtype: str) -> torch.Tensor:
    """The quantizer's fake quantization (mopt's C++ op) that ONNX export turns into Q/DQ."""
    return torch.ops.mopt.quantize_tensor(x, amax, None, cfg, zero_point)


@_qdq.register_fake
def _qdq_fake(x, amax, zero_point, cfg, scale, onnx_zero_point, axis, block_size, qtype):
    return torch.empty_like(x)


def _qdq_onnx(x, amax, zero_point, cfg: str, scale, onnx_zero_point, axis: int,
              block_size: int, qtype: str):
    """QuantizeLinear -> DequantizeLinear with the plan's step and zero point (onnxscript)."""
    from onnxscript import opset21 as op

    zp = onnx_zero_point
    if qtype.endswith("int4"):  # torch has no 4-bit dtype: the zero point is cast here
        zp = op.Cast(zp, to=_ONNX_TYPE[qtype])
    kw = {"axis": axis}
    if block_size:
        kw["block_size"] = block_size
    q = op.QuantizeLinear(x, scale, zp, **kw)
    del amax, zero_point, cfg  # mopt's own inputs, for the eager and fake kernels only
    return op.DequantizeLinear(q, scale, zp, **kw)


@contextlib.contextmanager
def _export_mode(model: nn.Module, plans: dict[str, OnnxQuantizerPlan]) -> Iterator[None]:
    """Inside: each planned quantizer runs the marker op with its plan's tensors as buffers.
    On exit the quantizers are as before (buffers and forward removed)."""
    patched = []
    try:
        for name, plan in plans.items():
            q = model.get_submodule(name)
            q.register_buffer("_onnx_scale", plan.scale.to(q.amax.device))
            q.register_buffer("_onnx_zero_point", plan.zero_point.to(q.amax.device))
            patched.append(q)
            q.__dict__["forward"] = _marker_forward(q, plan)
        yield
    finally:
        for q in patched:
            q.__dict__.pop("forward", None)
            q._buffers.pop("_onnx_scale", None)
            q._buffers.pop("_onnx_zero_point", None)


def _marker_forward(q: Any, plan: OnnxQuantizerPlan):
    cfg = q._core.attributes_json

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        pqs = q.pre_quant_scale
        x = inputs if pqs is None else inputs * pqs.to(inputs.dtype)
        amax = q.amax_pre
        scale = q._onnx_scale.to(x.dtype)  # no node for float32 models
        return torch.ops.mopt_onnx.qdq(x, amax, q.zero_point, cfg, scale,
                                       q._onnx_zero_point, plan.axis, plan.block_size,
                                       plan.qtype)
    return forward


# -- weight folding --------------------------------------------------------------------------------
def _optimize_keeping_qdq(model: Any) -> None:
    """onnxscript's optimization of torch.onnx.export (inline, fold constants, rewrite, remove
    unused, lift constants) without its merging of equal initializers: two quantizers with equal
    scales on one tensor (a query, key and value input quantizer) would otherwise share one Q/DQ
    pair, and a scale could no longer be told apart by its quantizer's name."""
    import onnx_ir.passes.common as common
    from onnxscript import optimizer, rewriter

    common.InlinePass()(model)
    for _ in range(2):
        optimizer.fold_constants(model)
        rewriter.rewrite(model)
        common.RemoveUnusedNodesPass()(model)
    for p in (common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass(),
              common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
              common.LiftSubgraphInitializersToMainGraphPass(),
              common.CommonSubexpressionEliminationPass(), common.OutputFixPass(),
              common.NameFixPass()):
        p(model)


def strip_default_attributes(model_proto: Any) -> None:
    """Drops the attributes the translation spells out at their defaults from Q/DQ nodes
    (``output_dtype=0``, ``block_size=0``, ``saturate=1``): onnxruntime's int8-to-uint8 rewrite
    copies an explicit ``output_dtype`` onto nodes whose zero point it changed, and then rejects
    its own graph."""
    defaults = {"output_dtype": 0, "block_size": 0, "saturate": 1}
    for node in model_proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        keep = [a for a in node.attribute if not (a.name in defaults and a.type == a.INT
                                                   and a.i == defaults[a.name])]
        del node.attribute[:]
        node.attribute.extend(keep)


def fold_weight_quantize(model_proto: Any) -> int:
    """Replaces each QuantizeLinear whose inputs are all initializers by an initializer of its
    codes (computed by ONNX's reference implementation of the operator); drops float weights
    nothing else reads. Returns how many were folded."""
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model_proto.graph
    inits = {t.name: t for t in graph.initializer}
    opset = next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")),
                 DEFAULT_OPSET)
    folded, keep_nodes, renamed = 0, [], {}
    for node in graph.node:
        if (node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx")
                or not all(i in inits for i in node.input if i)):
            keep_nodes.append(node)
            continue
        feeds = {i: numpy_helper.to_array(inits[i]) for i in node.input if i}
        single = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node], "fold",
                [onnx.helper.make_tensor_value_info(i, inits[i].data_type, list(inits[i].dims))
                 for i in feeds],
                [onnx.helper.make_tensor_value_info(node.output[0], 0, None)]),
            opset_imports=[onnx.helper.make_opsetid("", opset)])
        codes = ReferenceEvaluator(single).run(None, feeds)[0]
        name = node.input[0] + "_quantized"  # e.g. "fc.weight_quantized"
        while name in inits:
            name += "_"
        tensor = numpy_helper.from_array(codes, name)
        graph.initializer.append(tensor)
        inits[name] = tensor
        renamed[node.output[0]] = name
        folded += 1
    if folded:
        for n in keep_nodes:
            for k, i in enumerate(n.input):
                if i in renamed:
                    n.input[k] = renamed[i]
        del graph.node[:]
        graph.node.extend(keep_nodes)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        alive = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(alive)
    return folded


# -- the entry point -------------------------------------------------------------------------------
def export_onnx(model: nn.Module, args: tuple | torch.Tensor, path: str | os.PathLike, *,
                opset: int | None = None, fold_weights: bool = True,
                kwargs: dict | None = None, verbose: bool = False, **kw) -> dict:
    """Writes `model` (fake-quantized with mtq.quantize) to the ONNX file `path` with a
    QuantizeLinear -> DequantizeLinear pair per enabled quantizer run by `model(*args)`.

    `args` (and `kwargs`): example inputs as for torch.onnx.export; `opset`: ONNX opset
    (default 21, the first with int4 and blocks); `fold_weights`: store weights as quantized
    codes + DequantizeLinear (default) rather than float + Q/DQ; other keywords go to
    ``torch.onnx.export(..., dynamo=True)`` (e.g. ``input_names``, ``dynamic_shapes``).
    Raises ExportError (nothing written, model unchanged) for what ONNX cannot express, and
    FileExistsError when `path` exists. Returns a summary (path, bytes, opset, Q/DQ per
    quantizer, quantizers whose output the graph does not use, folded weights, seconds)."""
    start = time.perf_counter()
    check_output_file(path)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not isinstance(args, tuple):
        args = (args,)
    was_training = model.training
    model.eval()
    try:
        plans = plan_quantizers(model, args, kwargs, opset)
        with _export_mode(model, plans), torch.no_grad():
            program = torch.onnx.export(
                model, args, kwargs=kwargs, dynamo=True, opset_version=opset,
                custom_translation_table={torch.ops.mopt_onnx.qdq.default: _qdq_onnx},
                optimize=False, verbose=verbose, report=False, **kw)
    finally:
        model.train(was_training)
    _optimize_keeping_qdq(program.model)
    proto = program.model_proto
    strip_default_attributes(proto)
    folded = fold_weight_quantize(proto) if fold_weights else 0
    if proto.ByteSize() >= 2**31:
        raise ExportError(f"ONNX export: the graph is {proto.ByteSize() / 2**30:.1f} GiB, over "
                          "protobuf's 2 GiB limit of one .onnx file; external weight files are "
                          "not written by export_onnx")
    import onnx

    with atomic_file(path) as tmp:
        onnx.save(proto, str(tmp))
        size = os.path.getsize(tmp)
    # a quantizer whose output the model computes but does not return (BERT's pooler under a
    # mean-pooling head) is dead code the optimizer removed with its Q/DQ
    in_graph = {i for n in proto.graph.node if n.op_type == "DequantizeLinear" for i in n.input}
    return {
        "path": str(path), "bytes": size, "opset": opset, "folded_weights": folded,
        "quantizers": {n: {"type": p.qtype, "axis": p.axis, "block_size": p.block_size,
                           "calls": p.calls} for n, p in plans.items()
                       if f"{n}._onnx_scale" in in_graph},
        "unused_quantizers": sorted(n for n in plans if f"{n}._onnx_scale" not in in_graph),
        "seconds": time.perf_counter() - start,
    }


# onnxruntime 1.32 graph rewrites that break valid Q/DQ graphs on CPU: the int8 -> uint8 rewrite
# leaves a QuantizeLinear whose output_dtype (int8) contradicts its new uint8 zero point (the
# session fails to load MiniLM), and one of the extended-level fusions gives wrong outputs for
# FP8 Q/DQ after Conv + ReLU (the digits CNN's logits move by 3; the basic level is exact).
ORT_DISABLED_OPTIMIZERS = ("QDQS8ToU8Transformer",)


def onnxruntime_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for an exported graph: ORT_DISABLED_OPTIMIZERS off, and only
    the basic graph optimizations for graphs with FP8 Q/DQ."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path), load_external_data=False)
    fp8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2}
    options = ort.SessionOptions()
    if any(t.data_type in fp8 for t in proto.graph.initializer):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))
