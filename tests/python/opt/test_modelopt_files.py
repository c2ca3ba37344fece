"""Reading files written by nvidia-modelopt (mto.save, torch.save(mto.modelopt_state(model))).

The files come from modelopt_writer.py, run once per session in a subprocess (conftest.py):
ModelOpt is never imported here. The first part tests mopt.opt.modelopt_files (the loader with
its allow-list, to_plain, split_modelopt_checkpoint) on those files and on hostile and broken
ones; the second restores them with mopt.opt (mto.restore, mto.restore_from_modelopt_state) and
compares mopt's output with ModelOpt's.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
import pickle
import re
import shutil
import zipfile

import pytest
import torch
from torch import nn

from mopt.opt import modelopt_files as mf

from .conftest import ALL_CONFIGS, OUTPUT_CONFIGS, STATE_ONLY_CONFIGS

# ModelOpt keeps these tensors in the mode metadata (calibration statistics of the SmoothQuant and
# AWQ searches), so their states need to_plain(..., tensors={}).
METADATA_TENSORS = {"_amax_for_smoothing"}


def _load_io(files, stem):
    return torch.load(files.io(stem), map_location="cpu", weights_only=True)


def _torch_defaults() -> set[str]:
    from torch._weights_only_unpickler import _get_allowed_globals
    return set(_get_allowed_globals())


def _data_pkl(path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


# ---------------------------------------------------------------------------------------------
# The files ModelOpt writes load within the allow-list.


@pytest.mark.parametrize("stem", ALL_CONFIGS)
@pytest.mark.parametrize("kind", ["full", "state", "weights", "io"])
def test_every_modelopt_file_loads_within_the_allow_list(modelopt_files, stem, kind):
    path = getattr(modelopt_files, kind)(stem)
    allowed = _torch_defaults() | {mf._global_name(g) for g in mf.ALLOWED_GLOBALS}
    beyond = set(mf._pickle_globals(_data_pkl(path))) - allowed
    assert not beyond, f"{path.name} needs {sorted(beyond)} beyond the allow-list"
    obj = mf.load_pickled_checkpoint(path)
    assert isinstance(obj, dict)


def test_each_allowed_global_is_needed(modelopt_files):
    """ALLOWED_GLOBALS is minimal: each entry occurs in some file ModelOpt wrote (slice only in
    the padded block quantizers' states), and such a file fails without the allow-list."""
    used: dict[str, list[str]] = {}
    for stem in ALL_CONFIGS:
        for kind in ("full", "state"):
            path = getattr(modelopt_files, kind)(stem)
            for name in mf._pickle_globals(_data_pkl(path)):
                used.setdefault(name, []).append(path.name)
    for g in mf.ALLOWED_GLOBALS:
        assert mf._global_name(g) in used, f"{g} is allowed but no ModelOpt file holds it"
    assert not any("-pad" not in f for f in used["builtins.slice"])
    # torch's weights_only defaults alone refuse it (nothing else in this process allows slice).
    assert slice not in torch.serialization.get_safe_globals()
    with pytest.raises(pickle.UnpicklingError, match="slice"):
        torch.load(modelopt_files.state("INT4_AWQ_CFG-pad"), weights_only=True)


def test_the_pickle_scan_agrees_with_torch(modelopt_files):
    """mopt's static scan of a pickle's globals finds what torch's own scanner finds."""
    from torch._weights_only_unpickler import get_globals_in_pkl
    for stem in ("INT8_DEFAULT_CFG", "W4A8_AWQ_BETA_CFG", "INT4_AWQ_CFG-pad"):
        data = _data_pkl(modelopt_files.full(stem))
        assert set(mf._pickle_globals(data)) == get_globals_in_pkl(io.BytesIO(data))


# ---------------------------------------------------------------------------------------------
# to_plain and split_modelopt_checkpoint on the real files.


def _metadata_tensor_paths(state_plain) -> list[str]:
    found = []

    def walk(o):
        if isinstance(o, dict):
            if set(o) == {"__tensor__"}:
                found.append(o["__tensor__"])
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(state_plain)
    return found


@pytest.mark.parametrize("stem", ALL_CONFIGS)
def test_split_both_layouts(modelopt_files, stem):
    full = mf.load_pickled_checkpoint(modelopt_files.full(stem))
    bare = mf.load_pickled_checkpoint(modelopt_files.state(stem))
    weights = mf.load_pickled_checkpoint(modelopt_files.weights(stem))

    t_full: dict = {}
    state, sd = mf.split_modelopt_checkpoint(full, modelopt_files.full(stem), tensors=t_full)
    t_bare: dict = {}
    state2, sd2 = mf.split_modelopt_checkpoint(bare, modelopt_files.state(stem), tensors=t_bare)

    # The state is JSON, and the two layouts hold the same state.
    text = json.dumps(state, allow_nan=False)
    assert json.loads(text) == state
    # (tensor markers name the key path in the file: under "modelopt_state." in a full checkpoint)
    assert json.loads(text.replace('{"__tensor__": "modelopt_state.', '{"__tensor__": "')) == state2
    assert sd2 is None

    # The full checkpoint's state dict is the model's tensors, as torch.save(model.state_dict()).
    assert isinstance(sd, dict) and sd.keys() == weights.keys()
    for k in sd:
        assert torch.equal(sd[k], weights[k]), k

    # The schema: a version string and (mode name, {"config", "metadata"}) pairs.
    assert state["modelopt_version"] == "0.47.0"
    modes = state["modelopt_state_dict"]
    assert modes[0][0] == "quantize" and len(modes) == 2
    for mode, mstate in modes:
        assert isinstance(mode, str) and set(mstate) == {"config", "metadata"}
    quantizers = modes[-1][1]["metadata"]["quantizer_state"]
    assert "0.weight_quantizer" in quantizers and "2.input_quantizer" in quantizers

    # Tensors in the metadata: only ModelOpt's smoothing statistics, found the same in both
    # layouts, and named by their key path.
    assert all(p.rsplit(".", 1)[-1] in METADATA_TENSORS for p in t_full), list(t_full)
    assert _metadata_tensor_paths(state) == list(t_full)
    assert sorted(t_bare) == sorted(p.removeprefix("modelopt_state.") for p in t_full)
    for p, t in t_bare.items():
        assert torch.equal(t, t_full["modelopt_state." + p])
    if t_full:
        with pytest.raises(ValueError, match=r"_amax_for_smoothing: a tensor of shape"):
            mf.split_modelopt_checkpoint(full, modelopt_files.full(stem))
    else:
        assert mf.split_modelopt_checkpoint(full, modelopt_files.full(stem))[0] == state


def test_metadata_tensors_are_where_expected(modelopt_files):
    t: dict = {}
    bare = mf.load_pickled_checkpoint(modelopt_files.state("INT8_SMOOTHQUANT_CFG"))
    mf.split_modelopt_checkpoint(bare, "x", tensors=t)
    assert sorted(t) == [
        f"modelopt_state_dict[1][1].metadata.quantizer_state['{q}']._amax_for_smoothing"
        for q in ("0.input_quantizer", "2.input_quantizer")
    ]
    with pytest.raises(ValueError) as e:
        mf.split_modelopt_checkpoint(bare, "/some/INT8_SMOOTHQUANT_CFG_state.pth")
    assert str(e.value).startswith(
        "/some/INT8_SMOOTHQUANT_CFG_state.pth: modelopt_state_dict[1][1].metadata"
        ".quantizer_state['0.input_quantizer']._amax_for_smoothing: a tensor of shape (1, 128)")


def test_plain_forms_of_modelopt_properties(modelopt_files):
    state, _ = mf.split_modelopt_checkpoint(
        mf.load_pickled_checkpoint(modelopt_files.state("INT4_AWQ_CFG-pad")), "x")
    q = state["modelopt_state_dict"][1][1]["metadata"]["quantizer_state"]["0.weight_quantizer"]
    assert q["_block_sizes"] == {"-1": 128, "type": "static"}
    assert q["_slices"] == [{"__slice__": [None, None, None]}, {"__slice__": [None, 96, None]}]
    assert q["_axis"] == [0] and q["_input_dtype"] == "float32" and q["_num_bits"] == 4
    assert q["_pytorch_state_metadata"]["buffers"]["_amax"] == {"shape": [256, 1],
                                                                "dtype": "float32"}
    state, _ = mf.split_modelopt_checkpoint(
        mf.load_pickled_checkpoint(modelopt_files.state("NVFP4_DEFAULT_CFG")), "x")
    q = state["modelopt_state_dict"][1][1]["metadata"]["quantizer_state"]["0.weight_quantizer"]
    assert q["_num_bits"] == [2, 1]
    assert q["_block_sizes"] == {"-1": 16, "type": "dynamic", "scale_bits": [4, 3]}


# ---------------------------------------------------------------------------------------------
# to_plain and split_modelopt_checkpoint on made-up input.


def test_to_plain_conversions():
    obj = {
        "a": (1, 2.5, "s", None, True),
        "b": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)},
        "size": torch.Size([3, 4]),
        "dtype": [torch.bfloat16, torch.float8_e4m3fn, torch.float32],
        "sl": slice(None, 96, 2),
    }
    out = mf.to_plain(obj)
    assert out == {
        "a": [1, 2.5, "s", None, True],
        "b": {"-1": 16, "type": "dynamic", "scale_bits": [4, 3]},
        "size": [3, 4],
        "dtype": ["bfloat16", "float8_e4m3fn", "float32"],
        "sl": {"__slice__": [None, 96, 2]},
    }
    json.dumps(out, allow_nan=False)


