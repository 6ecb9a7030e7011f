"""The user-backbone example in docs/BACKBONES.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chrysalis import spaces

DOC = Path(__file__).resolve().parents[1] / "docs" / "BACKBONES.md"


def test_backbones_doc_example_runs(capsys):
    pytest.importorskip("chrysalis.data")
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    example = next(b for b in blocks if "@register_space" in b)
    builders, aliases = dict(spaces._BUILDERS), dict(spaces._ALIASES)
    try:
        exec(compile(example, str(DOC), "exec"), {"__name__": "backbones_doc"})
    finally:
        spaces._BUILDERS.clear()
        spaces._BUILDERS.update(builders)
        spaces._ALIASES.clear()
        spaces._ALIASES.update(aliases)
    out = capsys.readouterr().out
    assert "tinycnn" in out and "warm start = conv" in out
    err = float(re.search(r"relative error (\S+)", out).group(1))
    assert err < 1e-5
