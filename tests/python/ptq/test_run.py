"""mopt.ptq.run: one config's quantize/evaluate step, threads, and what a run logs."""

import inspect
import json
import logging
import warnings

import pytest
import torch
from torch import nn

from mopt import ptq
from mopt.ptq import run


def test_unavailable_config_is_reported_not_raised():
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x):
            raise NotImplementedError("format X is not built")

    entry = ptq.PtqConfig("int8_wo", "INT8_WEIGHT_ONLY_CFG", "d")
    res = run._try_config(entry, Fails(), None, lambda m: m(torch.zeros(1, 4)))
    assert res.status == "not available" and res.reason == "format X is not built"
    base = nn.Sequential(nn.Linear(4, 4))
    kv = run._try_config(ptq.PTQ_CONFIGS["fp8_kv"], base, None, lambda m: (0.0, None))
    assert kv.status == "not available" and "k/v bmm" in kv.reason
    ok = run._try_config(entry, base, None, lambda m: (1.0, None))
    assert ok.status == "ok" and ok.effective_bits == pytest.approx(8 * (16 + 8 + 8) / 20)
    assert not hasattr(base[0], "weight_quantizer")  # the base model is never modified

    def noisy(m):
        for i in range(3):
            warnings.warn(f"quantizer {i} is odd", stacklevel=1)
        return 1.0, None

    res = run._try_config(entry, base, None, noisy)
    assert res.status == "ok" and res.warnings == "3 warning(s), first: quantizer 0 is odd"


def test_failed_config_logs_its_traceback(caplog):
    def broken(m):
        raise RuntimeError("evaluation broke\nsecond line")

    entry = ptq.PtqConfig("int8_wo", "INT8_WEIGHT_ONLY_CFG", "d")
    with caplog.at_level(logging.ERROR, logger="mopt.ptq"):
        res = run._try_config(entry, nn.Sequential(nn.Linear(4, 4)), None, broken)
    assert res.status == "failed" and res.reason == "RuntimeError: evaluation broke"
    [record] = caplog.records
    assert record.name == "mopt.ptq.run" and record.levelno == logging.ERROR
    assert "config int8_wo failed" in record.getMessage() and record.exc_info is not None


def test_rows_and_table_are_logged_at_info(caplog, tmp_path):
    # run_ptq logs (the CLI prints that logger's INFO records); it never prints by itself
    assert inspect.signature(ptq.run_ptq).parameters["log"].default == run.logger.info
    base = nn.Sequential(nn.Linear(4, 4))
    with caplog.at_level(logging.INFO, logger="mopt.ptq"):
        results = run._run_and_report(
            [ptq.PTQ_CONFIGS["int8_wo"]],
            base,
            None,
            lambda m: (2.0, None),
            "perplexity",
            {"model": "tiny"},
            "auto",
            torch.device("cpu"),
            tmp_path,
            False,
            run.logger.info,
        )
    messages = [r.getMessage() for r in caplog.records if r.name == "mopt.ptq.run"]
    assert messages[0].split() == "float perplexity 2.0000 (+0.00%) 16.00 bits calib - s".split()
    assert messages[1].split()[:4] == ["int8_wo", "perplexity", "2.0000", "(+0.00%)"]
    assert messages[3].startswith("| config | perplexity |")
    assert "| int8_wo | 2.0000 |" in messages[3]
    assert messages[4] == f"results: {tmp_path / 'results.json'}"
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["setup"] == {"model": "tiny"}
    assert [r["config"] for r in on_disk["rows"]] == ["float", "int8_wo"]
    assert results["results_json"] == str(tmp_path / "results.json")


def test_cpu_threads_auto_and_restore():
    before = torch.get_num_threads()
    small = nn.Linear(4, 4)
    with run._cpu_threads("auto", small, torch.device("cpu")):
        assert torch.get_num_threads() == 1  # a tiny model: threads only add synchronization
    assert torch.get_num_threads() == before
    with run._cpu_threads(None, small, torch.device("cpu")):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be"):
        ptq.run_ptq(configs="int8", threads=0, log=None)