def test_to_plain_tensors():
    t = torch.ones(2)
    obj = {"modelopt_state_dict": [("quantize", {"config": {}, "metadata": {
        "quantizer_state": {"fc1.input_quantizer": {"_bias": t}}}})]}
    with pytest.raises(ValueError) as e:
        mf.to_plain(obj)
    assert str(e.value).startswith(
        "modelopt_state_dict[0][1].metadata.quantizer_state['fc1.input_quantizer']._bias:")
    assert "tensors belong in the model state dict" in str(e.value)
    tensors: dict = {}
    out = mf.to_plain(obj, tensors=tensors)
    key = "modelopt_state_dict[0][1].metadata.quantizer_state['fc1.input_quantizer']._bias"
    assert tensors == {key: t}
    assert out["modelopt_state_dict"][0][1]["metadata"]["quantizer_state"][
        "fc1.input_quantizer"]["_bias"] == {"__tensor__": key}


@pytest.mark.parametrize("bad, where, what", [
    ({"x": [1.0, math.nan]}, "x[1]", "nan"),
    ({"x": {"y": math.inf}}, "x.y", "inf"),
    ({"x": {(1, 2): 3}}, "x[(1, 2)]", "dict key of type tuple"),
    ({"x": {True: 3}}, "x[True]", "dict key of type bool"),
    ({"x": {1.5: 3}}, "x[1.5]", "dict key of type float"),
    ({"x": {1: 1, "1": 2}}, "x", "collide"),
    ({"x": {"__slice__": [1]}}, "x", "reserved"),
    ({"x": {1, 2}}, "x", "builtins.set"),
    ({"x": torch.device("cpu")}, "x", "torch.device"),
    ({"x": b"raw"}, "x", "builtins.bytes"),
    ({"a b": [complex(1, 2)]}, "['a b'][0]", "builtins.complex"),
])
def test_to_plain_refuses_what_json_cannot_hold(bad, where, what):
    with pytest.raises(ValueError) as e:
        mf.to_plain(bad)
    assert str(e.value).startswith(where + ":"), str(e.value)
    assert what in str(e.value)


