"""The Python snippets of docs/sparsity.md run as written."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[3] / "docs" / "sparsity.md"


def test_sparsity_doc_snippets_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:  # later blocks use names from earlier ones, as a reader would
        exec(compile(block, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "True 0.5" in out and "Linear" in out
