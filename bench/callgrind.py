"""One run of a bench script under valgrind's callgrind, for the instruction counts of
bench/count_*.py: the instructions it executed (callgrind's "Collected") and its stdout.

The hash seed is fixed (PYTHONHASHSEED=0): with Python's per-process one, the dict and set
work of two runs of one script differs by far more than the operations measured."""
from __future__ import annotations

import os
import re
import subprocess
import sys


def collected(script: str, args: list[str], valgrind_args: tuple[str, ...] = ()
              ) -> tuple[int, str]:
    """(instructions, stdout) of `python script *args` under callgrind; SystemExit with the
    tail of valgrind's output if the run fails."""
    r = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                        *valgrind_args, sys.executable, os.path.abspath(script), *args],
                       capture_output=True, text=True,
                       env={**os.environ, "PYTHONHASHSEED": "0"})
    m = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode or not m:
        raise SystemExit(f"callgrind run failed: {r.stderr[-800:]}")
    return int(m.group(1)), r.stdout
