"""The decisions of replication and failover, as pure functions.

The sequencer takes its decisions here, and so does the model test, which explores them under
loss, reordering, duplication and crashes. Nothing here does I/O.

Facts the rules rest on (docs/log.md, "Failover"):
* Every record carries the epoch of the master that stamped it, and a master stamps each seq
  once. Along any replicator's log, epochs never decrease.
* Log matching: if two logs hold a record of the same epoch at the same seq, they hold the same
  records up to that seq. A replicator only appends onto a prefix of its master's log: gaps are
  refused, overlaps are compared byte for byte, the record just before an APPEND must be of the
  epoch the master holds there (Raft's previous-entry check: without it, an APPEND that
  outruns a lost or late TRUNCATE lands on a divergent record), and a divergent tail is
  truncated first.
* A master counts acknowledgements towards its commit point only from its first own-epoch
  record on. An older-epoch record it re-sends becomes committed when a record of its own epoch
  after it is held by the policy's number of replicators (Raft's rule, against the case of
  Raft's Figure 8).
"""
from __future__ import annotations

from collections.abc import Sequence

POLICIES = ("first", "quorum", "all")


def needed(policy: str, replicators: int) -> int:
    """How many replicators must hold a record before it is committed."""
    if policy == "first":
        return 1
    if policy == "quorum":
        return replicators // 2 + 1
    if policy == "all":
        return replicators
    raise ValueError(f"ack policy must be one of {POLICIES}, not {policy!r}")


def commit_point(acks: Sequence[int], replicators: int, policy: str) -> int:
    """The highest seq held by enough replicators (acks: each counted replicator's ack)."""
    return held_by(acks, needed(policy, replicators))


def held_by(acks: Sequence[int], need: int) -> int:
    """The highest seq that at least `need` of these acks reach (0: fewer acks than that)."""
    if len(acks) < need:
        return 0
    return sorted(acks, reverse=True)[need - 1]


def epoch_ranges(history: Sequence[Sequence[int]], last: int) -> dict[int, tuple[int, int]]:
    """{epoch: (first seq, last seq)} from a history [(epoch, first seq), ...] ordered by seq."""
    out = {}
    for i, (epoch, first) in enumerate(history):
        end = history[i + 1][1] - 1 if i + 1 < len(history) else last
        if first <= end:
            out[epoch] = (first, end)
    return out


def common_prefix(hist_a: Sequence[Sequence[int]], last_a: int,
                  hist_b: Sequence[Sequence[int]], last_b: int) -> int:
    """The highest seq up to which two logs hold the same records (0: none), found through
    the log matching property: the last seq at which both hold a record of the same epoch."""
    ra, rb = epoch_ranges(hist_a, last_a), epoch_ranges(hist_b, last_b)
    agreed = 0
    for epoch, (a0, a1) in ra.items():
        if epoch in rb:
            b0, b1 = rb[epoch]
            lo, hi = max(a0, b0), min(a1, b1)
            if lo <= hi:
                agreed = max(agreed, hi)
    return agreed


def epoch_at(history: Sequence[Sequence[int]], seq: int) -> int:
    """The epoch of the record at ``seq`` in a log with this history (0 before the first)."""
    epoch = 0
    for e, first in history:
        if first > seq:
            break
        epoch = e
    return epoch if seq >= 1 else 0


def best_log(states: Sequence[dict]) -> int:
    """Index of the log a new master adopts: the highest (epoch of its last record, last seq).
    Every committed record is in it, provided the states come from enough replicators
    (a majority under quorum)."""
    return max(range(len(states)), key=lambda i: (states[i]["last_epoch"], states[i]["last"]))
