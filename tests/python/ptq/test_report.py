"""mopt.ptq.report: the table, results.json and the plot."""

import copy
import dataclasses
import json
import logging
import sys

from mopt import ptq
from mopt.ptq import report


def _rows():
    return [
        ptq.PtqResult(
            "float", "float", metric=3.6445, change_pct=0.0, weight_bytes=1000, effective_bits=16.0
        ),
        ptq.PtqResult(
            "int8",
            "ok",
            metric=3.65,
            change_pct=0.15,
            weight_bytes=600,
            effective_bits=9.6,
            calib_seconds=1.234,
        ),
        ptq.PtqResult("nvfp4", "not available", reason="not built"),
    ]


def test_table_format():
    rows = _rows()
    table = ptq.format_table(rows)
    assert "| int8 | 3.6500 | +0.15% | 600 (9.60) | 1.23 |" in table
    assert "- nvfp4: not available: not built" in table
    assert copy.deepcopy(rows)[0].config == "float"
    assert report.row_line(rows[1], "perplexity").split() == [
        "int8",
        "perplexity",
        "3.6500",
        "(+0.15%)",
        "9.60",
        "bits",
        "calib",
        "1.2",
        "s",
    ]
    assert report.row_line(rows[2], "perplexity").split(None, 1) == [
        "nvfp4",
        "not available: not built",
    ]
    cosine = ptq.format_table([ptq.PtqResult("int8", "ok", metric=0.99, min_cosine=0.9)], "cosine")
    assert cosine.startswith("| config | mean cosine | min cosine |")
    assert "| int8 | 0.99000 | 0.90000 | - (-) | - |" in cosine


def test_results_json_schema(tmp_path):
    rows = _rows()
    results = report.results_dict(rows, "perplexity", {"model": "m"})
    assert list(results) == [
        "metric",
        "setup",
        "weight_bytes_definition",
        "date",
        "machine",
        "rows",
    ]
    lines = []
    report.write_results(results, rows, tmp_path, "perplexity", True, lines.append)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["setup"] == {"model": "m"} and on_disk["metric"] == "perplexity"
    assert on_disk["rows"][1] == dataclasses.asdict(rows[1])
    assert list(on_disk["rows"][0])[:5] == ["config", "status", "description", "reason", "metric"]
    assert (tmp_path / "ptq_plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lines[0] == "" and lines[1] == ptq.format_table(rows)
    assert lines[2:] == [
        f"results: {tmp_path / 'results.json'}",
        f"plot: {tmp_path / 'ptq_plot.png'}",
    ]
    assert not (tmp_path / "results.json.tmp").exists()


def test_plot_without_matplotlib_warns(monkeypatch, tmp_path, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with caplog.at_level(logging.WARNING, logger="mopt.ptq"):
        assert ptq.plot_results(_rows(), tmp_path / "p.png") is None
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["matplotlib is not installed; no plot written"]
    assert not (tmp_path / "p.png").exists()
