"""The replica host: runs one engine state machine on its input stream (DESIGN.md §1, §4).

* Input: a Subscriber on the engine's in stream (replay from the replicators, then live; each
  record exactly once, in order). Every frame goes through ``engine.apply_frame`` in one call.
* Role **hot**: each output frame (one output record per input record, at the input's seq) goes
  to the out stream's mirror master as ``[DATA, {replica}, frame]``.
  Role **warm**: publishes nothing, keeps recent outputs, and writes snapshots.
* Snapshots (any role with a snapshot directory): every ``snapshot_every`` records or
  ``snapshot_s`` seconds, written atomically (temporary file, fsync, rename) as
  ``<stream>-<seq>.snap``: magic, seq, SHA-256 of the state, length, state. The last
  ``keep`` are kept.
* Start-up: the newest usable snapshot from its own directory or a shared one (a damaged or
  truncated file is skipped), then the input from that seq + 1. Nothing is missed or repeated.
* Promotion: a warm replica becomes hot on PROMOTE, without a restart. It asks the mirror how
  far the out stream is committed, and sends its kept outputs from there on.
* A control ROUTER answers PING (role, seq, lag, rates), HASH (seq and state hash), PROMOTE
  and STOP. The process pins itself to its core (SEQEX_CPU).

The host is engine-agnostic. An engine is anything with ``apply_frame(frame) -> frame``,
``snapshot() -> bytes``, ``restore(bytes)`` and ``state_hash() -> bytes``; ENGINES names the
ones the command line can start.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import signal
import struct
import time
from typing import Any

import zmq

from mq import auth, sockets, wire
from mq.control import call
from mq.sequencer import Window
from mq.subscriber import Subscriber

log = logging.getLogger("seqex.replica")

SNAP_HEADER = struct.Struct("<8sQ32sQ")   # magic, seq, sha256(state), len(state)
SNAP_MAGIC = b"SQXSNAP1"


def _crossengine(config: dict) -> Any:
    from crossengine.engine import CrossEngine
    return CrossEngine(**config), CrossEngine.restore


def _tradingengine(config: dict) -> Any:
    from tradingengine.engine import TradingEngine, spec_from_dict
    specs = [spec_from_dict(s) for s in config.get("specs", [])]
    engine = TradingEngine(specs, config.get("shard", 0), config.get("n_shards", 1))
    return engine, TradingEngine.restore


ENGINES = {"crossengine": _crossengine, "tradingengine": _tradingengine}


class ReplicaHost:
    def __init__(self, name: str, engine: str, stream: str, pub: str, replicators: list[str],
                 control_bind: str, role: str = "hot", mirror: str | None = None,
                 snapshot_dir: str | None = None, shared_snapshot_dir: str | None = None,
                 snapshot_every: int = 100_000, snapshot_s: float = 30.0, keep: int = 3,
                 engine_config: dict | None = None, output_window_bytes: int = 256 << 20):
        if role not in ("hot", "warm"):
            raise ValueError("role is hot or warm")
        if role == "hot" and not mirror:
            raise ValueError("a hot replica needs the mirror master's address")
        self.name, self.stream, self.role = name, stream, role
        self.engine, self._restore = ENGINES[engine](engine_config or {})
        self.snapshot_dir, self.shared_dir = snapshot_dir, shared_snapshot_dir
        self.snapshot_every, self.snapshot_s, self.keep = snapshot_every, snapshot_s, keep
        self.mirror_addr = mirror
        self.mirror = sockets.dealer(mirror) if role == "hot" else None
        self.control = sockets.router(control_bind)
        self.control_endpoint = self.control.getsockopt_string(zmq.LAST_ENDPOINT)
        self.outputs = Window(output_window_bytes)
        self.seq = 0                 # last input seq applied
        self.snap_seq = 0
        self.snap_at = time.monotonic()
        self.head = 0                # highest input seq seen on the feed (for lag)
        self.running = True
        self.stats = {"applied": 0, "frames": 0, "snapshots": 0, "published_frames": 0,
                      "restored_from": 0}
        self.rate = 0.0
        self._load_snapshot()
        self.sub = Subscriber(stream, pub, replicators, next_seq=self.seq + 1)

    # -- snapshots --------------------------------------------------------------------------
    def _load_snapshot(self) -> None:
        paths = []
        for d in (self.snapshot_dir, self.shared_dir):
            if d:
                paths += glob.glob(os.path.join(d, f"{self.stream}-*.snap"))
        for path in sorted(paths, key=_snap_seq, reverse=True):
            state = read_snapshot(path)
            if state is None:
                log.warning("%s: skipping unusable snapshot %s", self.name, path)
                continue
            seq, data = state
            self.engine = self._restore(data)
            self.seq = self.snap_seq = seq
            self.stats["restored_from"] = seq
            log.info("%s: restored from %s (seq %d)", self.name, path, seq)
            return

    def _maybe_snapshot(self) -> None:
        if not self.snapshot_dir:
            return
        due = (self.seq - self.snap_seq >= self.snapshot_every
               or time.monotonic() - self.snap_at >= self.snapshot_s)
        if due and self.seq > self.snap_seq:
            write_snapshot(self.snapshot_dir, self.stream, self.seq, self.engine.snapshot(),
                           self.keep)
            self.snap_seq, self.snap_at = self.seq, time.monotonic()
            self.stats["snapshots"] += 1

    # -- the loop ---------------------------------------------------------------------------
    def serve(self) -> None:
        log.info("%s: %s replica of %s from seq %d", self.name, self.role, self.stream,
                 self.seq + 1)
        window_start, window_n = time.monotonic(), 0
        while self.running:
            frames = self.sub.poll(50)
            for first, last, frame in frames:
                if first != self.seq + 1:
                    raise RuntimeError(f"{self.name}: input jumped from {self.seq} to {first}")
                out = self.engine.apply_frame(frame)
                self.seq = last
                self.head = max(self.head, last)
                self.outputs.add(first, last, out)
                if self.mirror is not None:
                    self._publish(out)
                self.stats["applied"] += last - first + 1
                self.stats["frames"] += 1
                window_n += last - first + 1
            now = time.monotonic()
            if now - window_start >= 1.0:
                self.rate, window_start, window_n = window_n / (now - window_start), now, 0
            self._maybe_snapshot()
            self._control()
        self.sub.close()
        self.control.close(0)
        if self.mirror is not None:
            self.mirror.close(0)

    def _publish(self, out: bytes) -> None:
        try:
            self.mirror.send_multipart([wire.DATA, wire.pack({"replica": self.name}), out],
                                       zmq.NOBLOCK)
            self.stats["published_frames"] += 1
        except zmq.Again:
            pass  # the mirror is away; the other hot replica, or a resend, covers it
        while self.mirror.poll(0):
            self.mirror.recv_multipart()  # acks: the mirror's position (used on promotion)

    def promote(self) -> dict:
        """Warm -> hot: send the kept outputs the mirror has not committed, then go live."""
        if self.role == "hot":
            return {"role": "hot", "resent_from": None}
        if not self.mirror_addr:
            raise RuntimeError(f"{self.name}: no mirror configured; start it with --mirror")
        _k, status, _ = call(self.mirror_addr, wire.PING, timeout_s=5)
        start = status["committed"] + 1
        self.mirror = sockets.dealer(self.mirror_addr)
        seq = start
        while seq <= self.seq:
            piece = self.outputs.frame_from(seq)
            if piece is None:
                raise RuntimeError(f"{self.name}: outputs from {seq} are no longer kept")
            _first, last, frame = piece
            self._publish(frame)
            seq = last + 1
        self.role = "hot"
        log.warning("%s: promoted to hot; resent outputs %d..%d", self.name, start, self.seq)
        return {"role": "hot", "resent_from": start}

    def _control(self) -> None:
        while True:
            try:
                peer, msg = auth.recv_multipart(self.control, zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(msg) < 3:
                continue
            ident, kind = msg[0], msg[1]
            reason = auth.operator_refusal(peer) if kind in (wire.STOP, wire.PROMOTE) else None
            if reason is not None:
                what = f"{self.name}: {kind.decode()}"
                auth.note_refusal(peer, reason, what)
                self.control.send_multipart([ident, wire.ERROR, wire.pack(
                    auth.refused_body(reason, what))])
                continue
            if kind == wire.PING:
                body = self.status()
            elif kind == wire.HASH:
                body = {"seq": self.seq, "hash": self.engine.state_hash().hex()}
            elif kind == wire.PROMOTE:
                try:
                    body = self.promote()
                except (TimeoutError, RuntimeError) as exc:
                    body = {"error": str(exc)}
            elif kind == wire.STOP:
                self.running = False
                body = {"stopping": True}
            else:
                body = {"error": f"unknown message kind {kind[:32]!r}"}
            self.control.send_multipart([ident, wire.PONG, wire.pack(body)])

    def status(self) -> dict:
        return {"role": "replica", "name": self.name, "replica_role": self.role,
                "stream": self.stream, "seq": self.seq, "lag": max(0, self.head - self.seq),
                "rate": round(self.rate), "snapshot_seq": self.snap_seq,
                "refusals": auth.refusal_stats(), **self.stats}


def _snap_seq(path: str) -> int:
    try:
        return int(os.path.basename(path).rsplit("-", 1)[1].split(".")[0])
    except (IndexError, ValueError):
        return -1


def write_snapshot(directory: str, stream: str, seq: int, state: bytes, keep: int) -> str:
    """Write atomically: a reader sees the old file set or the new one, never half a file."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{stream}-{seq:020d}.snap")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(SNAP_HEADER.pack(SNAP_MAGIC, seq, hashlib.sha256(state).digest(), len(state)))
        f.write(state)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for old in sorted(glob.glob(os.path.join(directory, f"{stream}-*.snap")), key=_snap_seq)[:-keep]:
        os.remove(old)
    return path


def read_snapshot(path: str) -> tuple[int, bytes] | None:
    """(seq, state), or None for a file that is not a whole, intact snapshot."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNAP_HEADER.size)
            if len(head) != SNAP_HEADER.size:
                return None
            magic, seq, digest, length = SNAP_HEADER.unpack(head)
            state = f.read(length + 1)
    except OSError:
        return None
    if magic != SNAP_MAGIC or len(state) != length or hashlib.sha256(state).digest() != digest:
        return None
    return seq, state


def main(a: Any) -> None:
    import json
    host = ReplicaHost(a.name, a.engine, a.stream, a.pub, a.replicator, a.control, a.role,
                       a.mirror, a.snapshots, a.shared_snapshots, a.snapshot_every,
                       a.snapshot_s, a.keep, json.loads(a.engine_config))
    signal.signal(signal.SIGTERM, lambda *_: setattr(host, "running", False))
    signal.signal(signal.SIGINT, lambda *_: setattr(host, "running", False))
    print(f"replica ready {host.control_endpoint} {host.role} from {host.seq + 1}", flush=True)
    host.serve()


__all__ = ["ENGINES", "ReplicaHost", "read_snapshot", "write_snapshot"]
