"""`mopt cache` (mopt.cache_diffusion.run): the table, results.json in mopt ptq's schema, the
sample grid, and bad input refused before anything is written. Runs use few sampling steps
(--steps) so that a whole calibration takes seconds."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mopt.cache_diffusion import models
from mopt.cache_diffusion.run import run_cache
from mopt.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

_ROW_KEYS = {"config", "status", "metric", "denoiser_calls", "flops_ratio", "wall_speedup",
             "psnr_db", "psnr_min_db", "ssim", "fidelity", "policy"}


def _quick(**kw):
    args = dict(steps=20, samples=4, calib_seeds=1, orders=(0, 1), families=("interval",),
                progress=False, budget_psnr=15.0)
    args.update(kw)
    return run_cache(**args)


def test_fashion_rows_schema_and_outputs(tmp_path):
    out = tmp_path / "run"
    res = _quick(model="default", quantize="int8", quant_percentile=50.0, out_dir=out)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["metric"] == "psnr_db"
    assert on_disk["setup"]["kind"] == "fashion" and on_disk["setup"]["num_steps"] == 20
    assert (out / "cache_samples.png").stat().st_size > 0
    rows = {r["config"]: r for r in on_disk["rows"]}
    assert list(rows)[0] == "uncached"
    assert all(_ROW_KEYS <= set(r) for r in rows.values())
    assert all(r["status"] != "failed" for r in rows.values()), rows
    step = [r for c, r in rows.items() if c.startswith("step:")]
    block = [r for c, r in rows.items() if c.startswith("block[inner]:")]
    qname = "int8[steps p50 max]"
    quant = [r for c, r in rows.items() if c.startswith(qname + "+step:")]
    assert step and len(block) == 1 and len(quant) == 1 and qname in rows
    assert on_disk["setup"]["quant_algorithm"] == {
        "method": "step_percentile", "num_steps": 20, "percentile": 50.0, "collect": "max"}
    for r in step + block + quant:
        # calls in whole-denoiser equivalents and the FLOPs ratio describe the same run
        assert math.isclose(r["denoiser_calls"] * r["flops_ratio"], 20, rel_tol=1e-9)
        assert r["metric"] == r["psnr_db"]  # None: identical to uncached (infinite PSNR)
        if r["psnr_db"] is not None:
            assert r["psnr_min_db"] <= r["psnr_db"]
    calibrated = step[0]
    assert calibrated["calib_psnr_db"] >= 15.0
    assert calibrated["denoiser_calls"] < 20  # 15 dB at 20 steps leaves something to skip
    # block caching saves at most the block's share of the FLOPs
    pipe = models.load_ddpm(kind="fashion")
    flops = models.flops_by_module(pipe.denoiser, *pipe.example_inputs(1))
    assert 1.0 <= block[0]["flops_ratio"] <= flops[""] / (flops[""] - flops["inner"]) + 1e-9
    # the quantized rows are compared with the float uncached samples
    assert rows[qname]["psnr_db"] < 200 and rows[qname]["flops_ratio"] == 1.0
    assert res["rows"][0]["config"] == "uncached"


def test_measured_psnr_is_recomputed_from_the_samples(tmp_path):
    """The step row's PSNR is what sampling with its policy gives on the evaluation seeds."""
    import mopt.cache_diffusion as mtc

    res = _quick(model="mnist", block=None, out_dir=None, plot=False)
    row = next(r for r in res["rows"] if r["config"].startswith("step:") and r["policy"])
    pipe = models.load_ddpm(kind="mnist")
    ref = pipe(4, seed=1000, num_inference_steps=20)
    mtc.cachify.prepare(pipe, [{"level": "step", "policy": row["policy"],
                                "forecast_space": row["forecast_space"]}])
    out = pipe(4, seed=1000, num_inference_steps=20)
    assert math.isclose(mtc.metrics.psnr_db(out, ref), row["psnr_db"], rel_tol=1e-9)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget-psnr", "-1"], "--budget-psnr"),
        (["--samples", "1"], "--samples"),
        (["--quantize", "nope"], "nope"),
        (["--model", "mnist", "--block", "inner"], "--block 'inner'"),
        (["--model", "/nonexistent/ddpm.pt"], "no such checkpoint"),
        (["--orders", "3"], "--orders"),
        (["--families", "random"], "--families"),
        (["--spaces", "latent"], "--spaces"),
        (["--quant-percentile", "50"], "needs --quantize"),
        (["--quantize", "int8", "--quant-percentile", "101"], "--quant-percentile"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "new" / "folder"
    rc = main(["cache", "--steps", "10", "--samples", "2", "--out", str(out), *argv])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_earlier_results_are_kept_without_overwrite(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")
    rc = main(["cache", "--steps", "10", "--out", str(tmp_path)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == "{}"


def test_cli_prints_the_table(tmp_path, capsys):
    rc = main(["cache", "--model", "mnist", "--steps", "12", "--samples", "2", "--calib-seeds",
               "1", "--orders", "1", "--families", "interval", "--budget-psnr", "20",
               "--no-plot", "--no-progress", "--out", str(tmp_path / "o")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| config | denoiser calls | FLOPs ratio |" in text and "| uncached |" in text
    assert not (tmp_path / "o" / "cache_samples.png").exists()
    assert torch.get_num_threads() >= 1