def _state(modes=None, version="0.47.0"):
    if modes is None:
        modes = [("quantize", {"config": {"algorithm": "max"}, "metadata": {}})]
    return {"modelopt_state_dict": modes, "modelopt_version": version}


@pytest.mark.parametrize("obj, message", [
    ([1, 2, 3], "not a ModelOpt checkpoint: the file holds a list"),
    ({"weight": torch.ones(1)}, "not a ModelOpt checkpoint: a dict with keys ['weight']"),
    ({"modelopt_state_dict": []}, "missing required key(s) ['modelopt_version']"),
    (_state(modes={}), "'modelopt_state_dict' must be a list, got dict"),
    (_state(version=47), "'modelopt_version' must be a str, got int"),
    (_state(modes=[("quantize",)]), "modelopt_state_dict[0] must be a (mode_name"),
    (_state(modes=[(1, {"config": {}, "metadata": {}})]), "the mode name, must be a str"),
    (_state(modes=[("quantize", [])]), "modelopt_state_dict[0][1] (mode 'quantize') must be a"),
    (_state(modes=[("quantize", {"config": {}})]), "lacks 'metadata'"),
    (_state(modes=[("quantize", {"config": 1, "metadata": {}})]), "config (mode 'quantize') must"),
    ({**_state(), "extra": 1}, "unexpected keys ['extra']"),
    ({"modelopt_state": _state()}, "lacks 'model_state_dict'"),
    ({"modelopt_state": [], "model_state_dict": {}}, "modelopt_state: expected a dict"),
    ({"modelopt_state": _state(), "model_state_dict": []}, "model_state_dict must be a dict"),
    ({"modelopt_state": _state(), "model_state_dict": {"w": 1}}, "model_state_dict['w'] is a int"),
    ({"modelopt_state": _state(), "model_state_dict": {1: torch.ones(1)}}, "key 1 is not a str"),
    ({"modelopt_state": _state(), "model_state_dict": {}, "x": 1}, "unexpected keys ['x']"),
])
def test_split_refuses_wrong_layouts(obj, message):
    with pytest.raises(ValueError) as e:
        mf.split_modelopt_checkpoint(obj, "/ckpt/file.pth")
    assert str(e.value).startswith("/ckpt/file.pth: ")
    assert message in str(e.value), str(e.value)


