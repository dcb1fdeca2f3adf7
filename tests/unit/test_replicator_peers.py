"""Peer catch-up meets the log-matching rule of a master's APPEND.

Two real Replicator objects (store, request checks, replay service and peer logic) talk through
an in-process relay instead of sockets: each request the catching-up replicator sends is
answered by the peer's own read path, and the answer is handed back to the catching-up
replicator's peer logic. The scenario is the one that splices logs: a replicator holding a
stale, never committed tail of epoch 1 fetches newer records of epoch 2 from a peer. It must
end with the peer's log (the stale tail truncated and replaced), never with the stale tail
followed by the newer records.
"""
from __future__ import annotations

import os

import pytest

from mq import wire
from mq.record import decode, encode
from replicator.peers import agreed_prefix
from replicator.server import Replicator, parse

STREAM = "in.t"


def frame(first, n, epoch, tag=b"x", src=7):
    return encode([(s, 1000 + s, src, s, epoch, 16, tag + s.to_bytes(4, "little"))
                   for s in range(first, first + n)])


class Relay:
    """Route `me`'s requests to `peer`'s read path and the answers back, until quiet."""

    def __init__(self, me: Replicator, peer: Replicator):
        self.me, self.peer = me, peer
        self.queue: list[list[bytes]] = []
        me.peers.socks = [None]
        me.peers.addrs = ["peer"]
        me.peers._send = lambda i, msg: self.queue.append(msg) or True

    def run(self, max_steps: int = 1000) -> None:
        for _ in range(max_steps):
            if not self.queue:
                return
            msg = self.queue.pop(0)
            kind = msg[0]
            if kind not in (wire.REPLAY, wire.STATE, wire.DIGEST, wire.PING):
                continue
            answer = self.peer._read(kind, parse(kind, msg[1:]))
            self.me.peers._on_answer(0, answer)
        raise AssertionError("the relay did not settle")


@pytest.fixture
def pair(tmp_path):
    tag = f"{tmp_path.name}-{os.getpid()}"   # inproc names are freed lazily: never reuse one
    me = Replicator(str(tmp_path / "me"), f"inproc://me-{tag}", check=False)
    peer = Replicator(str(tmp_path / "peer"), f"inproc://peer-{tag}", check=False)
    yield me, peer
    for r in (me, peer):
        r.peers.socks = []
        r.sock.close(0)
        r.store.close()


def held(rep: Replicator) -> list[tuple]:
    log = rep.store.find(STREAM)
    return decode(log.read(1)) if log else []


def test_catch_up_over_a_stale_tail_truncates_it_and_takes_the_peers_records(pair):
    me, peer = pair
    for rep in (me, peer):
        rep.store.append(STREAM, 1, frame(1, 5, epoch=1))
        rep.store.change(STREAM, lambda lg, txn: lg.set_commit(txn, 5))
    # me: a tail 6..10 of epoch 1 that its master never committed (it died);
    # peer: the next master's records 6..20 of epoch 2, committed.
    me.store.append(STREAM, 1, frame(6, 5, epoch=1, tag=b"stale"))
    peer.store.append(STREAM, 2, frame(6, 15, epoch=2, tag=b"new"))
    peer.store.change(STREAM, lambda lg, txn: lg.set_commit(txn, 20))

    relay = Relay(me, peer)
    me.peers._fetch(STREAM, 0)          # what a peer's STATE with commit 20 > last 10 starts
    relay.run()
    assert held(me) == held(peer), "the stale tail was spliced onto, or not replaced"
    assert me.store.find(STREAM).history == [(1, 1), (2, 6)]
    assert me.stats["truncated_records"] == 5


def test_the_periodic_state_check_also_replaces_a_stale_tail(pair):
    """Without any fetch under way, the STATE poll finds the divergence by itself."""
    me, peer = pair
    for rep in (me, peer):
        rep.store.append(STREAM, 1, frame(1, 3, epoch=1))
    me.store.append(STREAM, 1, frame(4, 9, epoch=1, tag=b"stale"))   # me: last 12 > peer's 10
    peer.store.append(STREAM, 3, frame(4, 7, epoch=3, tag=b"new"))
    peer.store.change(STREAM, lambda lg, txn: lg.set_commit(txn, 10))
    relay = Relay(me, peer)
    relay.queue.append([wire.STATE, wire.pack({"stream": STREAM})])
    relay.run()
    assert held(me) == held(peer)


def test_a_log_spliced_earlier_is_found_and_replaced(pair):
    """A log spliced before catch-up checked epochs (stale 6..10 of epoch 1, then 11..20 of
    epoch 2) holds the peer's epoch at its last seq, so epochs compared at one seq agree; the
    histories do not, and the spliced part above the commit point is replaced."""
    me, peer = pair
    for rep in (me, peer):
        rep.store.append(STREAM, 1, frame(1, 5, epoch=1))
        rep.store.change(STREAM, lambda lg, txn: lg.set_commit(txn, 5))
    peer.store.append(STREAM, 2, frame(6, 15, epoch=2, tag=b"new"))
    peer.store.change(STREAM, lambda lg, txn: lg.set_commit(txn, 20))
    me.store.append(STREAM, 1, frame(6, 5, epoch=1, tag=b"stale"))
    spliced = peer.store.find(STREAM).read(11, 20)
    me.store.append(STREAM, 2, spliced)
    assert me.store.find(STREAM).history == [(1, 1), (2, 11)]
    relay = Relay(me, peer)
    relay.queue.append([wire.STATE, wire.pack({"stream": STREAM})])
    relay.run()
    assert held(me) == held(peer)
    assert me.store.find(STREAM).history == [(1, 1), (2, 6)]


