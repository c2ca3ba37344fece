"""Calibration across processes (torchrun, gloo on CPU): every rank quantizes with its own shard
and ends with the quantizers one process gets by calibrating on the union of the shards."""

import copy
import os
import pathlib
import socket
import subprocess
import sys

import pytest
import torch

import mopt.quantization as mtq
from ._distributed_cases import CASES, config_of, make_model, union_batches

HERE = pathlib.Path(__file__).resolve().parent
WORLD = 2

# Statistics that are maxima, integer counts, fp64 sums (MSE losses, GPTQ Hessians): bit-identical
# to one process. AWQ lite averages per-batch fp32 means, which depend on how tokens are batched.
EXACT = {"int8_max", "int8_entropy", "int8_percentile", "int8_smoothquant", "int8_mse", "int4_gptq"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
           f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(HERE / "_distributed_worker.py"),
           "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return {name: [torch.load(out / f"{name}.rank{r}.pt", weights_only=True)
                   for r in range(WORLD)] for name in CASES}


def _single_process(name: str) -> dict:
    model = make_model()
    batches = union_batches(WORLD)
    mtq.quantize(model, copy.deepcopy(config_of(name)), lambda m: [m(b) for b in batches])
    return model.state_dict()


@pytest.mark.parametrize("name", CASES)
def test_ranks_equal_one_process_on_the_union(ranks, name):
    rank0, rank1 = ranks[name]
    assert rank0.keys() == rank1.keys()
    for key in rank0:  # every rank ends with identical quantizers and weights
        assert torch.equal(rank0[key], rank1[key]), key
    single = _single_process(name)
    assert single.keys() == rank0.keys()
    assert any(k.endswith("_amax") for k in single)
    for key, value in single.items():
        if name in EXACT:
            assert torch.equal(rank0[key], value), key
        else:
            torch.testing.assert_close(rank0[key], value, rtol=1e-4, atol=1e-6, msg=key)
