"""The replicator process: persists frames of any number of streams and serves replay.

One ROUTER socket answers:

* APPEND {stream, epoch, first, last} + frame -> APPENDED {stream, ok, last, epoch, reason}.
  All APPENDs waiting on the socket are committed in one LMDB transaction (group commit)
  and acknowledged after the commit, cumulatively: ``last`` is the highest contiguous seq
  held. Refusals: "fenced" (epoch below one already seen), "gap" (the frame does not
  extend the log; the master resends from ``last`` + 1), "conflict" (different bytes at a
  seq already held; never overwritten).
* STATE {stream} -> the log's state (last, epoch, commit, epoch history, sources); CLAIM
  {stream, epoch} -> the same, after persisting the epoch: a new master fences the old one.
* TRUNCATE {stream, epoch, after}: drop a divergent uncommitted tail (never below commit).
* REPLAY {stream, from, to, max_bytes, req} -> RECORDS {stream, from, last, req} + frame:
  pull-based, one bounded chunk per request, so a slow reader costs no server memory.
* DIGEST {stream, from, to} -> a digest of a committed range (peers compare logs with it).
* PING -> PONG with statistics; STOP -> PONG, then a clean exit.

With --peer addresses it also catches up from, compares with, and repairs from its peers
(replicator/peers.py).

A malformed message gets ERROR and changes nothing; the process never dies of bad input.
"""
from __future__ import annotations

import logging
import signal
import time
from typing import Any

import zmq

from mq import auth, sockets, wire
from mq.record import FrameError
from replicator.peers import Peers, digest
from replicator.store import CorruptFrame, Store

log = logging.getLogger("seqex.replicator")

MAX_BATCH = 256               # messages handled per group commit
MAX_REPLAY_BYTES = 16 << 20   # cap of one RECORDS chunk


