"""The Python snippets of docs/quantization.md run as written."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[3] / "docs" / "quantization.md"


def test_quantization_doc_snippets_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:  # later blocks may use names from earlier ones, as a reader would
        exec(compile(block, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "Inserted 6 quantizers" in out and "6 TensorQuantizers found in model" in out