def test_a_stale_tail_below_the_own_commit_point_is_reported_not_truncated(pair):
    """A record this replicator holds as committed is never removed, even when a peer
    disagrees: that is a broken invariant, reported for the operator."""
    me, peer = pair
    me.store.append(STREAM, 1, frame(1, 6, epoch=1))
    me.store.change(STREAM, lambda lg, txn: lg.set_commit(txn, 6))
    peer.store.append(STREAM, 1, frame(1, 3, epoch=1))
    peer.store.append(STREAM, 2, frame(4, 5, epoch=2, tag=b"new"))
    peer.store.change(STREAM, lambda lg, txn: lg.set_commit(txn, 8))
    relay = Relay(me, peer)
    relay.queue.append([wire.STATE, wire.pack({"stream": STREAM})])
    relay.run()
    assert [r[0] for r in held(me)] == [1, 2, 3, 4, 5, 6]
    assert me.stats["divergent_ranges"] == 1


def test_catch_up_of_a_matching_log_appends_the_missing_records(pair):
    me, peer = pair
    me.store.append(STREAM, 1, frame(1, 4, epoch=1))
    peer.store.append(STREAM, 1, frame(1, 4, epoch=1))
    peer.store.append(STREAM, 2, frame(5, 6, epoch=2))
    peer.store.change(STREAM, lambda lg, txn: lg.set_commit(txn, 10))
    relay = Relay(me, peer)
    relay.queue.append([wire.STATE, wire.pack({"stream": STREAM})])
    relay.run()
    assert held(me) == held(peer)
    assert me.stats["truncated_records"] == 0


def test_an_empty_replicator_learns_its_streams_from_a_peer(pair):
    me, peer = pair
    peer.store.append(STREAM, 1, frame(1, 4, epoch=1))
    peer.store.change(STREAM, lambda lg, txn: lg.set_commit(txn, 4))
    relay = Relay(me, peer)
    relay.queue.append([wire.PING, wire.pack({})])
    relay.run()
    assert held(me) == held(peer)


@pytest.mark.parametrize("damaged", [(8_001,), (1_001, 2_001), (7_001, 8_001)])
def test_damaged_frames_across_a_comparison_window_boundary_are_repaired(pair, monkeypatch,
                                                                         damaged):
    """A peer's catch-up stores one frame of many thousands of records (here 8,001..16,000,
    across the 10,000-record comparison window's end). Damaged on disk, it was found by the
    comparison and then refused by the repair for good ("reaches out of the repaired range"),
    since no window covered it whole. Windows now end at this replicator's frame boundaries,
    before a frame that would take them past their size; the repair fetches a range in parts
    when a peer sends less than all of it (its answers are capped: 16 MiB, here 40 KB); and two
    damaged frames next to each other are both repaired (the repair read the record after its
    range to rebuild the epoch history, and failed on the next damaged frame, for good)."""
    from replicator import server
    from replicator.peers import COMPARE_RECORDS
    from replicator.store import U64
    monkeypatch.setattr(server, "MAX_REPLAY_BYTES", 40_000)
    me, peer = pair
    for first in range(1, 8_001, 1_000):
        me.store.append(STREAM, 1, frame(first, 1_000, epoch=1))
    me.store.append(STREAM, 1, frame(8_001, 8_000, epoch=1))    # one frame, as a catch-up's
    for first in range(1, 16_001, 500):
        peer.store.append(STREAM, 1, frame(first, 500, epoch=1))
    for rep in (me, peer):
        rep.store.change(STREAM, lambda lg, txn: lg.set_commit(txn, 16_000))
    assert 8_001 <= COMPARE_RECORDS < 16_000
    good = held(peer)
    log_ = me.store.find(STREAM)
    with me.store.env.begin(write=True) as txn:
        for key in damaged:
            value = bytearray(txn.get(U64.pack(key), db=log_.log_db))
            value[len(value) // 2] ^= 0xFF   # the CRC no longer matches
            txn.put(U64.pack(key), bytes(value), db=log_.log_db)
    relay = Relay(me, peer)
    for _ in range(4):   # a comparison a second: enough rounds to pass the whole log
        me.peers._start_compare(STREAM, 1e9)
        relay.run()
    assert me.stats["repaired_records"] >= 1_000 * len(damaged)
    assert held(me) == good


@pytest.mark.parametrize("a, b, expected", [
    (([(1, 1)], 10), ([(1, 1)], 10), 10),
    (([(1, 1)], 10), ([(1, 1)], 4), 4),
    (([(1, 1)], 10), ([(1, 1), (2, 6)], 20), 5),           # stale epoch-1 tail
    (([(1, 1), (2, 11)], 20), ([(1, 1), (2, 6)], 20), 5),  # a spliced log: agrees only to 5
    (([(1, 1), (2, 6)], 20), ([(1, 1), (2, 6)], 20), 20),
    (([(1, 1), (2, 6)], 8), ([(1, 1), (2, 6), (3, 9)], 20), 8),
    (([(2, 1)], 3), ([(1, 1)], 3), 0),
    (([], 0), ([(1, 1)], 3), 0),
])
def test_agreed_prefix(a, b, expected):
    assert agreed_prefix(*a, *b) == expected
    assert agreed_prefix(*b, *a) == expected
