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


# mq/ is the log: it runs any engine on any stream and knows none of them. The registry of
# engines, and whatever else knows every package, lives in deploy/ (imports go downward only).
ABOVE_MQ = ("crossengine", "tradingengine", "liqengine", "gateway", "deploy")


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """Every module a Python file imports, at any depth (inside functions too)."""
    import ast
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call)
              and getattr(node.func, "attr", getattr(node.func, "id", ""))
              in ("import_module", "__import__") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


MQ_MODULES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "mq").glob("*.py"))


@pytest.mark.parametrize("path", MQ_MODULES)
def test_mq_imports_no_engine_and_nothing_above_it(path):
    for line, name in _imports(ROOT / path):
        assert name.split(".")[0] not in ABOVE_MQ, f"{path}:{line} imports {name}"


def test_mq_cython_imports_no_engine():
    for path in sorted((ROOT / "mq").glob("*.p[yx]?")):
        for m in IMPORT.finditer(path.read_text()):
            names = [m.group(1)] if m.group(1) else [n.strip() for n in m.group(2).split(",")]
            for name in names:
                assert name.split(".")[0] not in ABOVE_MQ, f"{path.name} imports {name}"


def test_the_import_check_sees_imports_inside_functions():
    """The rule must catch the lazy import the old registry used."""
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write("def _crossengine(config):\n    from crossengine.engine import CrossEngine\n"
                "    import deploy.cli as cli\n    return CrossEngine\n")
    try:
        assert [n for _l, n in _imports(pathlib.Path(f.name))] == ["crossengine.engine",
                                                                    "deploy.cli"]
    finally:
        pathlib.Path(f.name).unlink()


def test_every_engine_is_registered_in_deploy():
    from deploy.engines import ENGINES, make
    assert sorted(ENGINES) == ["crossengine", "liqengine", "tradingengine"]
    engine, restore = make("crossengine", {})
    assert restore(engine.snapshot()).state_hash() == engine.state_hash()
    with pytest.raises(ValueError, match="unknown engine"):
        make("nope")