def test_a_valid_torch_file_with_the_wrong_layout(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.ones(2), {"a": 1}], path)
    obj = mf.load_pickled_checkpoint(path)
    with pytest.raises(ValueError, match=r"list\.pth: not a ModelOpt checkpoint: the file holds "
                                         r"a list"):
        mf.split_modelopt_checkpoint(obj, path)


# ---------------------------------------------------------------------------------------------
# Hostile files: nothing in them runs.


class _SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


class NotAllowed:
    """A harmless class of this module: still not on the allow-list."""

    def __init__(self):
        self.x = 1


SYSTEM = r"'(posix|os|nt)\.system'"


def _refusal(path, name_pattern):
    return (rf"^{re.escape(str(path))}: refusing to load: the file holds {name_pattern}, which is not a tensor or "
            r"plain container; mopt never runs code from a file")


@pytest.mark.parametrize("make, name", [
    (lambda m: {"modelopt_state": _SystemCall(m), "model_state_dict": {}}, SYSTEM),
    (lambda m: [torch.ones(1), _EvalCall(m)], r"'builtins\.eval'"),
])
def test_a_callable_in_a_torch_file_does_not_run(tmp_path, make, name):
    marker = tmp_path / "marker"
    path = tmp_path / "hostile.pth"
    torch.save(make(marker), path)
    with pytest.raises(ValueError, match=_refusal(path, name)):
        mf.load_pickled_checkpoint(path)
    assert not marker.exists()


def test_a_class_that_is_not_allow_listed(tmp_path):
    path = tmp_path / "cls.pth"
    torch.save({"modelopt_state_dict": [NotAllowed()], "modelopt_version": "0.47.0"}, path)
    name = "'" + re.escape(f"{__name__}.NotAllowed") + "'"
    with pytest.raises(ValueError, match=_refusal(path, name)):
        mf.load_pickled_checkpoint(path)
    # Registering it process-wide (as ModelOpt registers its own classes) does not widen mopt's
    # list: the list is torch's defaults and ALLOWED_GLOBALS, nothing else.
    with torch.serialization.safe_globals([NotAllowed]):
        assert isinstance(torch.load(path, weights_only=True)["modelopt_state_dict"][0],
                          NotAllowed)
        with pytest.raises(ValueError, match=_refusal(path, name)):
            mf.load_pickled_checkpoint(path)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_raw_pickle_carrying_a_callable(tmp_path, protocol):
    marker = tmp_path / "marker"
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps({"modelopt_state": _SystemCall(marker)}, protocol=protocol))
    with pytest.raises(ValueError, match=_refusal(path, SYSTEM)):
        mf.load_pickled_checkpoint(path)
    assert not marker.exists()


def test_a_raw_pickle_of_plain_data_is_no_torch_file(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"modelopt_state_dict": [], "modelopt_version": "0.47.0"}))
    with pytest.raises(ValueError, match=r"plain\.pkl: not a torch\.save checkpoint"):
        mf.load_pickled_checkpoint(path)


def _rewrite_data_pkl(src, dst, data: bytes):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            body = data if info.filename.endswith("/data.pkl") else zin.read(info)
            zout.writestr(info.filename, body)


