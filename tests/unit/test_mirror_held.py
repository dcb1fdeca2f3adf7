"""The mirror's held-frame path, in-process (no replicas, ack policy "none").

Proves: any number of frames that arrive beyond a gap are released by a loop, not by
recursion (20,000 frames in reverse order, far past Python's recursion limit, end as one
contiguous out stream); the held frames stay within their bound, and what did not fit is
dropped, counted, and taken when a replica resends it; every frame is answered with the
first seq the mirror lacks, and with gap set when the frame lay beyond it.
"""
from __future__ import annotations

import sys

import pytest

from mq import mirror as mirror_mod
from mq.mirror import Mirror
from mq.record import encode


def frame(first: int, count: int = 1) -> bytes:
    return encode([(s, 10**18 + s, 7, s, 3, 32, b"out-%d" % s)
                   for s in range(first, first + count)])


@pytest.fixture
def mirror():
    m = Mirror("out.ce.U", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", [], policy="none")
    m.recover()
    replies: list[dict] = []
    m._reply = lambda ident, kind, body: replies.append(body)   # noqa: ARG005
    m.replies = replies
    yield m
    m.close()


def test_frames_beyond_a_gap_are_released_by_a_loop(mirror):
    n = max(20_000, 4 * sys.getrecursionlimit())
    for s in range(n, 1, -1):          # everything but seq 1, newest first
        mirror._accept(b"A", "A", frame(s))
    assert mirror.next_seq == 1 and len(mirror.held) == n - 1
    assert all(r["gap"] and r["next"] == 1 for r in mirror.replies)
    mirror._accept(b"A", "A", frame(1))   # the gap fills: everything is released at once
    assert mirror.next_seq == n + 1
    assert mirror.held == {} and mirror.held_bytes == 0 and mirror.held_firsts == []
    assert mirror.replies[-1] == {"src": 0, "next": n + 1, "committed": mirror.committed,
                                  "gap": False}
    assert mirror.stats["accepted"] == n


def test_held_frames_are_bounded_and_what_is_dropped_comes_again(mirror, monkeypatch):
    monkeypatch.setattr(mirror_mod, "MAX_HELD_FRAMES", 100)
    for s in range(2, 302):
        mirror._accept(b"A", "A", frame(s))
    assert len(mirror.held) == 100 and mirror.stats["dropped_held"] == 200
    assert mirror.held_bytes == sum(len(v[1]) for v in mirror.held.values())
    # the replica, told of the gap, rewinds to seq 1 and resends everything in order
    for s in range(1, 302):
        mirror._accept(b"A", "A", frame(s))
    assert mirror.next_seq == 302 and mirror.held == {}
    assert mirror.replies[-1]["next"] == 302 and not mirror.replies[-1]["gap"]


def test_bytes_bound_holds_too(mirror, monkeypatch):
    one = len(frame(2, 10))
    monkeypatch.setattr(mirror_mod, "MAX_HELD_BYTES", one * 3)
    for s in range(2, 100, 10):
        mirror._accept(b"A", "A", frame(s, 10))
    assert mirror.held_bytes <= one * 3 and mirror.stats["dropped_held"] >= 6


def test_overlapping_copies_and_released_frames_that_overlap(mirror):
    # B's frames are cut differently from A's; held frames overlap what came before them
    mirror._accept(b"B", "B", frame(5, 10))     # 5..14, held
    mirror._accept(b"A", "A", frame(3, 4))      # 3..6, held
    mirror._accept(b"A", "A", frame(1, 3))      # 1..3: releases 3..6 then 5..14
    assert mirror.next_seq == 15 and mirror.held == {}
    assert mirror.stats["divergences"] == 0 and mirror.stats["accepted"] == 14
    assert mirror.stats["copies_compared"] == 1 + 2   # seq 3, then seqs 5 and 6


def test_a_replica_probe_is_answered_with_the_position(mirror):
    mirror._accept(b"A", "A", frame(1, 5))
    mirror._control(b"A", b"HELLO", {"replica": "A", "seq": 9})
    assert mirror.replies[-1] == {"src": 0, "next": 6, "committed": mirror.committed,
                                  "gap": False}
