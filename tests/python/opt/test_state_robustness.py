"""Bad input to mto.restore (GUIDE §6, SPEC §3): each case is a clear error that names the
problem, with the model untouched, never code run from the file; saves are atomic.

* Broken and foreign files: truncated at several lengths, from another model (other layer sizes,
  other layer names), a newer state format, a pickle carrying a callable, plain safetensors
  weights, a missing file.
* Hand-edited states: unknown modes, chaining rules (no sparsity after quantize), unsupported
  nvidia-modelopt quantizer keys, buffer shapes and dtypes that disagree with the tensors, NaN /
  Inf / negative amax.
* Restoring onto an already optimized model.
* Atomicity: a writer process looping mto.save is SIGKILLed at random moments; the target file is
  always the old or a complete new file.
* A bounded, seeded fuzz of the state reader (mutated JSON state, tensors and raw bytes), in a
  subprocess so a crash or a hang is reported with its seed.

After every error the model must be exactly as it was: same module classes (no QuantLinear left),
same parameters and buffers, no ``_modelopt_state``, same outputs.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import pickle
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import mopt
import mopt.opt as mto
import mopt.quantization as mtq
from mopt import _C
from mopt.quantization.nn import QuantModule, SequentialQuantizer, TensorQuantizer

KEY = _C.state_metadata_key()
MOPT_PYTHONPATH = str(pathlib.Path(mopt.__file__).resolve().parents[1])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only add overhead (and spin on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mlp(seed: int, hidden: int = 256, names: tuple[str, str] | None = None) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(128, hidden), nn.ReLU(), nn.Linear(hidden, 128)]
    if names is None:
        return nn.Sequential(*layers).eval()
    model = nn.Sequential()
    for name, layer in zip((names[0], "act", names[1]), layers):
        model.add_module(name, layer)
    return model.eval()


CALIB = list(torch.randn(4, 8, 128, generator=torch.Generator().manual_seed(10)))
X = torch.randn(3, 128, generator=torch.Generator().manual_seed(11))


def _loop(model: nn.Module) -> None:
    for b in CALIB:
        model(b)


def _quantized(model: nn.Module, cfg: dict = mtq.INT8_DEFAULT_CFG) -> nn.Module:
    mtq.quantize(model, copy.deepcopy(cfg), _loop)
    return model


def _out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(X)


class Snapshot:
    """Everything about a model that a failed restore must leave as it was."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.classes = [(n, type(m)) for n, m in model.named_modules()]
        self.tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.history = copy.deepcopy(model.__dict__.get("_modelopt_state"))
        self.has_history = "_modelopt_state" in model.__dict__
        self.quantizers = {n: (q.attribute_config, q.mode) for n, q in model.named_modules()
                           if isinstance(q, TensorQuantizer)}
        self.output = _out(model)

    def assert_untouched(self) -> None:
        model = self.model
        assert [(n, type(m)) for n, m in model.named_modules()] == self.classes
        state = model.state_dict()
        assert list(state) == list(self.tensors)
        for k, v in state.items():
            assert v.dtype == self.tensors[k].dtype and torch.equal(v, self.tensors[k]), k
        assert ("_modelopt_state" in model.__dict__) == self.has_history
        assert model.__dict__.get("_modelopt_state") == self.history
        assert {n: (q.attribute_config, q.mode) for n, q in model.named_modules()
                if isinstance(q, TensorQuantizer)} == self.quantizers
        assert torch.equal(_out(model), self.output)
        if not self.has_history:  # a fresh model: nothing of mopt's in it
            assert not hasattr(model, "_modelopt_state")
            assert not any(isinstance(m, (QuantModule, TensorQuantizer, SequentialQuantizer))
                           for m in model.modules())
            assert not mto.is_converted(model)


def _fresh() -> tuple[nn.Module, Snapshot]:
    model = _mlp(1)
    return model, Snapshot(model)


