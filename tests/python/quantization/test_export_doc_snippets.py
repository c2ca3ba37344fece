"""The Python snippets of the "Packed weights (mtq.compress)" section of docs/export.md run as
written (other sections of that file are other exporters' and tested by them)."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[3] / "docs" / "export.md"


def test_packed_weights_doc_snippets_run(capsys):
    text = DOC.read_text()
    start = text.index("## Packed weights (mtq.compress)")
    end = text.find("\n## ", start + 1)
    section = text[start:] if end < 0 else text[start:end]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert "PackedWeight(format=nvfp4, shape=[32, 64], block_size=16" in capsys.readouterr().out
