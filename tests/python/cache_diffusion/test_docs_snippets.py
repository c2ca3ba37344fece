"""The self-contained Python snippets of docs/cache_diffusion.md run as written (the ones using a
diffusers SDXL `pipe` or a real sampler are shown, not run)."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[3] / "docs" / "cache_diffusion.md"


def test_cache_diffusion_doc_snippets_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    runnable = [b for b in blocks if "pipe" not in b]
    assert len(runnable) >= 2
    namespace: dict = {}
    for block in runnable:  # later blocks use names from earlier ones, as a reader would
        exec(compile(block, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "'recomputes': 3" in out and "'calls': 12" in out