def expect_error(path_or_state, exc: type[BaseException], match: str,
                 model: nn.Module | None = None, fn=None) -> BaseException:
    """Restores into `model` (a fresh MLP by default): it must raise `exc` matching `match`, and
    leave the model as it was."""
    if model is None:
        model = _mlp(1)
    snap = Snapshot(model)
    fn = fn or mto.restore
    with pytest.raises(exc, match=match) as info:
        fn(model, path_or_state)
    snap.assert_untouched()
    return info.value


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid INT8_DEFAULT_CFG file of the MLP and its parts: (model, path, tensors, metadata,
    state document)."""
    model = _quantized(_mlp(0))
    path = tmp_path_factory.mktemp("good") / "model.safetensors"
    mto.save(model, path)
    tensors, metadata = _C.load_safetensors(str(path))
    return model, path, tensors, metadata, json.loads(metadata[KEY])


def _write(path, tensors, metadata, doc=None) -> pathlib.Path:
    meta = dict(metadata)
    if doc is not None:
        meta[KEY] = doc if isinstance(doc, str) else json.dumps(doc)
    _C.save_safetensors(str(path), list(tensors), meta)
    return path


def _qstate(doc: dict) -> dict:
    return doc["modelopt_state_dict"][0][1]["metadata"]["quantizer_state"]


def test_the_good_file_restores(good):
    model, path, *_ = good
    fresh = _mlp(1)
    mto.restore(fresh, path)
    assert torch.equal(_out(fresh), _out(model))


# ---------------------------------------------------------------------------------------------
# Broken and foreign files


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


@pytest.mark.parametrize("where", ["0", "4", "7", "8", "9", "64", "header-1", "header",
                                   "header+100", "half", "end-1"])
def test_truncated_file(good, tmp_path, where):
    _, path, *_ = good
    data = path.read_bytes()
    end = _header_end(data)
    n = {"header-1": end - 1, "header": end, "header+100": end + 100, "half": len(data) // 2,
         "end-1": len(data) - 1}.get(where) or int(where)
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[:n])
    # every message names the file and says what is short
    err = expect_error(bad, ValueError, r"shorter than the 8-byte header|exceeds the file .* "
                                        r"truncated|outside the data area")
    assert str(bad) in str(err)


def test_file_of_a_model_with_other_layer_sizes(tmp_path):
    other = _quantized(_mlp(0, hidden=192))
    path = tmp_path / "other.safetensors"
    mto.save(other, path)
    err = str(expect_error(path, ValueError, "is not a checkpoint of this model"))
    # the first mismatches, each with its name and both shapes
    assert "shapes differ: 0.weight (model [256, 128], file [192, 128])" in err
    assert "0.bias (model [256], file [192])" in err
    assert "2.weight (model [128, 256], file [128, 192])" in err


def test_unquantized_file_of_a_model_with_other_layer_sizes(tmp_path):
    path = tmp_path / "other.safetensors"
    mto.save(_mlp(0, hidden=64), path)
    err = str(expect_error(path, ValueError, "is not a checkpoint of this model"))
    assert "0.weight (model [256, 128], file [64, 128])" in err


def test_file_of_a_model_with_other_layer_names(tmp_path):
    other = _quantized(_mlp(0, names=("fc1", "fc2")))
    path = tmp_path / "other.safetensors"
    mto.save(other, path)
    err = str(expect_error(path, ValueError, "is not a checkpoint of this model"))
    assert "missing from the file: 0.input_quantizer" in err
    assert "not in the model: fc1.input_quantizer" in err


def test_unquantized_file_of_a_model_with_other_layer_names(tmp_path):
    path = tmp_path / "other.safetensors"
    mto.save(_mlp(0, names=("fc1", "fc2")), path)
    err = str(expect_error(path, ValueError, "is not a checkpoint of this model"))
    assert "missing from the file: 0.weight, 0.bias, 2.weight, 2.bias" in err
    assert "not in the model: fc1.weight, fc1.bias, fc2.weight, fc2.bias" in err


def test_newer_format_version(good, tmp_path):
    _, _, tensors, metadata, doc = good
    doc = copy.deepcopy(doc)
    assert doc["format_version"] == _C.state_format_version()
    doc["format_version"] = 99
    path = _write(tmp_path / "v99.safetensors", tensors, metadata, doc)
    expect_error(path, ValueError, r"format version 99 by a newer mopt.*upgrade mopt")
    expect_error(path, ValueError, "version 99", fn=lambda m, p: mto.restore_from_modelopt_state(
        m, modelopt_state_path=p))
    with pytest.raises(ValueError, match="version 99"):
        mto.load_modelopt_state(path)


class _RunsCode:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle-0", "pickle-2", "pickle-5"])
@pytest.mark.parametrize("entry", ["restore", "restore_from_modelopt_state",
                                   "load_modelopt_state"])
def test_pickle_with_a_callable_is_refused_and_never_run(tmp_path, writer, entry):
    marker = tmp_path / "marker"
    payload = {"modelopt_state": {"modelopt_state_dict": [], "modelopt_version": "0.40.0"},
               "model_state_dict": {"x": _RunsCode(marker)}}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(writer.split("-")[1])))
    assert not marker.exists()
    fn = {"restore": mto.restore,
          "restore_from_modelopt_state": lambda m, p: mto.restore_from_modelopt_state(
              m, modelopt_state_path=p),
          "load_modelopt_state": lambda m, p: mto.load_modelopt_state(p)}[entry]
    # a pickle is refused naming the callable; protocol 0 does not even look like one
    err = expect_error(path, ValueError, "system|not a safetensors file", fn=fn)
    assert str(path) in str(err)
    assert not marker.exists(), "restoring ran code from the file"


def test_the_pickle_payload_does_run_without_the_allow_list(tmp_path):
    """The payload above is live: torch.load without weights_only runs it (so the marker checks
    of the previous test can fail)."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"x": _RunsCode(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_plain_safetensors_weights(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file(_mlp(0).state_dict(), str(path))
    expect_error(path, ValueError, re.escape(str(path)) + " is a safetensors file without a mode "
                                   "state.*it was not written by mto.save")