def test_data_pkl_replaced_by_garbage(modelopt_files, tmp_path):
    path = tmp_path / "garbage.pth"
    _rewrite_data_pkl(modelopt_files.full("INT8_DEFAULT_CFG"), path, b"\x80\x02garbage" * 50)
    with pytest.raises(ValueError, match=r"garbage\.pth: data\.pkl is not a valid pickle"):
        mf.load_pickled_checkpoint(path)


def test_data_pkl_replaced_by_a_callable(modelopt_files, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "swapped.pth"
    _rewrite_data_pkl(modelopt_files.full("INT8_DEFAULT_CFG"), path,
                      pickle.dumps(_SystemCall(marker), protocol=2))
    with pytest.raises(ValueError, match=_refusal(path, SYSTEM)):
        mf.load_pickled_checkpoint(path)
    assert not marker.exists()


def test_torch_refusals_are_reworded(tmp_path):
    """The fallback when the static scan is unavailable: torch's own refusal, reworded."""
    marker = tmp_path / "marker"
    for obj, name in ((_SystemCall(marker), SYSTEM),
                      (NotAllowed(), "'" + re.escape(f"{__name__}.NotAllowed") + "'")):
        path = tmp_path / "f.pth"
        torch.save(obj, path)
        with pytest.raises(pickle.UnpicklingError) as e:
            torch.load(path, weights_only=True)
        err = mf._torch_error_to_value_error(str(path), e.value)
        assert isinstance(err, ValueError)
        assert re.match(_refusal(path, name), str(err)), str(err)
    err = mf._torch_error_to_value_error("p", RuntimeError("PytorchStreamReader failed\nmore"))
    assert str(err) == ("p: cannot read the file (RuntimeError: PytorchStreamReader failed); it "
                        "is truncated, corrupt or not a torch.save checkpoint")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Broken files: a clear error, never a crash.


def test_truncated_files(modelopt_files, tmp_path):
    data = modelopt_files.full("W4A8_AWQ_BETA_CFG").read_bytes()
    n = len(data)
    for cut in sorted({0, 1, 2, 4, 30, 100, 1000, n // 4, n // 2, n - 200, n - 22, n - 1}):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError) as e:
            mf.load_pickled_checkpoint(path)
        assert str(e.value).startswith(f"{path}: "), str(e.value)
        assert ("truncated or corrupt" in str(e.value)
                or "not a torch.save checkpoint" in str(e.value)), str(e.value)


def test_a_corrupt_byte_in_data_pkl(modelopt_files, tmp_path):
    src = modelopt_files.full("INT8_DEFAULT_CFG")
    data = bytearray(src.read_bytes())
    pkl = _data_pkl(src)
    at = bytes(data).find(pkl) + len(pkl) // 2
    data[at] ^= 0xFF
    path = tmp_path / "flipped.pth"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"flipped\.pth: the zip archive is truncated or corrupt "
                                         r"\(BadZipFile: Bad CRC-32"):
        mf.load_pickled_checkpoint(path)


def test_a_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match=r"other\.zip: not a torch\.save checkpoint \(the zip "
                                         r"archive holds 0 top-level data\.pkl"):
        mf.load_pickled_checkpoint(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        mf.load_pickled_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="is a directory"):
        mf.load_pickled_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------
# End to end: mopt restores what ModelOpt wrote and computes what ModelOpt computed.


def _model(dims) -> nn.Module:
    d_in, hidden, d_out = (int(d) for d in dims)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out)).eval()


def _check_output(model, io_data, stem):
    """mopt and ModelOpt compute the same fake quantization from the same amax, pre-quant scales
    and weights, so they may differ only by float rounding order (measured: at most 1.2e-7 here,
    for FP8 and W4A8) and, rarely, by an element sitting on a rounding tie that lands in the
    neighbouring bin, which moves a few outputs by about one input step times a weight (below
    max|y|/200 here). So: every output within one step of an 8-bit grid over the output's range
    (max|y|/127), and all but 1 in 64 within float noise. A wrong scale, format, axis, block
    layout or pre-quant scale moves most outputs, by far more than float noise."""
    with torch.no_grad():
        out = model(io_data["x"])
    y = io_data["y"]
    step = y.abs().max().item() / 127
    diff = (out - y).abs()
    noisy = diff > 1e-5 * (1 + y.abs())
    print(f"{stem}: max |mopt - modelopt| = {diff.max().item():.3g}, {int(noisy.sum())} of "
          f"{diff.numel()} beyond float noise (step {step:.3g}, max |y| {y.abs().max().item():.3g})")
    torch.testing.assert_close(out, y, rtol=0, atol=step)
    assert int(noisy.sum()) * 64 <= diff.numel(), (
        f"{int(noisy.sum())} of {diff.numel()} outputs differ beyond float noise")


