"""The Python snippets of docs/training.md run as written."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[3] / "docs" / "training.md"


def test_training_doc_snippets_run(capsys, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:  # later blocks may use names from earlier ones, as a reader would
        exec(compile(block, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "scales learned: True" in out
    assert "restored: True ['post']" in out
    assert "QAD loss went down: True" in out
    assert "merged: Linear" in out
