"""The README's test command passes on a machine with nothing installed: the tree (as git
would check it out, without build artefacts) is copied, a new virtual environment is made with
nothing in it but pip, and the README's command runs there verbatim. A build or test
dependency that only this machine happens to have (Cython was one) fails here.

The README's first command (`seqex up`) runs before it, as a newcomer runs them: the
./seqex-data it leaves in the checkout must not change what the tests see.

It needs the package registry and a few minutes, so it is a step of its own in `.ci/run`
(SEQEX_FRESH_VENV=1)."""
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_command(name: str) -> str:
    """The fenced command under the README's sentence that starts with `name`."""
    text = open(os.path.join(ROOT, "README.md")).read()
    # the sentence may run over several lines; the first fenced block after it is the command
    match = re.search(rf"^{name}.*?^```\n(.+?)\n```", text, re.M | re.S)
    if match is None:
        raise AssertionError(f"README.md has no command block after a line starting {name!r}")
    return match.group(1).strip()


def test_readme_names_the_ci_command():
    """`.ci/run` runs exactly the README's test command, first."""
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert readme_command("Run the tests") in ci


@pytest.mark.fresh_venv
@pytest.mark.timeout(2400)
def test_readme_test_command_passes_in_a_fresh_venv(tmp_path):
    tree = tmp_path / "seqex"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(tree / os.path.dirname(rel), exist_ok=True)
            shutil.copy2(src, tree / rel)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bindir = venv / "bin"
    # Only the venv on PATH; no variable of this run leaks into the child (no SEQEX_* gate,
    # no PYTHONPATH that would find this tree's build).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SEQEX_", "PYTHON", "VIRTUAL_ENV", "PYTEST"))}
    env["PATH"] = f"{bindir}:{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    # The README's commands in the order a newcomer runs them: the first leaves ./seqex-data
    # (keys, a trust policy, demo users) in the checkout, which the tests must not pick up.
    up = subprocess.Popen(["bash", "-c", readme_command("Run the exchange core")], cwd=tree,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    seen: list[str] = []
    try:
        for line in up.stdout:
            seen.append(line)
            if line.startswith("seqex is up"):
                break
        else:
            raise AssertionError("the README's first command ended before the cluster was "
                                 "up:\n" + "".join(seen[-40:]))
    finally:
        try:
            os.killpg(up.pid, signal.SIGTERM)   # what Ctrl-C in its terminal does
            up.wait(120)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        up.stdout.close()
    assert os.path.isdir(tree / "seqex-data" / "keys"), "".join(seen[-40:])
    command = readme_command("Run the tests")
    run = subprocess.run(["bash", "-c", command], cwd=tree, env=env, capture_output=True,
                         text=True)
    # what failed, in full (the last lines alone cut a failure's own message off)
    failures = re.search(r"^=+ (?:FAILURES|ERRORS) =+$.*?(?=^=+ short test summary)",
                         run.stdout, re.M | re.S)
    tail = (failures.group(0)[-20000:] if failures else "") + run.stdout[-6000:] + \
        run.stderr[-3000:]
    assert run.returncode == 0, tail
    assert re.search(r"\d+ passed", run.stdout) and " failed" not in run.stdout.splitlines()[-1], tail
