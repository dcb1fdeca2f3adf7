"""The replicator process: persists frames of any number of streams and serves replay.

One ROUTER socket answers:

* APPEND {stream, epoch, first, last} + frame -> APPENDED {stream, ok, last, epoch, reason}.
  All APPENDs waiting on the socket are committed in one LMDB transaction (group commit)
  and acknowledged after the commit, cumulatively: ``last`` is the highest contiguous seq
  held. Refusals: "fenced" (epoch below one already seen), "gap" (the frame does not
  extend the log; the master resends from ``last`` + 1), "conflict" (different bytes at a
  seq already held; never overwritten).
* STATE {stream} -> {stream, last, epoch, ts, sources}: what a starting master needs.
* REPLAY {stream, from, to, max_bytes, req} -> RECORDS {stream, from, last, req} + frame:
  pull-based, one bounded chunk per request, so a slow reader costs no server memory.
* PING -> PONG with statistics; STOP -> PONG, then a clean exit.

A malformed message gets ERROR and changes nothing; the process never dies of bad input.
"""
from __future__ import annotations

import logging
import signal
import time
from typing import Any

import zmq

from mq import wire
from mq.record import FrameError
from replicator.store import Store

log = logging.getLogger("seqex.replicator")

MAX_BATCH = 256               # messages handled per group commit
MAX_REPLAY_BYTES = 16 << 20   # cap of one RECORDS chunk


class Replicator:
    def __init__(self, data_dir: str, bind: str, durability: str = "os",
                 map_size: int = 64 << 30):
        self.store = Store(data_dir, durability, map_size=map_size)
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, 200)
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 1000)
        self.sock.bind(bind)
        self.bind = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.running = True
        self.stats = {"appended_records": 0, "commits": 0, "replayed_bytes": 0,
                      "refused": 0, "errors": 0}

    # -- the loop -----------------------------------------------------------------------
    def serve(self) -> None:
        log.info("replicator listening on %s (durability %s)", self.bind, self.store.durability)
        while self.running:
            if not self.sock.poll(200):
                continue
            batch = []
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self.sock.recv_multipart(zmq.NOBLOCK, copy=True))
                except zmq.Again:
                    break
            self.handle(batch)
        self.sock.close(0)
        self.store.close()

    def handle(self, batch: list[list[bytes]]) -> None:
        """Appends of the batch share one transaction; their acks go out after commit."""
        replies: list[list[bytes]] = []
        txn = None
        for msg in batch:
            if len(msg) < 3:
                continue  # no identity and kind: nothing to answer
            ident, kind = msg[0], msg[1]
            try:
                body = wire.unpack(msg[2])
                if kind == wire.APPEND:
                    if len(msg) != 4:
                        raise wire.WireError("APPEND without a frame")
                    if txn is None:
                        txn = self.store.write()
                    replies.append([ident, wire.APPENDED, self._append(txn, body, msg[3])])
                else:
                    replies.append([ident, *self._control(kind, body)])
            except (wire.WireError, FrameError, ValueError) as exc:
                self.stats["errors"] += 1
                replies.append([ident, wire.ERROR, wire.pack({"error": str(exc)})])
        if txn is not None:
            txn.commit()
            self.stats["commits"] += 1
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
        result = log_.append(txn, epoch, frame)
        if not result.ok:
            self.stats["refused"] += 1
            if result.reason == "conflict":
                log.error("%s: refused different bytes at seq %d", stream, result.seq)
        self.stats["appended_records"] += result.last - before
        return wire.pack({"stream": stream, "ok": result.ok, "last": result.last,
                          "epoch": result.epoch, "reason": result.reason, "seq": result.seq})

    def _control(self, kind: bytes, body: dict) -> list[bytes]:
        if kind == wire.REPLAY:
            stream = wire.field(body, "stream", str)
            seq_from = wire.field(body, "from", int)
            seq_to = body.get("to")
            max_bytes = min(int(body.get("max_bytes") or MAX_REPLAY_BYTES), MAX_REPLAY_BYTES)
            log_ = self.store.stream(stream)
            frame = log_.read(seq_from, seq_to if isinstance(seq_to, int) else None, max_bytes)
            self.stats["replayed_bytes"] += len(frame)
            return [wire.RECORDS, wire.pack({"stream": stream, "from": seq_from,
                                             "last": log_.last, "epoch": log_.epoch,
                                             "req": body.get("req")}), frame]
        if kind == wire.STATE:
            stream = wire.field(body, "stream", str)
            log_ = self.store.stream(stream)
            return [wire.STATE, wire.pack({"stream": stream, "last": log_.last,
                                           "epoch": log_.epoch, "ts": log_.ts_ns,
                                           "sources": log_.sources()})]
        if kind == wire.PING:
            streams = {n: {"last": s.last, "epoch": s.epoch}
                       for n, s in sorted(self.store.streams.items())}
            return [wire.PONG, wire.pack({"role": "replicator", "streams": streams,
                                          **self.stats})]
        if kind == wire.STOP:
            self.running = False
            return [wire.PONG, wire.pack({"role": "replicator", "stopping": True})]
        raise wire.WireError(f"unknown message kind {kind[:32]!r}")


def main(data_dir: str, bind: str, durability: str = "os") -> None:
    server = Replicator(data_dir, bind, durability)

    def stop(_sig: int, _frame: Any) -> None:
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"replicator ready {server.bind}", flush=True)
    started = time.monotonic()
    server.serve()
    log.info("replicator stopped after %.1f s", time.monotonic() - started)
