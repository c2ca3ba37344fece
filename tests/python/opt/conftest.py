"""Files written by nvidia-modelopt, once per session, for the tests of mopt's reader of them.

ModelOpt runs in a subprocess (modelopt_writer.py): it is never imported into the pytest process,
which imports mopt. The tests skip only when nvidia-modelopt is not installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

WRITER = pathlib.Path(__file__).with_name("modelopt_writer.py")

# Quantized with the calibration loop; ModelOpt's output on the test input is recorded.
OUTPUT_CONFIGS = [
    "INT8_DEFAULT_CFG",
    "INT8_SMOOTHQUANT_CFG",
    "FP8_DEFAULT_CFG",
    "INT4_BLOCKWISE_WEIGHT_ONLY_CFG",
    "INT4_AWQ_CFG",
    "W4A8_AWQ_BETA_CFG",
    # First in-features 96, no multiple of INT4's block of 128: ModelOpt pads the blocks and keeps
    # a tuple of slices in the state (the reason slice is in ALLOWED_GLOBALS).
    "INT4_AWQ_CFG-pad",
    "INT4_BLOCKWISE_WEIGHT_ONLY_CFG-pad",
]
# ModelOpt 0.47 cannot run these formats' quantized forward on the CPU (NVFP4 and MX fake quant
# need its CUDA kernels: "amax must be a CUDA tensor for dynamic block quantization", "Skipping
# extension modelopt_cuda_ext_mx because CUDA is not available"), so there is no reference output.
# Their states are still written, for the reader: NVFP4_DEFAULT_CFG calibrated (its max
# calibration runs on the CPU), the other two by mtq.quantize(model, cfg, forward_loop=None)
# (AWQ on NVFP4 runs quantized forwards while calibrating; MX needs no calibration).
STATE_ONLY_CONFIGS = [
    "NVFP4_DEFAULT_CFG",
    "NVFP4_AWQ_LITE_CFG",
    "MXFP8_DEFAULT_CFG",
]
_WRITER_ARGS = {"NVFP4_DEFAULT_CFG": "NVFP4_DEFAULT_CFG:state",
                "NVFP4_AWQ_LITE_CFG": "NVFP4_AWQ_LITE_CFG:nocalib",
                "MXFP8_DEFAULT_CFG": "MXFP8_DEFAULT_CFG:nocalib"}
ALL_CONFIGS = OUTPUT_CONFIGS + STATE_ONLY_CONFIGS


def writer_arg(stem: str) -> str:
    if stem in _WRITER_ARGS:
        return _WRITER_ARGS[stem]
    return stem.replace("-pad", ":pad")


@dataclasses.dataclass(frozen=True)
class ModeloptFiles:
    dir: pathlib.Path

    def full(self, stem: str) -> pathlib.Path:
        """mto.save(model, path): {"modelopt_state", "model_state_dict"}."""
        return self.dir / f"{stem}.pth"

    def state(self, stem: str) -> pathlib.Path:
        """torch.save(mto.modelopt_state(model), path)."""
        return self.dir / f"{stem}_state.pth"

    def weights(self, stem: str) -> pathlib.Path:
        """torch.save(model.state_dict(), path)."""
        return self.dir / f"{stem}_sd.pth"

    def io(self, stem: str) -> pathlib.Path:
        """Plain tensors: calib, x, dims and (OUTPUT_CONFIGS only) y, ModelOpt's output on x."""
        return self.dir / f"{stem}_io.pt"


@pytest.fixture(scope="session")
def modelopt_files(tmp_path_factory) -> ModeloptFiles:
    if importlib.util.find_spec("modelopt") is None:
        pytest.skip("nvidia-modelopt is not installed: the files it writes cannot be made")
    out = tmp_path_factory.mktemp("modelopt_files")
    cmd = [sys.executable, str(WRITER), str(out)] + [writer_arg(s) for s in ALL_CONFIGS]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env,
                          check=False)
    if proc.returncode != 0:
        pytest.fail(f"modelopt_writer.py failed (rc {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return ModeloptFiles(out)
