"""State machines stay pure: their modules import no clock, randomness, I/O, network or logging
(TigerBeetle's tidy check), so that replay can never diverge from the live run."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
STATE_MACHINES = ["crossengine/engine.pyx", "crossengine/engine.pxd", "crossengine/reference.py",
                  "crossengine/codec.py", "tradingengine/engine.py", "tradingengine/margin.py",
                  "tradingengine/codec.py", "tradingengine/reference.py"]
FORBIDDEN = ("time", "random", "os", "socket", "zmq", "lmdb", "asyncio", "logging", "threading",
             "datetime", "secrets", "uuid")
IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import|c?import\s+([\w., ]+))", re.M)


@pytest.mark.parametrize("path", STATE_MACHINES)
def test_state_machine_imports_nothing_impure(path):
    text = (ROOT / path).read_text()
    for m in IMPORT.finditer(text):
        names = [m.group(1)] if m.group(1) else [n.strip().split()[0] for n in m.group(2).split(",")]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path} imports {name}"


@pytest.mark.parametrize("path", STATE_MACHINES)
def test_state_machine_never_iterates_a_set_or_hashes_a_str(path):
    text = (ROOT / path).read_text()
    assert not re.search(r"(?<![\w.])(frozen)?set\(|(?<![\w.])hash\(|\{\s*\w+\s+for\s", text)


def test_engines_never_import_each_other():
    for path in STATE_MACHINES:
        own = path.split("/")[0]
        for m in IMPORT.finditer((ROOT / path).read_text()):
            names = [m.group(1)] if m.group(1) else [n.strip() for n in m.group(2).split(",")]
            for name in names:
                top = name.split(".")[0]
                assert top == own or top not in ("crossengine", "tradingengine", "liqengine"), \
                    f"{path} imports {name}"