@pytest.mark.parametrize("stem", OUTPUT_CONFIGS)
def test_restore_full_checkpoint_matches_modelopt(modelopt_files, stem):
    import mopt.opt as mto

    io_data = _load_io(modelopt_files, stem)
    model = _model(io_data["dims"])
    restored = mto.restore(model, str(modelopt_files.full(stem)))
    _check_output(restored if restored is not None else model, io_data, stem)


@pytest.mark.parametrize("stem", OUTPUT_CONFIGS)
def test_restore_from_modelopt_state_then_weights_matches_modelopt(modelopt_files, stem):
    import mopt.opt as mto

    io_data = _load_io(modelopt_files, stem)
    state = mf.load_pickled_checkpoint(modelopt_files.state(stem))
    sd = mf.load_pickled_checkpoint(modelopt_files.weights(stem))
    model = _model(io_data["dims"])
    restored = mto.restore_from_modelopt_state(model, state)
    restored = restored if restored is not None else model
    restored.load_state_dict(sd)
    _check_output(restored, io_data, stem)


@pytest.mark.parametrize("stem", STATE_ONLY_CONFIGS)
def test_restore_state_only_configs(modelopt_files, stem):
    """No ModelOpt output on the CPU for these formats: the restore must succeed, load every
    tensor of the file, and run."""
    import mopt.opt as mto

    io_data = _load_io(modelopt_files, stem)
    model = _model(io_data["dims"])
    restored = mto.restore(model, str(modelopt_files.full(stem)))
    restored = restored if restored is not None else model
    sd = restored.state_dict()
    for key, value in mf.load_pickled_checkpoint(modelopt_files.weights(stem)).items():
        assert key in sd, key
        torch.testing.assert_close(sd[key], value, rtol=0, atol=0)
    with torch.no_grad():
        out = restored(io_data["x"])
    assert out.shape == (io_data["x"].shape[0], int(io_data["dims"][2]))
    assert torch.isfinite(out).all()


def test_restore_refuses_a_hostile_file(tmp_path):
    import mopt.opt as mto

    marker = tmp_path / "marker"
    path = tmp_path / "hostile.pth"
    torch.save({"modelopt_state": _SystemCall(marker), "model_state_dict": {}}, path)
    model = _model((128, 256, 128))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=SYSTEM):
        mto.restore(model, str(path))
    assert not marker.exists()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_restore_refuses_a_truncated_modelopt_file(modelopt_files, tmp_path):
    import mopt.opt as mto

    data = modelopt_files.full("INT8_DEFAULT_CFG").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pth"):
        mto.restore(_model((128, 256, 128)), str(path))


def test_restore_refuses_a_checkpoint_of_another_model(modelopt_files):
    import mopt.opt as mto

    with pytest.raises((ValueError, RuntimeError)):
        mto.restore(_model((64, 256, 128)), str(modelopt_files.full("INT8_DEFAULT_CFG")))


def test_restore_onto_an_optimized_model_is_an_error(modelopt_files):
    import mopt.opt as mto

    model = _model((128, 256, 128))
    model = mto.restore(model, str(modelopt_files.full("INT8_DEFAULT_CFG"))) or model
    with pytest.raises((ValueError, RuntimeError)):
        mto.restore(model, str(modelopt_files.full("INT8_DEFAULT_CFG")))


def test_modelopt_files_are_not_changed(modelopt_files, tmp_path):
    """Reading never writes: the file's bytes are the same after a load."""
    src = modelopt_files.full("INT4_AWQ_CFG-pad")
    copy = tmp_path / "copy.pth"
    shutil.copyfile(src, copy)
    mf.load_pickled_checkpoint(copy)
    assert copy.read_bytes() == src.read_bytes()
    assert pathlib.Path(copy).stat().st_size == src.stat().st_size
