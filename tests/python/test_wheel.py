"""The README's third path: `pip install --no-build-isolation .` gives a working package.

Builds the wheel from this checkout (incremental in build-wheel/ after the first run), installs it
into a temporary folder and, in a fresh interpreter that cannot see the source tree, quantizes a
model and loads the shipped stories260K data.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytest.importorskip("scikit_build_core")


def test_wheel_installs_and_runs(tmp_path):
    wheels = tmp_path / "wheels"
    # the wheel's compiles go through ccache too when it is installed, as make's do
    ccache = shutil.which("ccache")
    launcher = [f"--config-settings=cmake.define.CMAKE_CXX_COMPILER_LAUNCHER={ccache}"] if ccache \
        else []
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
         *launcher, str(ROOT), "-w", str(wheels)],
        check=True, cwd=tmp_path, timeout=1800)
    (whl,) = wheels.glob("mopt-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert any(n.startswith("mopt/_C") and n.endswith(".so") for n in names), names
    assert any(n.startswith("mopt/libmopt.so") for n in names), names
    for f in ("mopt/data/stories260K.bin", "mopt/data/LICENSE", "mopt/quantization/config.py"):
        assert f in names
    assert not any("__pycache__" in n for n in names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(whl)], check=True, timeout=600)
    code = (
        "import torch, mopt, mopt.quantization as mtq\n"
        "from mopt import data\n"
        f"assert mopt.__file__.startswith({str(site)!r}), mopt.__file__\n"
        "m = torch.nn.Sequential(torch.nn.Linear(16, 8))\n"
        "x = torch.randn(4, 16)\n"
        "mtq.quantize(m, mtq.INT8_DEFAULT_CFG, lambda mm: mm(x))\n"
        "assert m[0].weight_quantizer.amax.shape == (8, 1)\n"
        "assert len(data.default_eval_text()) > 1000\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MOPT_EXT_DIR")}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "ok", out.stderr[-3000:]