class Replicator:
    def __init__(self, data_dir: str, bind: str, durability: str = "os",
                 map_size: int = 64 << 30, peers: list[str] | None = None):
        self.store = Store(data_dir, durability, map_size=map_size)
        self.sock = sockets.router(bind)
        self.bind = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.running = True
        self.stats = {"appended_records": 0, "commits": 0, "replayed_bytes": 0,
                      "refused": 0, "errors": 0, "caught_up_records": 0, "compared_records": 0,
                      "divergent_ranges": 0, "repaired_records": 0, "damaged_reads": 0,
                      "unauthorized": 0}
        self.peers = Peers(self.store, peers or [], self.stats)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.peers.register(self.poller)

    # -- the loop -----------------------------------------------------------------------
    def serve(self) -> None:
        log.info("replicator listening on %s (durability %s)", self.bind, self.store.durability)
        while self.running:
            events = dict(self.poller.poll(200))
            if self.sock in events:
                batch, peers = [], []
                while len(batch) < MAX_BATCH:
                    try:
                        peer, msg = auth.recv_multipart(self.sock, zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    batch.append(msg)
                    peers.append(peer)
                self.handle(batch, peers)
            self.peers.on_events(events)
            self.peers.tick()
        self.peers.close()
        self.sock.close(0)
        self.store.close()

    def handle(self, batch: list[list[bytes]], peers: list[str | None] | None = None) -> None:
        """Consecutive writes of the batch share one transaction (group commit); their acks go
        out after the commit. A read or control message first commits what came before it, so
        it sees everything acknowledged and replies keep their order. peers: the
        authenticated key of each message's sender (mq.auth), checked against its role
        before anything is written."""
        replies: list[list[bytes]] = []
        txn = None
        for i, msg in enumerate(batch):
            if len(msg) < 3:
                continue  # no identity and kind: nothing to answer
            ident, kind = msg[0], msg[1]
            if peers is not None and (refusal := self._refusal(peers[i], kind, msg[2])):
                replies.append([ident, wire.ERROR, wire.pack(refusal)])
                continue
            if txn is not None and kind not in (wire.APPEND, wire.CLAIM, wire.TRUNCATE,
                                                wire.COMMIT):
                self._commit(txn, replies)
                txn, replies = None, []
            try:
                body = wire.unpack(msg[2])
                if kind == wire.APPEND:
                    if len(msg) != 4:
                        raise wire.WireError("APPEND without a frame")
                    if txn is None:
                        txn = self.store.write()
                    replies.append([ident, wire.APPENDED, self._append(txn, body, msg[3])])
                elif kind == wire.COMMIT:
                    if txn is None:
                        txn = self.store.write()
                    log_ = self.store.stream(wire.field(body, "stream", str), txn)
                    if wire.field(body, "epoch", int) >= log_.epoch:
                        log_.set_commit(txn, wire.field(body, "commit", int))
                elif kind in (wire.CLAIM, wire.TRUNCATE):
                    if txn is None:
                        txn = self.store.write()
                    replies.append([ident, *self._master_change(txn, kind, body)])
                else:
                    replies.append([ident, *self._control(kind, body)])
            except CorruptFrame as exc:
                self.stats["damaged_reads"] += 1
                log.error("%s", exc)
                replies.append([ident, wire.ERROR, wire.pack({"error": str(exc)})])
            except (wire.WireError, FrameError, ValueError) as exc:
                self.stats["errors"] += 1
                replies.append([ident, wire.ERROR, wire.pack({"error": str(exc)})])
        if txn is not None:
            self._commit(txn, replies)
        else:
            self._send(replies)

    def _refusal(self, peer: str | None, kind: bytes, raw: bytes) -> dict | None:
        """The ERROR body for a message its sender's role does not allow, else None."""
        if auth.insecure():
            return None
        stream = None
        if kind in (wire.APPEND, wire.COMMIT, wire.TRUNCATE, wire.CLAIM):
            try:
                stream = wire.unpack(raw).get("stream")
            except wire.WireError:
                stream = None
        reason = auth.replicator_refusal(peer, kind, stream if isinstance(stream, str) else None)
        if reason is None:
            return None
        self.stats["unauthorized"] += 1
        what = f"{kind[:16].decode('ascii', 'replace')} {stream or ''}".strip()
        auth.note_refusal(peer, reason, what)
        return auth.refused_body(reason, what)

    def _commit(self, txn: Any, replies: list[list[bytes]]) -> None:
        txn.commit()
        self.stats["commits"] += 1
        self._send(replies)

    def _send(self, replies: list[list[bytes]]) -> None:
        for reply in replies:
            try:
                self.sock.send_multipart(reply, zmq.NOBLOCK)
            except zmq.Again:
                pass  # the peer is gone or slow; it resends, and acks are cumulative

    def _append(self, txn: Any, body: dict, frame: bytes) -> bytes:
        stream = wire.field(body, "stream", str)
        epoch = wire.field(body, "epoch", int)
        log_ = self.store.stream(stream, txn)
        before = log_.last
        prev = body.get("prev_epoch")
        result = log_.append(txn, epoch, frame,
                             prev if isinstance(prev, int) and not isinstance(prev, bool) else None)
        commit = body.get("commit")
        if result.ok and isinstance(commit, int) and not isinstance(commit, bool):
            log_.set_commit(txn, commit)
        if not result.ok:
            self.stats["refused"] += 1
            if result.reason == "conflict":
                log.error("%s: refused different bytes at seq %d", stream, result.seq)
            elif result.reason == "gap":
                self.peers.behind(stream, wire.field(body, "first", int) - 1)
        self.stats["appended_records"] += result.last - before
        return wire.pack({"stream": stream, "ok": result.ok, "last": result.last,
                          "epoch": result.epoch, "reason": result.reason, "seq": result.seq})

    def _master_change(self, txn: Any, kind: bytes, body: dict) -> list[bytes]:
        stream = wire.field(body, "stream", str)
        epoch = wire.field(body, "epoch", int)
        log_ = self.store.stream(stream, txn)
        if kind == wire.CLAIM:
            ok = log_.claim(txn, epoch)
            if not ok:
                self.stats["refused"] += 1
            return [wire.STATE, wire.pack({**log_.state(), "ok": ok})]
        result = log_.truncate(txn, epoch, wire.field(body, "after", int))
        if result.ok:
            log.info("%s: truncated after seq %d for epoch %d", stream, log_.last, epoch)
        else:
            self.stats["refused"] += 1
            log.error("%s: refused to truncate after %d: %s", stream, body["after"], result.reason)
        return [wire.APPENDED, wire.pack({"stream": stream, "ok": result.ok, "last": result.last,
                                          "epoch": result.epoch, "reason": result.reason,
                                          "seq": result.seq})]

    def _control(self, kind: bytes, body: dict) -> list[bytes]:
        if kind == wire.REPLAY:
            stream = wire.field(body, "stream", str)
            seq_from = wire.field(body, "from", int)
            seq_to = body.get("to")
            max_bytes = min(int(body.get("max_bytes") or MAX_REPLAY_BYTES), MAX_REPLAY_BYTES)
            log_ = self.store.stream(stream)
            top = log_.last if body.get("uncommitted") is True else log_.commit
            if not isinstance(seq_to, int) or seq_to > top:
                seq_to = top
            frame = log_.read(seq_from, seq_to, max_bytes)
            self.stats["replayed_bytes"] += len(frame)
            return [wire.RECORDS, wire.pack({"stream": stream, "from": seq_from,
                                             "last": log_.last, "commit": log_.commit,
                                             "epoch": log_.epoch, "req": body.get("req")}),
                    frame]
        if kind == wire.DIGEST:
            stream = wire.field(body, "stream", str)
            seq_from, seq_to = wire.field(body, "from", int), wire.field(body, "to", int)
            log_ = self.store.stream(stream)
            answer = {"stream": stream, "from": seq_from, "to": seq_to, "digest": ""}
            if 1 <= seq_from <= seq_to <= log_.commit and seq_to - seq_from < 1_000_000:
                answer["digest"] = digest(log_.read(seq_from, seq_to))
            return [wire.DIGEST, wire.pack(answer)]
        if kind == wire.STATE:
            stream = wire.field(body, "stream", str)
            return [wire.STATE, wire.pack({**self.store.stream(stream).state(), "ok": True})]
        if kind == wire.PING:
            streams = {n: {"last": s.last, "epoch": s.epoch, "commit": s.commit}
                       for n, s in sorted(self.store.streams.items())}
            return [wire.PONG, wire.pack({"role": "replicator", "streams": streams,
                                          "refusals": auth.refusal_stats(), **self.stats})]
        if kind == wire.STOP:
            self.running = False
            return [wire.PONG, wire.pack({"role": "replicator", "stopping": True})]
        raise wire.WireError(f"unknown message kind {kind[:32]!r}")


def main(data_dir: str, bind: str, durability: str = "os", peers: list[str] | None = None) -> None:
    server = Replicator(data_dir, bind, durability, peers=peers)

    def stop(_sig: int, _frame: Any) -> None:
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"replicator ready {server.bind}", flush=True)
    started = time.monotonic()
    server.serve()
    log.info("replicator stopped after %.1f s", time.monotonic() - started)
