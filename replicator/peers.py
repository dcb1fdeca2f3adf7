"""A replicator's work with its peers: catch-up, and comparison with repair.

* Catch-up. A replicator that lacks records (it was down, or a master's APPEND left a gap)
  fetches the missing committed range from a peer's replay service, chunk by chunk, and
  appends it, then follows the master again. It also asks its peers every second how far they
  have committed, so that it catches up even when no master writes, and which streams they
  hold, so that an empty replicator (new, or rebuilt after its file was quarantined) fetches
  every stream.
* Log matching, as for a master's APPEND. A fetched chunk comes with ``prev_epoch``, the epoch
  of the peer's record just before it, and is refused when this replicator's record there is
  of another epoch. Every second the replicator also compares its epoch history with each
  peer's committed history: a tail that differs from a record the peer has committed was
  never committed, and is truncated (never below this replicator's own commit point; that
  would be a broken invariant, reported). So a stale tail of an older epoch is replaced, never
  spliced onto.
* Comparison. Every second it takes the next range of up to 10,000 committed records (a
  rolling window over the whole log) and compares its digest with the peers' digests of the
  same range. If its own copy is damaged (a CRC fails), or if at least two peers agree with each
  other and not with it, it replaces the range with a peer's bytes. Otherwise the difference is
  reported as an alarm (with one peer, nobody can tell which copy is right).

All of it runs in the replicator's one loop: requests go out on a DEALER per peer and answers
are handled as they arrive; nothing blocks.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import lmdb
import zmq

from mq import sockets, wire
from mq.record import FrameError, scan
from replicator.store import (
    U32_MAX,
    U64_MAX,
    CorruptFrame,
    PartialWrite,
    Store,
    is_write_failure,
    range_digest,
)

log = logging.getLogger("seqex.replicator.peers")

CHECK_EVERY_S = 1.0
COMPARE_RECORDS = 10_000
FETCH_BYTES = 16 << 20
REQUEST_TIMEOUT_S = 2.0


digest = range_digest  # of records' bytes (StreamLog.digest hashes a stored range)


def _runs(history: list, last: int) -> list[tuple[int, int, int]]:
    """[(epoch, first seq, last seq)] of a log with this history that ends at `last`."""
    out = []
    for i, (epoch, first) in enumerate(history):
        end = history[i + 1][1] - 1 if i + 1 < len(history) else last
        end = min(end, last)
        if first <= end:
            out.append((epoch, first, end))
    return out


def agreed_prefix(hist_a: list, last_a: int, hist_b: list, last_b: int) -> int:
    """The highest seq up to which two logs have one epoch history: the same epochs, starting
    at the same seqs. Unlike a comparison of epochs alone, it does not take a spliced log (a
    stale tail of an older epoch, then newer records) for one that agrees to its end."""
    agreed = 0
    for (ea, fa, ta), (eb, fb, tb) in zip(_runs(hist_a, last_a), _runs(hist_b, last_b),
                                          strict=False):
        if ea != eb or fa != fb:
            break
        agreed = min(ta, tb)
        if ta != tb:
            break
    return agreed


def _uint(value: Any, top: int = U64_MAX) -> int:
    if type(value) is not int or not 0 <= value <= top:
        raise ValueError(f"{value!r} is not an integer in 0..{top}")
    return value


def _history(value: Any) -> list[tuple[int, int]]:
    if not isinstance(value, list) or len(value) > 1_000_000:
        raise ValueError("history is not a list")
    out = []
    for h in value:
        if not isinstance(h, list) or len(h) != 2:
            raise ValueError("history entry is not [epoch, first seq]")
        out.append((_uint(h[0], U32_MAX), _uint(h[1])))
    return out


@dataclass
class _Repair:
    """A repair in progress: records first..last from the peer, whose digest the comparison
    agreed on (want), fetched in parts (a peer's answer holds at most 16 MiB) up to upto."""
    first: int
    last: int
    want: str
    peer: int
    asked: float
    upto: int
    parts: list[bytes] = field(default_factory=list)


class Peers:
    def __init__(self, store: Store, addrs: list[str], stats: dict):
        self.store = store
        self.stats = stats
        self.socks: list[zmq.Socket] = []
        for addr in addrs:
            self.socks.append(sockets.dealer(addr, immediate=True))
        self.addrs = addrs
        self.check_at = 0.0
        self.fetching: dict[str, tuple[int, float]] = {}  # stream -> (peer, asked at)
        self.compare_from: dict[str, int] = defaultdict(lambda: 1)
        self.comparing: dict[str, dict[str, Any]] = {}
        self.repairing: dict[str, _Repair] = {}
        self.on_disk_full = lambda exc: log.error("%s", exc)
        self.on_wrote = lambda: None   # a write went through (the disk has room)

    def reset(self, store: Store) -> None:
        """Start over with another store (the old file was quarantined)."""
        self.store = store
        self.fetching.clear()
        self.compare_from.clear()
        self.comparing.clear()
        self.repairing.clear()

    # -- the loop's hooks -------------------------------------------------------------------
    def register(self, poller: zmq.Poller) -> None:
        for sock in self.socks:
            poller.register(sock, zmq.POLLIN)

    def on_events(self, events: dict) -> None:
        for i, sock in enumerate(self.socks):
            if sock in events:
                while True:
                    try:
                        msg = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        self._on_answer(i, msg)
                    except (wire.WireError, FrameError, ValueError, KeyError, TypeError,
                            PartialWrite) as exc:  # Store.change has undone a PartialWrite
                        log.error("bad answer from peer %s: %s", self.addrs[i], exc)
                    except CorruptFrame as exc:  # the comparison finds and repairs it
                        log.error("%s", exc)
                    except lmdb.Error as exc:
                        if not is_write_failure(exc):
                            raise
                        self.fetching.clear()  # asked again once there is room
                        self.on_disk_full(exc)

    def tick(self) -> None:
        now = time.monotonic()
        for stream, (_peer, asked) in list(self.fetching.items()):
            if now - asked > REQUEST_TIMEOUT_S:
                del self.fetching[stream]
        for stream, job in list(self.repairing.items()):
            if now - job.asked > REQUEST_TIMEOUT_S:
                del self.repairing[stream]
        if not self.socks or now < self.check_at:
            return
        self.check_at = now + CHECK_EVERY_S
        self._ask_all([wire.PING, wire.pack({})])
        for stream, log_ in sorted(self.store.streams.items()):
            if log_.damaged:
                continue  # refused until the operator repairs it
            self._ask_all([wire.STATE, wire.pack({"stream": stream})])
            self._start_compare(stream, now)

    def behind(self, stream: str, upto: int) -> None:
        """A master's APPEND showed that records up to `upto` exist: fetch what is missing."""
        if stream not in self.fetching and self.socks:
            self._fetch(stream, 0, upto)

    # -- catch-up ---------------------------------------------------------------------------
    def _fetch(self, stream: str, peer: int, upto: int | None = None,
               start: int | None = None) -> None:
        log_ = self.store.find(stream)
        if log_ is None:
            return
        body = {"stream": stream, "from": start or log_.last + 1, "to": upto,
                "max_bytes": FETCH_BYTES, "req": "fetch"}
        if self._send(peer, [wire.REPLAY, wire.pack(body)]):
            self.fetching[stream] = (peer, time.monotonic())

    def _append_fetched(self, peer: int, stream: str, frame: bytes, body: dict) -> None:
        log_ = self.store.find(stream)
        self.fetching.pop(stream, None)
        if not frame or log_ is None:
            return
        _n, first, last = scan(frame)
        if first != log_.last + 1:
            return  # the master filled it meanwhile
        prev_epoch = body.get("prev_epoch")
        if prev_epoch is None:
            log.warning("%s: %s sent records without prev_epoch; not appended (it runs an "
                        "older version: upgrade it)", stream, self.addrs[peer])
            return
        prev_epoch = _uint(prev_epoch, U32_MAX)
        if _uint(body.get("commit", 0)) > last:
            # More is committed there: ask for the next chunk before writing this one, so
            # that the peer reads while this replicator writes.
            self._fetch(stream, peer, start=last + 1)
        def append(lg, txn):
            result = lg.append(txn, lg.epoch, frame, prev_epoch)
            if result.ok:  # a peer serves committed records only: they are committed here too
                lg.set_commit(txn, last)
            return result

        result = self.store.change(stream, append)
        if result.ok:
            self.on_wrote()
            self.stats["caught_up_records"] += last - first + 1
            return
        self.fetching.pop(stream, None)
        log.warning("%s: records %d..%d fetched from %s refused: %s%s", stream, first, last,
                    self.addrs[peer], result.reason,
                    "; comparing epoch histories" if result.reason == "conflict" else "")
        if result.reason == "conflict":
            # This log diverged before `first`: the peer's STATE says where, and the stale
            # tail is truncated (_on_state).
            self._send(peer, [wire.STATE, wire.pack({"stream": stream})])

    def _on_state(self, peer: int, stream: str, body: dict) -> None:
        """A peer's state: truncate a tail of this log that contradicts what the peer has
        committed, then fetch what the peer has committed beyond this log."""
        log_ = self.store.find(stream)
        if log_ is None:
            return
        commit = min(_uint(body.get("commit", 0)), _uint(body.get("last", 0)))
        history = _history(body.get("history", []))
        agreed = agreed_prefix(log_.history, log_.last, history, commit)
        if agreed < log_.last and agreed < commit:
            # The peer committed seq agreed + 1 with another epoch than this log holds there,
            # so this log's record there was never committed: a stale tail.
            if agreed < log_.commit:
                self.stats["divergent_ranges"] += 1
                log.error("%s: records from %d differ from what %s has committed, and this "
                          "replicator holds them as committed up to %d: a broken invariant; "
                          "not truncated (compare both logs with seqex replay)", stream,
                          agreed + 1, self.addrs[peer], log_.commit)
                return
            dropped = log_.last - agreed
            result = self.store.change(stream, lambda lg, txn: lg.truncate(txn, lg.epoch, agreed))
            if not result.ok:
                log.error("%s: could not truncate the stale tail after %d: %s", stream, agreed,
                          result.reason)
                return
            self.stats["truncated_records"] = self.stats.get("truncated_records", 0) + dropped
            log.warning("%s: the uncommitted tail %d..%d differs from the records %s has "
                        "committed; truncated, fetching from %d", stream, agreed + 1,
                        agreed + dropped, self.addrs[peer], agreed + 1)
            self.fetching.pop(stream, None)
        if commit > log_.last and stream not in self.fetching:
            self._fetch(stream, peer)

    def _on_streams(self, peer: int, body: dict) -> None:
        """A peer's PONG: start holding every stream it has committed records of (an empty
        or rebuilt replicator learns its streams this way)."""
        streams = body.get("streams")
        if not isinstance(streams, dict):
            return
        for name, info in sorted(streams.items())[:self.store.max_streams]:
            if not isinstance(name, str) or not isinstance(info, dict) or name in self.store.known:
                continue
            if _uint(info.get("commit", 0)) == 0:
                continue
            try:
                self.store.change(name, lambda lg, txn: None)
            except ValueError as exc:  # a bad name, or the stream limit
                log.error("%s: not fetched from %s: %s", name, self.addrs[peer], exc)
                continue
            log.warning("%s: held by %s and not here; fetching it", name, self.addrs[peer])
            self._fetch(name, peer)

    # -- comparison and repair ---------------------------------------------------------------
    def _start_compare(self, stream: str, now: float) -> None:
        pending = self.comparing.get(stream)
        if pending and now - pending["at"] < REQUEST_TIMEOUT_S:
            return
        log_ = self.store.find(stream)
        if log_ is None:
            return
        a = self.compare_from[stream]
        b = min(a + COMPARE_RECORDS - 1, log_.commit)
        if b < a:
            self.compare_from[stream] = 1 if log_.commit else a  # wrap around
            return
        # The range starts and ends at this replicator's frame boundaries, so that a damaged
        # frame always lies inside one compared range, which the repair replaces whole (a
        # peer's catch-up stores frames of many thousands of records: with a fixed window
        # their damage was never repaired). It ends before the frame that holds its last
        # record, unless that frame starts it: then it is that frame (up to 16 MiB, fetched
        # in parts if a peer sends less). A frame from `a` past the commit point waits.
        a = log_.frame_extent(a)[0]
        start, end = log_.frame_extent(b)
        if end != b and start > a:
            b = start - 1
        elif end <= log_.commit:
            b = end
        else:
            return
        self.comparing[stream] = {"from": a, "to": b, "at": now, "answers": {}}
        self._ask_all([wire.DIGEST, wire.pack({"stream": stream, "from": a, "to": b})])

    def _on_digest(self, peer: int, body: dict) -> None:
        stream = body["stream"]
        pending = self.comparing.get(stream)
        if not pending or (body["from"], body["to"]) != (pending["from"], pending["to"]):
            return
        if body.get("digest"):
            pending["answers"][peer] = body["digest"]
        a, b = pending["from"], pending["to"]
        log_ = self.store.find(stream)
        if log_ is None:
            return
        mine = pending.get("mine")
        if mine is None:  # once per comparison, whatever the number of peers
            try:
                mine = log_.digest(a, b)[0]
            except CorruptFrame:
                mine = ""
            pending["mine"] = mine
        damaged = mine == ""
        # A damaged copy is repaired from the first peer that sends a digest: another peer
        # may hold the range damaged too and answer with an error, never with a digest.
        if len(pending["answers"]) < len(self.socks) and not (damaged and pending["answers"]):
            return
        del self.comparing[stream]
        answers = list(pending["answers"].values())
        votes = {d: answers.count(d) for d in answers}
        best = max(votes, key=lambda d: (votes[d], d)) if votes else None
        if best is None or best == mine:
            self.compare_from[stream] = b + 1
            self.stats["compared_records"] += b - a + 1
            return
        if damaged or votes[best] >= 2:
            peer_i = next(i for i, d in pending["answers"].items() if d == best)
            log.error("%s: records %d..%d differ from the peers' (%s); repairing from %s",
                      stream, a, b, "damaged here" if damaged else "outvoted", self.addrs[peer_i])
            self.repairing[stream] = _Repair(a, b, best, peer_i, time.monotonic(), a - 1)
            self._ask_repair(stream, peer_i, a, b)
        else:
            self.stats["divergent_ranges"] += 1
            log.error("%s: records %d..%d differ from a peer and nothing says which is right",
                      stream, a, b)
            self.compare_from[stream] = b + 1

    def _ask_repair(self, stream: str, peer: int, a: int, b: int) -> None:
        self._send(peer, [wire.REPLAY, wire.pack(
            {"stream": stream, "from": a, "to": b, "max_bytes": 1 << 30, "req": "repair"})])

    def _apply_repair(self, peer: int, stream: str, frame: bytes) -> None:
        """A part of the repair's range from the peer asked: the next part is asked until the
        range is whole (a peer sends at most 16 MiB an answer), then the whole range is
        checked against the agreed digest and replaces this replicator's copy."""
        job = self.repairing.get(stream)
        if job is None or job.peer != peer:
            return
        a, b = job.first, job.last
        _n, first, last = scan(frame)
        if first != job.upto + 1 or last > b:
            del self.repairing[stream]
            log.error("%s: the repair answer %d..%d is not the next part of %d..%d", stream,
                      first, last, a, b)
            return
        job.parts.append(frame)
        job.upto = last
        if last < b:
            job.asked = time.monotonic()
            self._ask_repair(stream, peer, last + 1, b)
            return
        del self.repairing[stream]
        frame = b"".join(job.parts)
        if digest(frame) != job.want:
            log.error("%s: the repair bytes for %d..%d do not match the agreed digest", stream,
                      a, b)
            return
        self.store.change(stream, lambda lg, txn: lg.replace(txn, frame))
        self.stats["repaired_records"] += b - a + 1
        log.warning("%s: records %d..%d repaired", stream, a, b)

    # -- plumbing ---------------------------------------------------------------------------
    def _on_answer(self, peer: int, msg: list[bytes]) -> None:
        if len(msg) < 2:
            return
        body = wire.unpack(msg[1])
        if msg[0] == wire.PONG:
            self._on_streams(peer, body)
            return
        stream = body.get("stream")
        if not isinstance(stream, str):
            return
        if msg[0] == wire.RECORDS and len(msg) == 3:
            if body.get("req") == "fetch":
                self._append_fetched(peer, stream, msg[2], body)
            elif body.get("req") == "repair" and msg[2]:
                self._apply_repair(peer, stream, msg[2])
        elif msg[0] == wire.STATE:
            self._on_state(peer, stream, body)
        elif msg[0] == wire.DIGEST:
            self._on_digest(peer, body)

    def _ask_all(self, msg: list[bytes]) -> None:
        for i in range(len(self.socks)):
            self._send(i, msg)

    def _send(self, peer: int, msg: list[bytes]) -> bool:
        try:
            self.socks[peer].send_multipart(msg, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def close(self) -> None:
        for sock in self.socks:
            sock.close(0)
