"""The checked build (bounds, wraparound and overflow checks compiled in) passes the codec and
CrossEngine suites too: the tree is copied, built with SEQEX_CHECKED=1 in place, and the suites
run in a child pytest against that copy. It is a step of its own in `.ci/run`
(SEQEX_CHECKED_BUILD=1), since the second build takes most of a minute."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITES = ["tests/unit/test_record.py", "tests/unit/test_crossengine.py",
          "tests/property/test_record_props.py", "tests/property/test_crossengine_determinism.py",
          "tests/stateful", "tests/unit/test_tradingengine.py",
          "tests/property/test_tradingengine_determinism.py"]


@pytest.mark.checked_build
@pytest.mark.timeout(900)
def test_checked_build_passes_the_suites(tmp_path):
    copy = tmp_path / "seqex"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".git", "build", "*.so", "*.c", "__pycache__", ".hypothesis", ".pytest_cache", "*.egg-info",
        ".ruff_cache"))
    env = {**os.environ, "SEQEX_CHECKED": "1"}
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=copy,
                   env=env, check=True, capture_output=True)
    where = subprocess.run([sys.executable, "-c", "import crossengine.engine as e; print(e.__file__)"],
                           cwd=copy, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(copy)), f"the child imported {where}, not the checked copy"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES],
                         cwd=copy, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