def test_invalid_utf8_in_the_header(good, tmp_path):
    """A header string that is not UTF-8 (a flipped byte in a tensor name): a ValueError naming
    the file, not the UnicodeDecodeError of turning the message into a Python str."""
    _, path, *_ = good
    data = bytearray(path.read_bytes())
    at = data.index(b'"0.weight"') + 1
    data[at] = 0xFF
    bad = tmp_path / "utf8.safetensors"
    bad.write_bytes(bytes(data))
    err = expect_error(bad, ValueError, re.escape(str(bad)))
    assert not isinstance(err, UnicodeError)


@pytest.mark.parametrize("cut", [0, 1])
def test_non_ascii_state_text_in_an_error_message(good, tmp_path, cut):
    """An error that quotes a bad entry of the state cuts the quote at 200 bytes; with non-ASCII
    text there the cut must not split a character (and the message must reach the user)."""
    _, _, tensors, metadata, doc = good
    doc = copy.deepcopy(doc)
    doc["modelopt_state_dict"].append("a" * (198 - cut) + "\u00e9" * 5)  # not a [mode, {}] pair
    path = _write(tmp_path / "text.safetensors", tensors, metadata, doc)
    err = expect_error(path, ValueError, r"modelopt_state_dict\[1\] must be a \[mode name, "
                                         r"\{config, metadata\}\] pair")
    assert not isinstance(err, UnicodeError)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.safetensors"
    expect_error(path, FileNotFoundError, "no state file at " + re.escape(str(path)))
    expect_error(path, FileNotFoundError, re.escape(str(path)), fn=lambda m, p:
                 mto.restore_from_modelopt_state(m, modelopt_state_path=p))
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        mto.load_modelopt_state(path)


# ---------------------------------------------------------------------------------------------
# Onto an already optimized model


