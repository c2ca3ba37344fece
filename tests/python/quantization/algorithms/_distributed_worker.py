"""One rank of the distributed calibration test (launched by torchrun from
test_distributed.py): quantizes the shared MLP with its own calibration shard for every case and
saves the resulting state_dict, so the test can compare the ranks with one process that
calibrates on the union of the shards."""

import argparse
import copy
import os
import pathlib
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[4] / "python"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import mopt.quantization as mtq  # noqa: E402
from _distributed_cases import CASES, config_of, make_model, shard  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    out = pathlib.Path(args.out)
    for name in CASES:
        model = make_model()
        batches = shard(rank, world)
        mtq.quantize(model, copy.deepcopy(config_of(name)), lambda m: [m(b) for b in batches])
        torch.save(model.state_dict(), out / f"{name}.rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
