"""Shared pytest setup: import mopt from the source tree, seed, locate real data."""

import os
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# ../shared/data beside the checkout holds real models and text; tests that need it skip cleanly
# elsewhere only when the packaged copy (python/mopt/data) is missing too.
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def cuda_available() -> bool:
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def cxx_bridge():
    """The test-only extension over the C++ module API (built by CMake into the build folder;
    $MOPT_BUILD_DIR or ./build). Fails, rather than skips, when the build lacks it."""
    import importlib

    import mopt  # noqa: F401  (loads libmopt first, so the bridge shares it)

    build = pathlib.Path(os.environ.get("MOPT_BUILD_DIR", ROOT / "build"))
    folder = build / "python_test_bridge"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("mopt_test_bridge")
    except ImportError as e:
        raise RuntimeError(f"the test bridge mopt_test_bridge is not built in {folder} "
                           "(make test builds it; set MOPT_BUILD_DIR for another build folder)"
                           ) from e
