"""Shared fixtures and gates.

Three kinds of test are left out of the default run (the README's test command), each behind a
marker and an environment variable; `.ci/run` runs all three as steps of their own:

- `slow`: soak and crash campaigns (SEQEX_SLOW=1, or `-m slow`);
- `checked_build`: the suites again against the checked Cython build (SEQEX_CHECKED_BUILD=1);
- `fresh_venv`: the README's test command in a new virtual environment (SEQEX_FRESH_VENV=1).

The campaigns draw their seeds from SEQEX_SEED, or from the clock when it is unset; the header
of every run prints the seed, so a failure can be replayed with SEQEX_SEED=N.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

from tests.seed import SEED

# CI runs on 2 busy cores: how long an example takes to generate or run says nothing about the
# code under test, so neither is a failure (a test's own @settings still sets its examples).
settings.register_profile("seqex", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("seqex")

GATES = {"slow": "SEQEX_SLOW", "checked_build": "SEQEX_CHECKED_BUILD",
         "fresh_venv": "SEQEX_FRESH_VENV"}


def pytest_report_header(config):
    return f"seqex campaign seed: SEQEX_SEED={SEED}"


def pytest_collection_modifyitems(config, items):
    selected = config.getoption("-m") or ""
    for mark, env in GATES.items():
        if os.environ.get(env) == "1" or (mark in selected and f"not {mark}" not in selected):
            continue
        skip = pytest.mark.skip(reason=f"{mark}: set {env}=1 (or -m {mark}) to run")
        for item in items:
            if mark in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_process_identity():
    """A test that takes a CURVE identity (mq.auth) in this process, or reads the state of a
    secured cluster, leaves none behind for the next test."""
    yield
    from mq import auth
    auth.reset()
