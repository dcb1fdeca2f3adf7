"""The LiqEngine stays pure, as tests/unit/test_tidy.py checks for the other engines: no clock,
randomness, I/O or logging imported, no set iterated, no str hashed, no other engine imported."""
import pathlib

import pytest

from tests.unit.test_tidy import FORBIDDEN, IMPORT

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIQ = ["liqengine/engine.py", "liqengine/codec.py", "liqengine/reference.py"]


@pytest.mark.parametrize("path", LIQ)
def test_liqengine_is_pure(path):
    import re
    text = (ROOT / path).read_text()
    for m in IMPORT.finditer(text):
        names = [m.group(1)] if m.group(1) else [n.strip().split()[0] for n in m.group(2).split(",")]
        for name in names:
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{path} imports {name}"
            assert top not in ("crossengine", "tradingengine"), f"{path} imports {name}"
    assert not re.search(r"(?<![\w.])(frozen)?set\(|(?<![\w.])hash\(|\{\s*\w+\s+for\s", text)
