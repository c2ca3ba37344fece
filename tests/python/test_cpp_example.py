"""The C++ example builds as a separate CMake project against the INSTALLED mopt package
(find_package(mopt) + mopt::mopt), runs on real data (scikit-learn's bundled handwritten digits),
and its quantized MLPs stay close to the float one.

The build tree to install from is $MOPT_BUILD_DIR (default: build/, where `make test` builds).
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD_DIR = pathlib.Path(os.environ.get("MOPT_BUILD_DIR", ROOT / "build"))
if not BUILD_DIR.is_absolute():
    BUILD_DIR = ROOT / BUILD_DIR
EXAMPLE = ROOT / "examples" / "cpp" / "quantize_mlp"


def _run(cmd, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, **kw)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
        f"{result.stderr[-4000:]}"
    )
    return result


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    assert (BUILD_DIR / "cmake_install.cmake").exists() and list(BUILD_DIR.glob("libmopt.so*")), (
        f"no built mopt tree at {BUILD_DIR}: run `make build` first, or set MOPT_BUILD_DIR")
    assert shutil.which("cmake") is not None, "cmake not found (make deps installs it)"
    tmp = tmp_path_factory.mktemp("cpp_example")
    prefix = tmp / "prefix"
    _run(["cmake", "--install", str(BUILD_DIR), "--prefix", str(prefix)])
    assert list(prefix.glob("lib*/cmake/mopt/moptConfig.cmake"))
    assert (prefix / "include" / "mopt" / "mopt.h").exists()

    build = tmp / "build"
    configure = [
        "cmake", "-S", str(EXAMPLE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={prefix};{torch.utils.cmake_prefix_path}",
    ]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    if shutil.which("ccache"):
        configure += ["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    _run(configure)
    _run(["cmake", "--build", str(build), "-j", "2"])
    exe = build / "quantize_mlp"
    assert exe.exists()
    return prefix, exe


def test_example_links_the_installed_library(installed_example):
    prefix, exe = installed_example
    ldd = _run(["ldd", str(exe)]).stdout
    line = next(l for l in ldd.splitlines() if "libmopt.so" in l)
    assert str(prefix.resolve()) in line, line  # not the build tree's copy


def test_example_quantizes_digits_mlp(installed_example, tmp_path):
    sklearn = pytest.importorskip("sklearn.datasets")
    digits = sklearn.load_digits()  # real 8x8 handwritten digits bundled with scikit-learn
    csv = tmp_path / "digits.csv"
    with open(csv, "w") as f:
        f.writelines(",".join(str(int(v)) for v in row) + f",{int(label)}\n"
                     for row, label in zip(digits.data, digits.target))
    _, exe = installed_example
    out = _run([str(exe), str(csv)], env={**os.environ, "OMP_NUM_THREADS": "2"}).stdout
    print(out)
    assert "TensorQuantizers found in model" in out
    assert "0.input_quantizer" in out and "calibrator=MaxCalibrator" in out
    float_acc = float(re.search(r"float model: test accuracy ([0-9.]+)", out).group(1))
    assert float_acc > 0.9
    results = {
        m.group(1): (float(m.group(2)), float(m.group(3)))
        for m in re.finditer(r"RESULT (\S+)\s+accuracy=([0-9.]+) \(float [0-9.]+\) "
                             r"rel_error=([0-9.]+)", out)
    }
    assert set(results) == {"INT8_DEFAULT_CFG", "FP8_DEFAULT_CFG"}
    # INT8 per-channel weights + per-tensor activations: a few 0.1% of output error; FP8 E4M3
    # (3 mantissa bits) a few %. Both keep the accuracy.
    int8_acc, int8_err = results["INT8_DEFAULT_CFG"]
    fp8_acc, fp8_err = results["FP8_DEFAULT_CFG"]
    assert 0 < int8_err < 0.03
    assert 0 < fp8_err < 0.08
    assert int8_acc >= float_acc - 0.02
    assert fp8_acc >= float_acc - 0.03
    print(f"python {sys.version.split()[0]}: int8 err {int8_err:.4f}, fp8 err {fp8_err:.4f}")


# One config per kind of quantizer state: per-channel INT8 with a static activation amax, INT4
# blocks with AWQ's pre_quant_scale, NVFP4 (dynamic blocks, per-tensor amax), a W4A8
# SequentialQuantizer, and a weight-only GPTQ config whose weights changed.
# "mode+CFG" sparsifies (mts.sparsify) before quantizing: the masks travel to C++ and back.
_PY_TO_CPP_CONFIGS = ["INT8_DEFAULT_CFG", "INT4_AWQ_CFG", "NVFP4_DEFAULT_CFG",
                      "W4A8_AWQ_BETA_CFG", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG",
                      "sparsegpt+INT8_DEFAULT_CFG", "wanda+NVFP4_DEFAULT_CFG"]


@pytest.mark.parametrize("config", _PY_TO_CPP_CONFIGS)
def test_python_saved_model_restores_in_cpp(installed_example, tmp_path, config):
    """mto.save in Python -> mopt::restore in the C++ example: the same outputs, bit for bit;
    and the C++ program's mopt::save restores in Python to the same model."""
    import contextlib
    import io

    import mopt.opt as mto
    import mopt.quantization as mtq
    from torch import nn

    from mopt import _C

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64))

    import mopt.sparsity as mts

    torch.manual_seed(0)
    model = mlp()
    calib = [torch.randn(16, 128) for _ in range(4)]
    sparse_mode, _, config = config.rpartition("+")
    modes = ([sparse_mode] if sparse_mode else []) + ["quantize"]
    if sparse_mode:
        mts.sparsify(model, sparse_mode, {"forward_loop": lambda m: [m(x) for x in calib]})
    with contextlib.redirect_stdout(io.StringIO()):
        mtq.quantize(model, getattr(mtq, config), lambda m: [m(x) for x in calib])
    x = torch.randn(32, 128)
    with torch.no_grad():
        expected = model(x)
    state, inputs, outputs, resaved = (tmp_path / n for n in (
        "state.safetensors", "x.safetensors", "y.safetensors", "resaved.safetensors"))
    mto.save(model, state)
    _C.save_safetensors(str(inputs), [("x", x)])

    _, exe = installed_example
    out = _run([str(exe.parent / "restore_mlp"), str(state), str(inputs), str(outputs),
                str(resaved)], env={**os.environ, "OMP_NUM_THREADS": "2"}).stdout
    assert f"modes: {' '.join(modes)}\n" in out
    (name, y), = _C.load_safetensors(str(outputs))[0]
    assert torch.equal(y, expected), (y - expected).abs().max()

    fresh = mlp()
    mto.restore(fresh, resaved)
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
    assert [m for m, _ in mto.modelopt_state(fresh)["modelopt_state_dict"]] == modes
    if sparse_mode:
        assert mts.is_sparse(fresh[0]) and torch.equal(fresh[0]._weight_mask, model[0]._weight_mask)
