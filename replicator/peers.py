"""A replicator's work with its peers: catch-up, and comparison with repair.

* Catch-up. A replicator that lacks records (it was down, or a master's APPEND left a gap)
  fetches the missing committed range from a peer's replay service, chunk by chunk, and
  appends it, then follows the master again. It also asks its peers every second how far they
  have committed, so that it catches up even when no master writes.
* Comparison. Every second it takes the next range of up to 10,000 committed records (a
  rolling window over the whole log) and compares its digest with the peers' digests of the
  same range. If its own copy is damaged (a CRC fails), or if at least two peers agree with each
  other and not with it, it replaces the range with a peer's bytes. Otherwise the difference is
  reported as an alarm (with one peer, nobody can tell which copy is right).

All of it runs in the replicator's one loop: requests go out on a DEALER per peer and answers
are handled as they arrive; nothing blocks.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from typing import Any

import zmq

from mq import sockets, wire
from mq.record import FrameError, scan
from replicator.store import CorruptFrame, Store

log = logging.getLogger("seqex.replicator.peers")

CHECK_EVERY_S = 1.0
COMPARE_RECORDS = 10_000
FETCH_BYTES = 16 << 20
REQUEST_TIMEOUT_S = 2.0


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


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
        self.repairing: dict[str, tuple[int, int, str, float]] = {}

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
                    except (wire.WireError, FrameError, ValueError, KeyError) as exc:
                        log.error("bad answer from peer %s: %s", self.addrs[i], exc)

    def tick(self) -> None:
        now = time.monotonic()
        for stream, (_peer, asked) in list(self.fetching.items()):
            if now - asked > REQUEST_TIMEOUT_S:
                del self.fetching[stream]
        for stream, (_a, _b, _want, asked) in list(self.repairing.items()):
            if now - asked > REQUEST_TIMEOUT_S:
                del self.repairing[stream]
        if not self.socks or now < self.check_at:
            return
        self.check_at = now + CHECK_EVERY_S
        for stream in self.store.names():
            self._ask_all([wire.STATE, wire.pack({"stream": stream})])
            self._start_compare(stream, now)

    def behind(self, stream: str, upto: int) -> None:
        """A master's APPEND showed that records up to `upto` exist: fetch what is missing."""
        if stream not in self.fetching and self.socks:
            self._fetch(stream, 0, upto)

    # -- catch-up ---------------------------------------------------------------------------
    def _fetch(self, stream: str, peer: int, upto: int | None = None,
               start: int | None = None) -> None:
        log_ = self.store.stream(stream)
        body = {"stream": stream, "from": start or log_.last + 1, "to": upto,
                "max_bytes": FETCH_BYTES, "req": "fetch"}
        if self._send(peer, [wire.REPLAY, wire.pack(body)]):
            self.fetching[stream] = (peer, time.monotonic())

    def _append_fetched(self, peer: int, stream: str, frame: bytes, body: dict) -> None:
        log_ = self.store.stream(stream)
        self.fetching.pop(stream, None)
        if not frame:
            return
        _n, first, last = scan(frame)
        if first != log_.last + 1:
            return  # the master filled it meanwhile
        if body.get("commit", 0) > last:
            # More is committed there: ask for the next chunk before writing this one, so
            # that the peer reads while this replicator writes.
            self._fetch(stream, peer, start=last + 1)
        result = self.store.change(stream, lambda lg, txn: lg.append(txn, lg.epoch, frame))
        if result.ok:
            self.stats["caught_up_records"] += last - first + 1
        else:
            self.fetching.pop(stream, None)
            log.warning("%s: records fetched from %s refused: %s", stream, self.addrs[peer],
                        result.reason)

    # -- comparison and repair ---------------------------------------------------------------
    def _start_compare(self, stream: str, now: float) -> None:
        pending = self.comparing.get(stream)
        if pending and now - pending["at"] < REQUEST_TIMEOUT_S:
            return
        log_ = self.store.stream(stream)
        a = self.compare_from[stream]
        b = min(a + COMPARE_RECORDS - 1, log_.commit)
        if b < a:
            self.compare_from[stream] = 1 if log_.commit else a  # wrap around
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
        if len(pending["answers"]) < len(self.socks):
            return
        del self.comparing[stream]
        a, b = pending["from"], pending["to"]
        log_ = self.store.stream(stream)
        damaged = False
        try:
            mine = digest(log_.read(a, b))
        except CorruptFrame:
            mine, damaged = "", True
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
            self.repairing[stream] = (a, b, best, time.monotonic())
            self._send(peer_i, [wire.REPLAY, wire.pack(
                {"stream": stream, "from": a, "to": b, "max_bytes": 1 << 30, "req": "repair"})])
        else:
            self.stats["divergent_ranges"] += 1
            log.error("%s: records %d..%d differ from a peer and nothing says which is right",
                      stream, a, b)
            self.compare_from[stream] = b + 1

    def _apply_repair(self, stream: str, frame: bytes) -> None:
        job = self.repairing.pop(stream, None)
        if job is None:
            return
        a, b, want, _at = job
        _n, first, last = scan(frame)
        if (first, last) != (a, b) or digest(frame) != want:
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
        stream = body.get("stream")
        if not isinstance(stream, str):
            return
        if msg[0] == wire.RECORDS and len(msg) == 3:
            if body.get("req") == "fetch":
                self._append_fetched(peer, stream, msg[2], body)
            elif body.get("req") == "repair" and msg[2]:
                self._apply_repair(stream, msg[2])
        elif msg[0] == wire.STATE:
            log_ = self.store.stream(stream)
            if body.get("commit", 0) > log_.last and stream not in self.fetching:
                self._fetch(stream, peer)
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