def test_restore_onto_an_optimized_model(good):
    _, path, *_ = good
    model = _quantized(_mlp(1), mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
    expect_error(path, ValueError, r"already optimized \(modes \['quantize'\]\)", model=model)
    state = mto.modelopt_state(good[0])
    expect_error(state, ValueError, "already optimized", model=model,
                 fn=mto.restore_from_modelopt_state)
    # a model restored once is optimized too
    restored = mto.restore(_mlp(2), path)
    expect_error(path, ValueError, "already optimized", model=restored)


# ---------------------------------------------------------------------------------------------
# Hand-edited mode histories


def test_unknown_mode(good, tmp_path):
    _, _, tensors, metadata, doc = good
    doc = copy.deepcopy(doc)
    doc["modelopt_state_dict"][0][0] = "frobnicate"
    path = _write(tmp_path / "unknown.safetensors", tensors, metadata, doc)
    expect_error(path, ValueError, r"unknown mode 'frobnicate'; known modes: quantize, "
                                   r"max_calibrate.*sparsegpt")
    state = mto.load_modelopt_state(good[1])
    state["modelopt_state_dict"][0] = ("frobnicate", state["modelopt_state_dict"][0][1])
    expect_error(state, ValueError, "unknown mode 'frobnicate'; known modes",
                 fn=mto.restore_from_modelopt_state)


@pytest.mark.parametrize("sparse", ["sparse_magnitude", "sparsegpt", "wanda"])
def test_sparsity_after_quantize_in_the_history(good, tmp_path, sparse):
    _, _, tensors, metadata, doc = good
    doc = copy.deepcopy(doc)
    doc["modelopt_state_dict"].append([sparse, {"config": {}, "metadata": {}}])
    path = _write(tmp_path / "q-s.safetensors", tensors, metadata, doc)
    expect_error(path, ValueError, rf"modelopt_state_dict\[1\].*cannot apply '{sparse}' after "
                                   r"'quantize': sparsify first")


@pytest.mark.parametrize("sparse", ["sparse_magnitude", "sparsegpt", "wanda"])
def test_sparsity_mode_without_its_layer_list_is_refused(good, tmp_path, sparse):
    _, _, tensors, metadata, doc = good
    doc = copy.deepcopy(doc)
    doc["modelopt_state_dict"].insert(0, [sparse, {"config": {}, "metadata": {}}])
    path = _write(tmp_path / "s-q.safetensors", tensors, metadata, doc)
    expect_error(path, ValueError, "sparsity mode's metadata has no list of sparse_modules")


def test_sparsity_mode_naming_missing_layers_is_refused(good, tmp_path):
    _, _, tensors, metadata, doc = good
    doc = copy.deepcopy(doc)
    doc["modelopt_state_dict"].insert(0, ["sparsegpt", {"config": {}, "metadata": {
        "sparse_modules": ["no.such.layer"], "pattern": "2:4 sparsity"}}])
    path = _write(tmp_path / "s-q.safetensors", tensors, metadata, doc)
    expect_error(path, ValueError, r"names layers this model does not have: \['no.such.layer'\]")


def test_chaining_rules():
    with pytest.raises(ValueError, match="cannot apply 'sparsegpt' after 'quantize'"):
        _C.check_next_mode(["quantize"], "sparsegpt")
    with pytest.raises(ValueError, match="cannot apply 'wanda' after 'quantize'"):
        _C.check_next_mode(["sparse_magnitude", "quantize"], "wanda")
    with pytest.raises(ValueError, match="already sparsified with 'sparsegpt'"):
        _C.check_next_mode(["sparsegpt"], "sparse_magnitude")
    with pytest.raises(ValueError, match="'max_calibrate' calibrates quantizers and needs "
                                         "'quantize'"):
        _C.check_next_mode([], "max_calibrate")
    with pytest.raises(ValueError, match="unknown mode 'nope'; known modes: quantize"):
        _C.check_next_mode(["quantize"], "nope")
    with pytest.raises(ValueError, match="'export_sparse' exports a sparsified model and needs"):
        _C.check_next_mode(["quantize"], "export_sparse")
    with pytest.raises(ValueError, match="exported already"):
        _C.check_next_mode(["wanda", "export_sparse"], "export_sparse")
    for history, mode in [([], "sparsegpt"), (["sparsegpt"], "quantize"),
                          (["sparsegpt", "quantize"], "export_sparse"),
                          (["quantize"], "quantize"), (["quantize"], "gptq_calibrate")]:
        _C.check_next_mode(history, mode)
    # and mtq.quantize itself refuses nothing after a quantize
    model = _quantized(_quantized(_mlp(0)), mtq.INT8_WEIGHT_ONLY_CFG)
    assert [m for m, _ in mto.modelopt_state(model)["modelopt_state_dict"]] == ["quantize"] * 2


# ---------------------------------------------------------------------------------------------
# Hand-edited quantizer states and tensors


@pytest.mark.parametrize("key,value,match", [
    ("_rotate", True, r"'0\.weight_quantizer'.*'rotate'.*not implemented"),
    ("_learn_amax", True, r"'0\.weight_quantizer'.*'learn_amax' must be False"),
    ("_use_constant_amax", True, r"'0\.weight_quantizer'.*'_use_constant_amax' = true"),
    ("_something_new", 1, (r"'0\.weight_quantizer'.*'_something_new' = 1 is a "
                           r"nvidia-modelopt feature mopt does not support")),
])
def test_unsupported_modelopt_quantizer_key(good, tmp_path, key, value, match):
    _, _, tensors, metadata, doc = good
    doc = copy.deepcopy(doc)
    _qstate(doc)["0.weight_quantizer"][key] = value
    path = _write(tmp_path / "key.safetensors", tensors, metadata, doc)
    exc = ValueError if key == "_learn_amax" else NotImplementedError
    expect_error(path, exc, match)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "negative"])
@pytest.mark.parametrize("name", ["0.input_quantizer._amax", "2.weight_quantizer._amax"])
def test_invalid_amax_in_the_file(good, tmp_path, bad, name):
    _, _, tensors, metadata, _ = good

    def edit(k, v):
        if k != name:
            return v
        v = v.clone()
        v.view(-1)[-1] = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"),
                          "negative": -0.5}[bad]
        return v

    path = _write(tmp_path / "amax.safetensors", [(k, edit(k, v)) for k, v in tensors],
                  metadata)
    what = "negative values" if bad == "negative" else "NaN or infinite values"
    expect_error(path, ValueError, rf"{re.escape(str(path))}: {re.escape(name)} holds {what}")


def test_integer_amax_in_the_file(good, tmp_path):
    _, _, tensors, metadata, _ = good
    name = "0.input_quantizer._amax"
    path = _write(tmp_path / "amax.safetensors",
                  [(k, v.to(torch.int32) if k == name else v) for k, v in tensors], metadata)
    expect_error(path, ValueError, rf"{name} must be a floating tensor")


def test_amax_shape_in_the_state_differs_from_the_file(good, tmp_path):
    """Fails after the quantizers were converted: the conversion is undone."""
    _, _, tensors, metadata, doc = good
    doc = copy.deepcopy(doc)
    _qstate(doc)["0.weight_quantizer"]["_pytorch_state_metadata"]["buffers"]["_amax"][
        "shape"] = [128, 1]
    path = _write(tmp_path / "shape.safetensors", tensors, metadata, doc)
    expect_error(path, ValueError, r"shapes differ: 0\.weight_quantizer\._amax \(model "
                                   r"\[128, 1\], file \[256, 1\]\)")


