#!/usr/bin/env python3
"""2:4 SparseGPT: mopt's solver and mts.sparsify against what a user would run instead.

Table 1, the solver alone, per weight shape [rows, cols] (fp32 weight drawn at random, Hessian
H = 2/n X^T X of --tokens random inputs correlated through a fixed mixing matrix, the same kind
of data bench_gptq.py uses), times per solve of

* mopt      ``mopt._C.sparsegpt_prune(W, H, 2, 4, col_block_size=128, hessian_damp=0.1)``
            (one Cholesky factorization of the damped Hessian, fp32 where a bound on its
            condition number allows, then the C++ column loop of kernels/gptq over blocks of 128
            columns, parallel over rows, with one GEMM per block carrying the earlier blocks'
            changes),
* ref       the reference formulation, IST-DASLab sparsegpt's ``SparseGPT.fasterprune``
            (prunen=2, prunem=4, blocksize=128, percdamp=0.1) written out plainly in PyTorch
            below (``reference_fasterprune``): dead columns, damping, cholesky /
            cholesky_inverse / cholesky(upper), then per block of 128 columns a Python loop over
            the columns choosing each group's mask by W^2 / diag(Hinv)^2 at ``i % prunem == 0``
            and a rank-1 update of the block, and the Err1 lazy update of the later columns,
* modelopt  nvidia-modelopt's ``create_sgpt_mask(W, H, config)`` (modelopt.torch.sparsity.
            weight_sparsity.sparsegpt) with {"pattern": "2:4 sparsity", "col_block_size": 128,
            "row_block_size": -1, "hessian_damp": 0.1} (the same algorithm, written much like the
            reference); skipped with a note when nvidia-modelopt cannot be imported.

The reference and ModelOpt damp the Hessian in place, so each of their calls gets a fresh copy
(H.clone(), inside the clock: a user who keeps the Hessian pays it too; a few ms at 2048); mopt
leaves its input alone (checked). Each time is the median of --repeats calls after one warm-up
call, the three implementations interleaved so that a change of load hits them alike. The table
also checks the masks: the fraction of entries where mopt's mask equals the reference's (the same
algorithm: they should agree except where float rounding breaks a near tie) and where
ModelOpt's does, and the largest difference of mopt's updated weights from the reference's,
relative to the largest |W|.

Table 2, end to end: ``mts.sparsify(model, "sparsegpt", {"forward_loop": loop})`` (mopt, one
decoder layer at a time) against nvidia-modelopt's ``mts.sparsify(model, "sparsegpt",
config={"forward_loop": loop, "device": "cpu"})`` (one pass collecting every layer's Hessian, then
create_sgpt_mask per layer), each on a fresh copy of the float model made before the clock
starts, wall time of the sparsify call (median of --e2e-repeats runs, interleaved). Models: the
shipped stories260K (35 sparsified linear layers of 64-172 inputs; lm_head stays dense in both),
calibrated on 8 windows of 128 tokens (seed 0) of the shipped calibration text, batch 2, as the
tests do; and, unless --no-large, a Llama with random weights built from transformers'
LlamaConfig (hidden 512, intermediate 1376, 4 layers, 8 heads, the stories tokenizer's 512-token
vocabulary so the same calibration ids apply; 28 sparsified layers of 512 and 1376 inputs).

Run: PYTHONPATH=python python3 benchmarks/bench_sparsity.py
     [--shapes 64x64,512x512,1024x1024,2048x2048] [--repeats 5] [--e2e-repeats 3] [--threads N]
     [--damp 0.1] [--breakdown] [--no-e2e]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import os
import pathlib
import statistics
import sys
import time
import warnings

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import mopt
import mopt.sparsity as mts
from _bench_common import print_table, time_interleaved
from bench_opt_state import load_average, machine_name
from mopt import _C
from mopt.data import default_calib_text
from mopt.eval import make_forward_loop, text_calibration_batches
from mopt.models import Llama2cTokenizer, load_llama2c

PRUNE_N, PRUNE_M = 2, 4
BLOCKSIZE = 128
PERCDAMP = 0.1
MO_SOLVER_CFG = {"pattern": "2:4 sparsity", "col_block_size": BLOCKSIZE, "row_block_size": -1,
                 "hessian_damp": PERCDAMP}


# ---------------------------------------------------------------------------------------------
# The reference: IST-DASLab sparsegpt, SparseGPT.fasterprune (sparsegpt.py), N:M branch.


@torch.no_grad()
def reference_fasterprune(weight: torch.Tensor, hessian: torch.Tensor, prunen: int = PRUNE_N,
                          prunem: int = PRUNE_M, blocksize: int = BLOCKSIZE,
                          percdamp: float = PERCDAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned and updated weight, bool mask of the PRUNED entries) of the published algorithm.
    Damps `hessian` in place, as the reference does with its self.H."""
    W = weight.clone().float()
    rows, columns = W.shape
    H = hessian
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    losses = torch.zeros(rows)

    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H

    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        mask1 = torch.zeros_like(W1) == 1

        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if i % prunem == 0:
                tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d ** 2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1

        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        losses += torch.sum(Losses1, 1) / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W, pruned


# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_fd2():
    """torch.profiler's C++ side writes status lines straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def quiet():
    """ModelOpt prints a line per layer; kept out of the tables."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def load_modelopt():
    """(create_sgpt_mask, modelopt.torch.sparsity, version) or (None, None, why)."""
    try:
        with quiet():
            import modelopt
            import modelopt.torch.sparsity as mts_mo
            from modelopt.torch.sparsity.weight_sparsity.sparsegpt import create_sgpt_mask
        return create_sgpt_mask, mts_mo, modelopt.__version__
    except Exception as e:  # noqa: BLE001  (any import failure: the column is skipped)
        return None, None, f"unavailable ({type(e).__name__}: {e})"


def problem(rows: int, cols: int, tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight [rows, cols] and the Hessian 2/n X^T X of n = `tokens` correlated inputs."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + 0.2 * torch.randn(cols, cols, generator=gen) / cols**0.5
    scale = torch.exp(0.5 * torch.randn(cols, generator=gen))  # uneven channel magnitudes
    x = (torch.randn(tokens, cols, generator=gen) @ mix) * scale
    h = (2.0 / tokens) * (x.T @ x)
    w = torch.randn(rows, cols, generator=gen) / cols**0.5
    return w, h


def fmt_ms(s: float) -> str:
    ms = s * 1e3
    return f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def solver_table(shapes, tokens: int, repeats: int, create_sgpt_mask, notes: list[str]) -> None:
    header = ["shape [rows, cols]", "mopt ms", "ref ms", "modelopt ms", "mopt/ref",
              "mopt/modelopt", "mask mopt = ref", "mask modelopt = ref", "max |dW| mopt vs ref"]
    rows_out = []
    for rows, cols in shapes:
        w, h = problem(rows, cols, tokens)
        h_before = h.clone()
        fns = {
            "mopt": lambda: _C.sparsegpt_prune(w, h, PRUNE_N, PRUNE_M, col_block_size=BLOCKSIZE,
                                               hessian_damp=PERCDAMP),
            "ref": lambda: reference_fasterprune(w, h.clone(), percdamp=PERCDAMP),
        }
        if create_sgpt_mask is not None:
            fns["modelopt"] = lambda: create_sgpt_mask(w, h.clone(), MO_SOLVER_CFG)
        with torch.no_grad():
            t = time_interleaved(fns, repeats=repeats, warmup=1)
            ours = fns["mopt"]()
            ref_w, ref_pruned = fns["ref"]()
            mo_keep = fns["modelopt"]() if "modelopt" in fns else None
        assert torch.equal(h, h_before), "mopt's sparsegpt_prune changed its Hessian"
        ref_keep = ~ref_pruned
        agree = (ours.mask == ref_keep).float().mean().item()
        kept = ours.mask.float().mean().item()
        if abs(kept - PRUNE_N / PRUNE_M) > 1e-9:
            notes.append(f"{rows}x{cols}: mopt keeps {kept:.4f} of the weights, not 0.5")
        dw = ((ours.weight - ref_w).abs().max() / w.abs().max()).item()
        mo_agree = "-" if mo_keep is None else f"{100 * (mo_keep == ref_keep).float().mean().item():.3f}%"
        mo_t = t.get("modelopt")
        rows_out.append([
            f"[{rows}, {cols}]", fmt_ms(t["mopt"]), fmt_ms(t["ref"]),
            "-" if mo_t is None else fmt_ms(mo_t),
            f"{t['mopt'] / t['ref']:.3f}x",
            "-" if mo_t is None else f"{t['mopt'] / mo_t:.3f}x",
            f"{100 * agree:.3f}%", mo_agree, f"{dw:.1e}",
        ])
        if agree < 0.999:
            notes.append(f"{rows}x{cols}: mopt's mask equals the reference's on only "
                         f"{100 * agree:.3f}% of entries (< 99.9%)")
    print_table(header, rows_out)


def breakdown_table(shapes, tokens: int, repeats: int) -> None:
    """Where mopt's solve time goes: the Hessian factor alone (``_C.gptq_hessian_inverse`` with
    the arguments sparsegpt_prune passes it: one Cholesky factorization, fp32 or fp64 as the
    condition bound decides, and the per-block matrices U_cc and R[:c0, c] U_cc), the
    left-looking GEMMs (torch.profiler self time of aten::addmm_ inside sparsegpt_prune), and
    the rest (the column-loop kernel of kernels/gptq, copies, checks). Next to it, timed the same
    way, the reference's fp32 factorizations alone (cholesky, cholesky_inverse, cholesky upper).
    Shapes with fewer than 512 columns are skipped (the profiler's own overhead is larger than
    the parts there)."""
    from torch.profiler import ProfilerActivity, profile
    header = ["shape", "mopt wall ms", "factor ms", "factor precision", "GEMM ms",
              "column loop + rest ms", "ref fp32 factorizations ms"]
    out = []
    for rows, cols in shapes:
        if cols < 512:
            continue
        w, h = problem(rows, cols, tokens)
        call = lambda: _C.sparsegpt_prune(w, h, PRUNE_N, PRUNE_M, col_block_size=BLOCKSIZE,
                                          hessian_damp=PERCDAMP)
        factor = lambda: _C.gptq_hessian_inverse(h, PERCDAMP, False, BLOCKSIZE)

        def ref_inverse():
            hh = h.clone()
            hh.diagonal().add_(PERCDAMP * hh.diagonal().mean())
            return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hh)),
                                         upper=True)

        t = time_interleaved({"mopt": call, "factor": factor, "inv": ref_inverse},
                             repeats=repeats, warmup=1)
        fp32 = factor()[4]
        with quiet_fd2(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                call()
        gemm = sum(ev.self_cpu_time_total for ev in prof.key_averages()
                   if ev.key == "aten::addmm_") / 1e3 / repeats
        wall, fac = t["mopt"] * 1e3, t["factor"] * 1e3
        out.append([f"[{rows}, {cols}]", f"{wall:.1f}", f"{fac:.1f}", "fp32" if fp32 else "fp64",
                    f"{gemm:.1f}", f"{wall - fac - gemm:.1f}", f"{t['inv'] * 1e3:.1f}"])
    print_table(header, out)


def stories_model():
    return load_llama2c().eval()


def large_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=8, vocab_size=512,
                      max_position_embeddings=256, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def e2e_table(models: dict, loop, repeats: int, mts_mo, notes: list[str]) -> None:
    header = ["model", "sparsified layers", "mopt s", "modelopt s", "mopt/modelopt"]
    rows_out = []
    for label, build in models.items():
        base = build()

        def run_mopt():
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            with quiet():
                mts.sparsify(model, "sparsegpt", {"forward_loop": loop})
            return time.perf_counter() - t0, model

        def run_mo():
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            with quiet():
                mts_mo.sparsify(model, "sparsegpt",
                                config={"forward_loop": loop, "device": "cpu"})
            return time.perf_counter() - t0, model

        samples = {"mopt": [], "modelopt": []}
        mo_error = None
        n_layers = 0
        for _ in range(repeats):
            dt, model = run_mopt()
            samples["mopt"].append(dt)
            n_layers = sum(1 for m in model.modules() if isinstance(m, mts.SparseModule))
            if mts_mo is not None and mo_error is None:
                try:
                    dt, _ = run_mo()
                    samples["modelopt"].append(dt)
                except Exception as e:  # noqa: BLE001  (reported in the table)
                    mo_error = f"{type(e).__name__}: {e}"
        t_ours = statistics.median(samples["mopt"])
        if samples["modelopt"]:
            t_mo = statistics.median(samples["modelopt"])
            mo_cell, ratio = f"{t_mo:.2f}", f"{t_ours / t_mo:.3f}x"
        else:
            mo_cell, ratio = "-", "-"
            notes.append(f"{label}: ModelOpt's sparsegpt did not run on CPU: {mo_error}"
                         if mo_error else f"{label}: ModelOpt not available")
        rows_out.append([label, str(n_layers), f"{t_ours:.2f}", mo_cell, ratio])
        notes.append(f"{label}: mopt samples " + ", ".join(f"{s:.2f}" for s in samples["mopt"])
                     + " s; modelopt samples "
                     + (", ".join(f"{s:.2f}" for s in samples["modelopt"]) or "-") + " s")
    print_table(header, rows_out)


def main() -> None:
    global PERCDAMP
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="64x64,512x512,1024x1024,2048x2048",
                    help="comma-separated ROWSxCOLS weight shapes of the solver table")
    ap.add_argument("--tokens", type=int, default=4096,
                    help="calibration inputs behind each solver-table Hessian")
    ap.add_argument("--repeats", type=int, default=5, help="timed solves per implementation")
    ap.add_argument("--e2e-repeats", type=int, default=3)
    ap.add_argument("--no-e2e", action="store_true", help="only the solver table")
    ap.add_argument("--breakdown", action="store_true",
                    help="also profile where mopt's solve time goes, per shape")
    ap.add_argument("--no-large", action="store_true", help="skip the LlamaConfig model")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--damp", type=float, default=PERCDAMP,
                    help="hessian_damp / percdamp of the solver tables (0.01, GPTQ's default, "
                    "sends mopt's factorization of these Hessians to fp64)")
    args = ap.parse_args()
    PERCDAMP = args.damp
    MO_SOLVER_CFG["hessian_damp"] = args.damp
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",") if s]

    create_sgpt_mask, mts_mo, mo_version = load_modelopt()
    start = time.perf_counter()
    print(f"# 2:4 SparseGPT | {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} | "
          f"{machine_name()} | torch {torch.__version__}, {torch.get_num_threads()} threads | "
          f"mopt {getattr(mopt, '__version__', '?')} vs nvidia-modelopt {mo_version} | "
          f"load average {load_average()} at the start")
    notes: list[str] = []
    if create_sgpt_mask is None:
        notes.append(f"nvidia-modelopt {mo_version}: the modelopt columns are skipped")

    print(f"\n## Solver: fp32 weight, Hessian of {args.tokens} correlated inputs, 2:4, "
          f"blocks of {BLOCKSIZE} columns, damp {PERCDAMP}; median of {args.repeats} solves "
          "after one warm-up, interleaved\n")
    solver_table(shapes, args.tokens, args.repeats, create_sgpt_mask, notes)
    if args.breakdown:
        print(f"\n## Where mopt's solve time goes (median of {args.repeats}, interleaved: the "
              "Hessian factor alone, the left-looking GEMMs by torch.profiler; 'column loop + "
              "rest' = wall minus both)\n")
        breakdown_table(shapes, args.tokens, args.repeats)

    if not args.no_e2e:
        tok = Llama2cTokenizer.from_file()
        batches = text_calibration_batches(tok.encode(default_calib_text()), 8, 128, seed=0)
        loop = make_forward_loop(batches, batch_size=2)
        models = {"stories260K": stories_model}
        if not args.no_large:
            models["Llama h512 i1376 L4 (random)"] = large_llama
        print(f"\n## End to end: mts.sparsify(model, 'sparsegpt') on 8 x 128 calibration tokens "
              f"(batch 2); median of {args.e2e_repeats} runs, interleaved, fresh model each\n")
        e2e_table(models, loop, args.e2e_repeats, mts_mo, notes)

    print(f"\nload average {load_average()} at the end; {time.perf_counter() - start:.0f} s in all")
    for n in notes:
        print(f"note: {n}")


if __name__ == "__main__":
    main()
