"""Write checkpoints with nvidia-modelopt for the tests of mopt's reader of ModelOpt's files.

Usage: python3 modelopt_writer.py [--keep-going] <out_dir> <CONFIG_NAME>[:<variant>]...

For each name (an attribute of modelopt.torch.quantization, e.g. INT8_DEFAULT_CFG) it builds the
same small seeded model, quantizes it with ModelOpt and a seeded calibration loop, and writes into
<out_dir> (variants: see parse_name; "pad" names the files <name>-pad):

* <name>.pth        the full checkpoint, mto.save(model, ...)
                    ({"modelopt_state": ..., "model_state_dict": ...})
* <name>_state.pth  the bare state, torch.save(mto.modelopt_state(model), ...)
* <name>_sd.pth     torch.save(model.state_dict(), ...), the weights that go with <name>_state.pth
* <name>_io.pt      plain tensors only: "calib" (the calibration batches, stacked), "x" (a fixed test
                    input), "dims" (in, hidden, out of the model) and, unless the variant is
                    "state" or "nocalib", "y" (ModelOpt's output on x)

Runs in its own process: ModelOpt must never be imported into the process that imports mopt.
With --keep-going a config that fails is reported on stderr (``FAILED <name>: <error>``) and the
others are still written; without it the first failure ends the script with an error.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

# The architecture the tests rebuild in mopt: Linear(in, hidden), ReLU, Linear(hidden, out).
# DIMS fit every block format written here: in-features 128 and 256 hold INT4 blocks of 128, NVFP4
# blocks of 16 and MX blocks of 32. A name with the suffix ":pad" (file stem "<name>-pad") uses
# PAD_DIMS instead, whose first in-features (96) is no multiple of 128: ModelOpt then pads the
# INT4 blocks and stores the padding and a slice in the quantizer state.
DIMS = (128, 256, 128)
PAD_DIMS = (96, 256, 128)
CALIB_BATCHES, CALIB_BATCH_SIZE, TEST_BATCH_SIZE = 4, 8, 4
SEED = 1234


def build_model(dims=DIMS):
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    d_in, hidden, d_out = dims
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out)).eval()


def inputs(dims=DIMS):
    import torch

    g = torch.Generator().manual_seed(SEED + 1)
    calib = torch.randn(CALIB_BATCHES, CALIB_BATCH_SIZE, dims[0], generator=g)
    x = torch.randn(TEST_BATCH_SIZE, dims[0], generator=g)
    return calib, x


def parse_name(arg: str) -> tuple[str, str, tuple[int, int, int], str]:
    """'<CONFIG>[:<variant>]' -> (config name, file stem, dims, variant).

    Variants: "" quantize with the calibration loop and record ModelOpt's output; "pad" the same
    on PAD_DIMS (file stem "<CONFIG>-pad"); "state" quantize with the calibration loop but record
    no output (configs whose calibration runs on the CPU but whose quantized forward needs CUDA in
    ModelOpt 0.47, e.g. NVFP4); "nocalib" mtq.quantize(model, cfg, forward_loop=None) and no
    output (configs whose calibration itself needs CUDA, e.g. AWQ with NVFP4, MX formats).
    """
    name, _, variant = arg.partition(":")
    if variant not in ("", "pad", "state", "nocalib"):
        raise ValueError(f"unknown variant {variant!r} in {arg!r}")
    if variant == "pad":
        return name, f"{name}-pad", PAD_DIMS, variant
    return name, name, DIMS, variant


def write(out_dir: str, arg: str) -> None:
    import torch

    import modelopt.torch.opt as mto
    import modelopt.torch.quantization as mtq

    name, stem, dims, variant = parse_name(arg)
    cfg = getattr(mtq, name)
    model = build_model(dims)
    calib, x = inputs(dims)

    def forward_loop(m):
        for batch in calib:
            m(batch)

    y = None
    with torch.no_grad():
        mtq.quantize(model, cfg, None if variant == "nocalib" else forward_loop)
        if variant in ("", "pad"):
            y = model(x)

    base = os.path.join(out_dir, stem)
    mto.save(model, base + ".pth")
    torch.save(mto.modelopt_state(model), base + "_state.pth")
    torch.save(model.state_dict(), base + "_sd.pth")
    io = {"calib": calib, "x": x, "dims": torch.tensor(dims)}
    if y is not None:
        io["y"] = y.detach()
    torch.save({k: v.clone().contiguous() for k, v in io.items()}, base + "_io.pt")
    if y is None:
        return

    # The reference output must be what the file means: ModelOpt restoring its own checkpoint into
    # a fresh model gives the same output, bit for bit.
    fresh = mto.restore(build_model(dims), base + ".pth")
    with torch.no_grad():
        y2 = fresh(x)
    if not torch.equal(y, y2):
        raise RuntimeError(
            f"{name}: ModelOpt's own restore differs from the calibrated model "
            f"(max abs diff {(y - y2).abs().max().item()})"
        )


def main(argv: list[str]) -> int:
    keep_going = "--keep-going" in argv
    args = [a for a in argv if a != "--keep-going"]
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir, names = args[0], args[1:]
    os.makedirs(out_dir, exist_ok=True)
    warnings.filterwarnings("ignore")
    failed = []
    for name in names:
        try:
            write(out_dir, name)
        except Exception as e:
            if not keep_going:
                raise
            failed.append(name)
            print(f"FAILED {name}: {type(e).__name__}: {e}", file=sys.stderr)
            traceback.print_exc(limit=3, file=sys.stderr)
        else:
            print(f"wrote {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
