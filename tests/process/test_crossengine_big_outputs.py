"""The largest outputs a CrossEngine command can give travel through the real streams
(processes on 127.0.0.1): in.ce.T -> 2 hot + 1 warm replicas -> mirror -> out.ce.T.

The flow rests 20,000 orders on 20,000 levels (two accounts at their 10,000 order limit, and
one order past it, refused), sweeps them with one buy (stopped at 1,000 fills), cancels one
account's orders and then mass-cancels the book. Before outputs were bounded, that sweep gave
1.35 MB and the MassCancel 1.04 MB: the mirror refused the record from every replica and
out.ce.T stopped at it for good. Here a hot replica is also killed with SIGKILL and restarted
in the middle; the out stream must hold every seq once and equal a fresh engine's outputs.
"""
from __future__ import annotations

import pytest

from crossengine import codec as c
from deploy.local import LogCluster
from mq.record import MAX_PAYLOAD
from tests.process.test_replicas import reference_outputs, run_replicas

RESTING = 10_000   # per account: the default max_account_orders


def commands() -> list[tuple[int, bytes]]:
    cmds = []
    for account in (1, 2):
        for i in range(RESTING):
            price = 100_000 + 2 * i + account
            cmds.append((c.NEW_ORDER, c.new_order(i + 1, c.SELL, price, 1, account)))
    cmds.append((c.NEW_ORDER, c.new_order(RESTING + 1, c.SELL, 500_000, 1, 1)))   # refused
    cmds.append((c.NEW_ORDER, c.new_order(1, c.BUY, 10**6, 3 * RESTING, 9)))      # the sweep
    cmds.append((c.CANCEL_ALL, c.cancel_all(1)))
    cmds.append((c.MASS_CANCEL, b""))
    return cmds


@pytest.mark.timeout(600)
def test_the_largest_outputs_reach_the_out_stream(tmp_path):
    cmds = commands()
    tmp = str(tmp_path)
    with LogCluster(tmp, stream="in.ce.T", replicators=1, policy="first") as cluster:
        cluster.start()
        last, _hash, got = run_replicas(cluster, tmp, "out.ce.T", cmds, len(cmds) // 2)
        outputs = [r[6] for r in got]
        assert outputs == reference_outputs(cluster, last)
    # the sequencer's idle ticks are records too (with empty outputs): the commands' are these
    mine = [r[6] for r in got if r[5] != c.KIND_TICK]
    assert len(mine) == len(cmds)
    tail = [c.decode_events(p) for p in mine[-4:]]
    assert tail[0][0][3] == c.CODES["account_order_limit"]
    assert sum(1 for e in tail[1] if e[0] == c.EV_TRADE) == c.MAX_FILLS_LIMIT
    assert tail[1][c.MAX_FILLS_LIMIT + 1][5] == c.REASON_MATCH_LIMIT
    assert tail[2][0][:6] == (c.EV_MASS_CANCELLED, c.SCOPE_ACCOUNT, 1, 0, c.REASON_MASS_CANCEL,
                              RESTING - c.MAX_FILLS_LIMIT // 2)
    assert tail[3] == [(c.EV_MASS_CANCELLED, c.SCOPE_BOOK, 0, 0, c.REASON_ADMIN,
                        RESTING - c.MAX_FILLS_LIMIT // 2, (1 << 40) | (2 * RESTING + 1))]
    assert max(len(p) for p in outputs) <= MAX_PAYLOAD // 2