@pytest.mark.parametrize("dtype", ["int8", "bool", "complex64"])
def test_non_floating_amax_dtype_in_the_state(good, tmp_path, dtype):
    """The state's buffer dtype is what the restored amax gets, and load_state_dict casts the
    file's float amax into it: a non-floating dtype must be refused, not truncate the amax."""
    _, _, tensors, metadata, doc = good
    doc = copy.deepcopy(doc)
    _qstate(doc)["0.input_quantizer"]["_pytorch_state_metadata"]["buffers"]["_amax"][
        "dtype"] = dtype
    path = _write(tmp_path / "dtype.safetensors", tensors, metadata, doc)
    expect_error(path, (ValueError, TypeError), rf"0\.input_quantizer.*{dtype}")


def test_tensor_missing_from_the_file(good, tmp_path):
    _, _, tensors, metadata, _ = good
    path = _write(tmp_path / "missing.safetensors",
                  [(k, v) for k, v in tensors if k != "2.bias"], metadata)
    expect_error(path, ValueError, "missing from the file: 2.bias;")


def test_tensor_the_model_does_not_have(good, tmp_path):
    _, _, tensors, metadata, _ = good
    path = _write(tmp_path / "extra.safetensors", tensors + [("extra.weight", torch.ones(2))],
                  metadata)
    expect_error(path, ValueError, "not in the model: extra.weight;")


# ---------------------------------------------------------------------------------------------
# Atomic saves: kill a writer mid-write

WRITER = textwrap.dedent(r'''
    import os, sys
    import torch
    torch.set_num_threads(1)
    import mopt.opt as mto
    sys.path.insert(0, sys.argv[2])
    from _atomic_models import build
    path = sys.argv[1]
    models = [build(1), build(0)]  # the file holds model 0; the first save writes model 1
    print("ready", flush=True)
    for line in sys.stdin:  # one forked writer per line, saving in a loop until killed
        pid = os.fork()
        if pid == 0:
            try:
                i = 0
                while True:
                    mto.save(models[i % 2], path)
                    i += 1
            finally:
                os._exit(1)
        print(pid, flush=True)
        os.waitpid(pid, 0)
        print("reaped", flush=True)
''')

# 4096 x 4096 float32 plus INT8 weight quantizer: 64 MiB a file. The weights are cheap patterns
# (no random init) that differ between the two models everywhere.
ATOMIC_MODELS = textwrap.dedent(r'''
    import torch
    from torch import nn
    import mopt.quantization as mtq

    N = 4096

    def build(which, quantize=True):
        model = nn.Sequential(nn.utils.skip_init(nn.Linear, N, N))
        with torch.no_grad():
            w = torch.arange(N * N, dtype=torch.float32).view(N, N)
            model[0].weight.copy_(torch.remainder(w, 997 if which == 0 else 991) * 1e-3 - 0.4)
            model[0].bias.fill_(float(which))
        if quantize:
            mtq.quantize(model, mtq.INT8_WEIGHT_ONLY_CFG)
        return model
''')


