"""Smoke test of examples/python/digits_cnn_demo.py (the embedded `make demo` default)."""

import importlib.util
import pathlib

import pytest

DEMO = pathlib.Path(__file__).resolve().parents[3] / "examples" / "python" / "digits_cnn_demo.py"


def _load_demo():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("digits_cnn_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_runs_and_prints_table_and_summaries(capsys):
    demo = _load_demo()
    assert demo.main(["--epochs", "4"]) == 0  # a shorter training than the default 12 epochs
    out = capsys.readouterr().out
    assert out.count("TensorQuantizers found in model") == 3
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert "test acc %" in lines[header] and "mean |logit err|" in lines[header]
    rows = [line.split() for line in lines[header + 2:header + 6]]
    assert [r[0] for r in rows] == ["float32", "INT8", "FP8", "INT4"]
    float_acc = float(rows[0][1])
    assert float_acc > 90.0
    for r in rows[1:]:
        acc = float(r[1] if r[0] != "INT4" else r[2])
        assert acc > float_acc - 10.0


def test_demo_check_flags_bad_results():
    demo = _load_demo()
    assert demo.check(98.0, [("INT8", 97.5, 0.05), ("FP8", 97.0, 0.2)]) == []
    problems = demo.check(98.0, [("INT8", 90.0, 0.05), ("FP8", 98.0, 0.0)])
    assert len(problems) == 2 and "INT8 accuracy" in problems[0] and "identical" in problems[1]
    assert demo.check(50.0, [])[0].startswith("float accuracy")