def test_killed_writer_leaves_the_old_or_the_new_file(tmp_path):
    """SIGKILL at random moments of a process saving in a loop: the target is always a complete
    file, the one it held before or the new one; mto.restore of it equals one of the two models.
    A kill mid-write leaves the writer's hidden temporary file (``.<name>.tmp.<pid>.<suffix>``)
    behind: nothing could remove it, and it is never the target itself."""
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    (helpers / "_atomic_models.py").write_text(ATOMIC_MODELS)
    sys.path.insert(0, str(helpers))
    try:
        from _atomic_models import build
    finally:
        sys.path.remove(str(helpers))
        sys.modules.pop("_atomic_models", None)
    models = [build(0), build(1)]
    target = tmp_path / "model.safetensors"
    mto.save(models[0], target)
    refs = [m.state_dict() for m in models]
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [MOPT_PYTHONPATH] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    errors = tmp_path / "writer.stderr"
    with open(errors, "w") as err:
        proc = subprocess.Popen([sys.executable, str(script), str(target), str(helpers)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                text=True, env=env)
    rng = random.Random(1234)
    seen, mid_write = [], 0
    deadline = time.monotonic() + 15.0
    try:
        for line in proc.stdout:  # quantize prints "Inserted N quantizers" first
            if line.strip() == "ready":
                break
        else:
            pytest.fail(f"the writer died before it was ready:\n{errors.read_text()[-3000:]}")
        for _ in range(8):
            if time.monotonic() > deadline and mid_write:
                break
            proc.stdin.write("go\n")
            proc.stdin.flush()
            pid = int(proc.stdout.readline())
            time.sleep(rng.uniform(0.05, 0.5))
            os.kill(pid, signal.SIGKILL)
            assert proc.stdout.readline().strip() == "reaped"
            leftovers = [p for p in tmp_path.iterdir()
                         if p.name.startswith(".model.safetensors.tmp.")]
            mid_write += bool(leftovers)
            for p in leftovers:
                p.unlink()
            assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
            fresh = nn.Sequential(nn.utils.skip_init(nn.Linear, 4096, 4096))
            mto.restore(fresh, target)  # a complete, valid file
            got = fresh.state_dict()
            match = [i for i, ref in enumerate(refs)
                     if list(ref) == list(got) and all(torch.equal(ref[k], got[k]) for k in ref)]
            assert len(match) == 1, "the file is neither the old nor the new model"
            seen.append(match[0])
    finally:
        proc.kill()
        proc.wait()
    assert mid_write, "no kill landed during a write: the test did not test anything"
    print(f"kills: {len(seen)}, mid-write: {mid_write}, file held model {seen}")


# ---------------------------------------------------------------------------------------------
# Fuzz of the state reader

FUZZ_SEEDS = 400
FUZZ_TIMEOUT_S = 60

FUZZ_WORKER = textwrap.dedent(r'''
    import copy, json, math, random, sys, traceback
    import torch
    torch.set_num_threads(1)
    from torch import nn
    import mopt.opt as mto
    from mopt import _C
    from mopt.quantization.nn import QuantModule, SequentialQuantizer, TensorQuantizer

    CLEAR = (ValueError, TypeError, NotImplementedError, RuntimeError)
    src, work, out_path = sys.argv[1], sys.argv[2], sys.argv[5]
    first, count = int(sys.argv[3]), int(sys.argv[4])
    KEY = _C.state_metadata_key()
    DATA = open(src, "rb").read()
    TENSORS, META = _C.load_safetensors(src)
    DOC = json.loads(META[KEY])
    HEADER_END = 8 + int.from_bytes(DATA[:8], "little")

    torch.manual_seed(1)
    TEMPLATE = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)).eval()
    X = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        REF_OUT = TEMPLATE(X)
    REF_STATE = {k: v.clone() for k, v in TEMPLATE.state_dict().items()}
    REF_CLASSES = [(n, type(m)) for n, m in TEMPLATE.named_modules()]

    ODD = [None, True, False, 0, 1, -1, 7, 2**31, 2**63 - 1, -2**63, 2**64, 10**40, 1.5, -0.0,
           1e308, -1e308, 5e-324, "", "x", "8", "max", "float64", "quantize", [], [1], [-1, 2],
           [[]], {}, {"a": 1}, {"-1": 16, "type": "dynamic"}, "\u0000", "\ud7ff\ue000", " " * 300]

    def nodes(x, path=()):
        yield path
        if isinstance(x, dict):
            for k, v in x.items():
                yield from nodes(v, path + (k,))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                yield from nodes(v, path + (i,))

    def get(x, path):
        for p in path:
            x = x[p]
        return x

    def put(doc, path, value):
        if not path:
            return value
        get(doc, path[:-1])[path[-1]] = value
        return doc

    def number_variant(rng, v):
        return rng.choice([str(v), -v - 1, v * 1000003, 2**64 + v, float(v) + 0.5, -1e308,
                           1e308, 10**400 if rng.random() < 0.3 else -(2**63) - 1])

    def mutate_doc(rng):
        doc = copy.deepcopy(DOC)
        paths = list(nodes(doc))
        kind = rng.choice(["delete", "type", "number", "swap", "nest", "text", "dup", "mode"])
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            paths = list(nodes(doc))
            path = rng.choice(paths)
            if kind == "delete" and path:
                parent = get(doc, path[:-1])
                del parent[path[-1]]
            elif kind == "type":
                doc = put(doc, path, copy.deepcopy(rng.choice(ODD)))
            elif kind == "number":
                nums = [p for p in paths if isinstance(get(doc, p), (int, float))
                        and not isinstance(get(doc, p), bool)]
                if nums:
                    p = rng.choice(nums)
                    doc = put(doc, p, number_variant(rng, get(doc, p)))
            elif kind == "swap":  # another node of the document in this place
                doc = put(doc, path, copy.deepcopy(get(doc, rng.choice(paths))))
            elif kind == "dup" and path and isinstance(get(doc, path[:-1]), list):
                get(doc, path[:-1]).append(copy.deepcopy(get(doc, path)))
            elif kind == "mode":
                doc["modelopt_state_dict"].insert(rng.randrange(2), [rng.choice(
                    ["quantize", "max_calibrate", "_no_calibrate", "sparsegpt", "bogus", ""]),
                    {"config": {}, "metadata": rng.choice([{}, copy.deepcopy(
                        DOC["modelopt_state_dict"][0][1]["metadata"])])}])
        text = json.dumps(doc)
        if kind == "nest":  # a deeply nested value in place of one
            depth = rng.choice([10, 63, 64, 65, 1000, 100000])
            opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
            marker = '"@@NEST@@"'
            text = json.dumps(put(doc, rng.choice(list(nodes(doc))[1:]), "@@NEST@@"))
            text = text.replace(marker, opener * depth + "1" + closer * depth)
        elif kind == "text":  # random characters replaced in the JSON text
            chars = list(text)
            for _ in range(rng.choice([1, 2, 5, 20])):
                i = rng.randrange(len(chars))
                chars[i] = rng.choice(['"', "{", "}", "[", "]", ",", ":", "\\", "0", "9", "-",
                                       "e", "n", " ", "\n", "\u00e9", "\u2028",
                                       chr(rng.randrange(32, 127))])
            text = "".join(chars)
        return kind, text

    def mutate_tensors(rng):
        tensors = [(k, v.clone()) for k, v in TENSORS]
        i = rng.randrange(len(tensors))
        name, t = tensors[i]
        change = rng.choice(["shape", "dtype", "empty", "scalar", "values", "drop", "rename"])
        if change == "shape":
            t = torch.ones(*(s + rng.choice([1, 2]) for s in t.shape)) if t.dim() else torch.ones(2)
        elif change == "dtype":
            t = t.to(rng.choice([torch.float16, torch.bfloat16, torch.float64, torch.int64,
                                 torch.int8, torch.bool, torch.uint8]))
        elif change == "empty":
            t = torch.empty(0)
        elif change == "scalar":
            t = torch.tensor(rng.choice([0.0, 1.0, -1.0, float("nan")]))
        elif change == "values":
            t = t.clone()
            t.view(-1)[rng.randrange(t.numel())] = rng.choice([float("nan"), float("inf"),
                                                                -1.0, 0.0, 1e38, 1e-45])
        elif change == "drop":
            del tensors[i]
            return change, tensors
        else:
            name = name + rng.choice(["_", ".x", "y"])
        tensors[i] = (name, t)
        return change, tensors

    def mutate_bytes(rng):
        data = bytearray(DATA)
        kind = rng.choice(["flip-header", "flip-any", "length", "truncate", "insert", "append"])
        if kind == "flip-header":
            for _ in range(rng.choice([1, 2, 8])):
                data[rng.randrange(8, HEADER_END)] = rng.randrange(256)
        elif kind == "flip-any":
            for _ in range(rng.choice([1, 4, 32])):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "length":
            n = rng.choice([0, 1, 2, HEADER_END - 9, HEADER_END - 7, HEADER_END + 8, len(data),
                            2**31, 2**63, 2**64 - 1, rng.randrange(2**64)])
            data[:8] = n.to_bytes(8, "little")
        elif kind == "truncate":
            del data[rng.randrange(len(data)):]
        elif kind == "insert":
            i = rng.randrange(8, HEADER_END)
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 8])))
        else:
            data += bytes(rng.randrange(256) for _ in range(rng.choice([1, 8, 1000])))
        return kind, bytes(data)

    def untouched(model):
        problems = []
        if [(n, type(m)) for n, m in model.named_modules()] != REF_CLASSES:
            problems.append("module classes changed")
        if any(isinstance(m, (QuantModule, TensorQuantizer, SequentialQuantizer))
               for m in model.modules()):
            problems.append("quantizers left")
        state = model.state_dict()
        if list(state) != list(REF_STATE) or not all(torch.equal(state[k], REF_STATE[k])
                                                     for k in REF_STATE):
            problems.append("tensors changed")
        if "_modelopt_state" in model.__dict__:
            problems.append("_modelopt_state left")
        with torch.no_grad():
            if not torch.equal(model(X), REF_OUT):
                problems.append("output changed")
        return problems

    results = {"outcomes": {}, "bad": [], "examples": {}}
    path = f"{work}/fuzz.safetensors"
    for seed in range(first, first + count):
        rng = random.Random(seed)
        family = rng.choice(["doc", "doc", "doc", "tensors", "bytes"])
        try:
            if family == "doc":
                kind, text = mutate_doc(rng)
                _C.save_safetensors(path, TENSORS, {**META, KEY: text})
            elif family == "tensors":
                kind, tensors = mutate_tensors(rng)
                _C.save_safetensors(path, tensors, META)
            else:
                kind, data = mutate_bytes(rng)
                with open(path, "wb") as f:
                    f.write(data)
        except Exception as e:  # the writer refused the input (e.g. a lone surrogate)
            results["outcomes"].setdefault(f"{family}:unwritable", 0)
            results["outcomes"][f"{family}:unwritable"] += 1
            continue
        label = f"{family}:{kind}"
        print(f"seed {seed} {label}", flush=True)
        model = copy.deepcopy(TEMPLATE)
        message = ""
        try:
            mto.restore(model, path)
        except CLEAR as e:
            outcome, message = type(e).__name__, str(e)
            if not message:
                results["bad"].append([seed, label, f"{outcome} without a message"])
            elif type(e) not in CLEAR:  # a subclass leaking from below (UnicodeDecodeError, ...)
                results["bad"].append([seed, label, f"{outcome} is no clear error: "
                                       f"{message[:300]}\n" + traceback.format_exc()[-1500:]])
            problems = untouched(model)
            if problems:
                results["bad"].append([seed, label, f"model not untouched after {outcome}: "
                                       f"{problems}: {message[:300]}"])
        except BaseException as e:
            outcome, message = type(e).__name__, str(e)
            results["bad"].append([seed, label, f"{outcome} is no clear error: {message[:300]}\n"
                                   + traceback.format_exc()[-1500:]])
        else:
            outcome = "restored"
            try:
                with torch.no_grad():
                    model(X)
            except BaseException as e:
                results["bad"].append([seed, label, f"restored, then forward raised "
                                       f"{type(e).__name__}: {str(e)[:300]}"])
        key = f"{label} -> {outcome}"
        results["outcomes"][key] = results["outcomes"].get(key, 0) + 1
        if message and key not in results["examples"]:
            results["examples"][key] = f"seed {seed}: {message[:300]}"
    json.dump(results, open(out_path, "w"), indent=1)
    print("done", flush=True)
''')


@pytest.fixture(scope="module")
def fuzz_source(tmp_path_factory):
    """A small valid file with varied quantizer states: INT4 blocks + FP8 (a SequentialQuantizer),
    AWQ pre_quant_scale, FP8 inputs; the fuzz model is Linear(32, 64) / Linear(64, 32)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)).eval()
    cfg = copy.deepcopy(mtq.W4A8_AWQ_BETA_CFG)
    for q in cfg["quant_cfg"]["*weight_quantizer"]:
        if q.get("block_sizes"):
            q["block_sizes"] = {**q["block_sizes"], -1: 16}
    calib = list(torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(2)))
    mtq.quantize(model, cfg, lambda m: [m(b) for b in calib])
    assert isinstance(model[0].weight_quantizer, SequentialQuantizer)
    assert model[0].input_quantizer.pre_quant_scale is not None
    path = tmp_path_factory.mktemp("fuzz") / "source.safetensors"
    mto.save(model, path)
    return path


def _run_fuzz(source, tmp_path, first: int, count: int) -> dict:
    script = tmp_path / "fuzz_worker.py"
    script.write_text(FUZZ_WORKER)
    out = tmp_path / "results.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [MOPT_PYTHONPATH] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = [sys.executable, str(script), str(source), str(tmp_path), str(first), str(count),
           str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FUZZ_TIMEOUT_S,
                              env=env, check=False)
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        last = stdout.strip().splitlines()[-1:] or ["before the first case"]
        pytest.fail(f"the fuzz hung (over {FUZZ_TIMEOUT_S} s) at {last[0]}")
    if proc.returncode != 0:
        last = proc.stdout.strip().splitlines()[-1:] or ["before the first case"]
        how = (f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exit code {proc.returncode}")
        pytest.fail(f"the fuzz worker died ({how}) at {last[0]}:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def test_fuzz_state_reader(fuzz_source, tmp_path):
    """Seeded mutations of the JSON state (deleted keys, other types, odd numbers, swapped and
    duplicated nodes, deep nesting, inserted modes, character flips), of the tensors (shapes,
    dtypes, values, names) and of the raw bytes (flips, header length, truncation, insertion):
    every restore succeeds (and the model then runs) or raises ValueError / TypeError /
    NotImplementedError / RuntimeError with a message, leaving the fresh model untouched; no
    other exception, no crash, no hang."""
    results = _run_fuzz(fuzz_source, tmp_path, 0, FUZZ_SEEDS)
    outcomes = results["outcomes"]
    summary = "\n".join(f"  {k}: {v}" for k, v in sorted(outcomes.items()))
    examples = "\n".join(f"  {k}: {v}" for k, v in sorted(results["examples"].items()))
    print(f"fuzz outcomes:\n{summary}\nfirst message of each:\n{examples}")
    bad = "\n".join(f"seed {s} ({label}): {msg}" for s, label, msg in results["bad"])
    assert not results["bad"], f"{len(results['bad'])} bad cases:\n{bad}\noutcomes:\n{summary}"
    # the fuzz reached both sides: files that restore and files that are refused
    restored = sum(v for k, v in outcomes.items() if k.endswith("-> restored"))
    refused = sum(v for k, v in outcomes.items() if "->" in k and not k.endswith("restored"))
    assert restored >= 10 and refused >= FUZZ_SEEDS // 2, summary
