"""Subscriber client: every record of a stream from any seq, exactly once, in order.

The live feed is a ZeroMQ SUB socket, which drops silently at its high-water mark and misses
what was published before it joined. So the subscriber never trusts it to be complete: it
subscribes first, replays from a replicator from the wanted seq until that replicator has
nothing more, then takes live frames, trimming the part it already delivered; a live frame
that starts beyond the next wanted seq is a gap, filled by replay before the frame is used.
The sequencer's idle Ticks make a lost tail visible within one tick interval.

``poll`` returns frames ``(first, last, frame)`` whose seqs continue exactly where the
previous call ended; a consumer that persists ``next_seq`` with its own state resumes from
there after a crash.
"""
from __future__ import annotations

import logging
import time

import zmq

from mq import auth, sockets, wire
from mq.record import FrameError, first_epoch, scan, trim

log = logging.getLogger("seqex.subscriber")

REPLAY_CHUNK = 4 << 20
REPLAY_TIMEOUT_S = 0.2       # a replicator silent this long: ask the next one ...
REPLAY_TIMEOUT_MAX_S = 1.6   # ... doubling the wait at each one that is silent, up to this
SILENCE_PROBE_S = 1.0   # live feed silent this long (ten idle ticks): ask a replicator
DRAIN_EVERY_S = 0.01    # live: replay answers that came late are read and dropped this often


class Subscriber:
    def __init__(self, stream: str, pub_addr: str | list[str], replicators: list[str],
                 next_seq: int = 1, rcvhwm: int = 100_000):
        """pub_addr: the master's publisher, or several publishers of the stream (the
        replicators that fan out, docs/log.md): the live feed takes each seq from whichever
        copy comes first and drops the others."""
        if next_seq < 1:
            raise ValueError("seqs start at 1")
        if not replicators:
            raise ValueError("a subscriber needs a replicator to replay from")
        self.stream = stream
        self.next_seq = next_seq
        self.ctx = zmq.Context.instance()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, stream.encode() + b"\0")
        for addr in [pub_addr] if isinstance(pub_addr, str) else pub_addr:
            auth.secure_client(self.sub, addr)   # the server key applies to the next connect
            self.sub.connect(addr)
        self.replicas: list[zmq.Socket] = []
        for addr in replicators:
            self.replicas.append(sockets.dealer(addr, heartbeat_ms=sockets.IDLE_HEARTBEAT_MS))
        self.replica_i = 0
        self.replaying = True       # catching up from a replicator
        self.target: int | None = None  # replay must reach this seq (None: until the end)
        self.held: tuple[int, int, bytes] | None = None  # live frame waiting for a gap fill
        self.req = 0
        self.inflight_at = 0.0      # when the outstanding replay request left
        self.timeout_s = REPLAY_TIMEOUT_S   # how long it may go unanswered
        self.heard_at = time.monotonic()  # last live frame, or last probe
        self.drain_at = 0.0         # live: when late replay answers are next read and dropped
        self.live_epoch = 0         # highest master epoch seen on the live feed
        self.stats = {"live_frames": 0, "replayed_frames": 0, "gaps": 0, "bad_frames": 0,
                      "fenced_frames": 0}

    # -- replay ------------------------------------------------------------------------
    def _ask(self) -> None:
        self.req += 1
        self.inflight_at = time.monotonic()
        body = {"stream": self.stream, "from": self.next_seq, "to": self.target,
                "max_bytes": REPLAY_CHUNK, "req": self.req}
        try:
            self.replicas[self.replica_i].send_multipart([wire.REPLAY, wire.pack(body)],
                                                         zmq.NOBLOCK)
        except zmq.Again:
            pass  # not connected: the timeout moves on to another replicator

    def request(self) -> None:
        """Send the replay request now, if one is due, rather than at the first poll: its
        answer is then on its way while the caller does something else first (a replica
        restoring its snapshot). An answer waiting when poll() comes is taken however long
        that took; the request's timeout applies only while nothing has come."""
        if self.replaying and not self.inflight_at:
            self._ask()

    def _replay_step(self, timeout_ms: int, out: list) -> None:
        """One request/answer of replay; moves to live when caught up.

        A replicator that does not answer (killed, frozen) is left after REPLAY_TIMEOUT_S
        (or twice what the last answer took, if more) for the next, the wait doubling up to
        REPLAY_TIMEOUT_MAX_S while none answers: a second of silence per dead replicator held
        every replica's results back after a quorum was lost. An answer that comes late from
        one left behind is still taken if it continues the stream (it starts at next_seq), so
        a slow replicator's work is not wasted."""
        if not self.inflight_at:
            self._ask()
        ready = zmq.zmq_poll([(sock, sockets.POLLIN) for sock in self.replicas], timeout_ms)
        if not ready:
            if time.monotonic() - self.inflight_at > self.timeout_s:
                self.replica_i = (self.replica_i + 1) % len(self.replicas)
                self.inflight_at = 0.0
                self.timeout_s = min(2 * self.timeout_s, REPLAY_TIMEOUT_MAX_S)
            return
        msg = sockets.recv_parts(ready[0][0])
        if msg[0] != wire.RECORDS or len(msg) != 3:
            return
        body = wire.unpack(msg[1])
        if body.get("stream") != self.stream or body.get("from") != self.next_seq:
            return  # an answer to a question this subscriber has moved past
        if body.get("req") != self.req and not msg[2]:
            return  # a stale "nothing more": only the current request's may end a replay
        if body.get("req") == self.req and self.inflight_at:
            # twice what this answer took: a busy replicator is not asked twice a chunk
            took = time.monotonic() - self.inflight_at
            self.timeout_s = min(max(REPLAY_TIMEOUT_S, 2 * took), REPLAY_TIMEOUT_MAX_S)
        self.inflight_at = 0.0
        frame = msg[2]
        if frame:
            _n, first, last = scan(frame)
            if first != self.next_seq:
                raise RuntimeError(f"{self.stream}: replay from {self.next_seq} began at {first}")
            self._deliver(first, last, frame, out)
            self.stats["replayed_frames"] += 1
        if self.target is None:
            if not frame:
                self.replaying = False  # this replicator has nothing more: go live
        elif self.next_seq > self.target:
            self.replaying, self.target = False, None
        elif not frame:
            # This replicator does not hold the gap yet (ack policy "first"): try another,
            # after a short pause so that a lagging set of replicators is not spun on.
            self.replica_i = (self.replica_i + 1) % len(self.replicas)
            time.sleep(0.005)

    # -- live ---------------------------------------------------------------------------
    def _drain_replicas(self) -> None:
        """Live: an answer that came after the replay ended is read and dropped, so that no
        socket of sockets() stays readable for long for a caller that waits on them (it would
        wake at once, turn after turn). Every DRAIN_EVERY_S: a look at each replicator's
        socket costs microseconds, too much for every live step."""
        now = time.monotonic()
        if now < self.drain_at:
            return
        self.drain_at = now + DRAIN_EVERY_S
        for sock in self.replicas:
            while sockets.readable(sock):
                sockets.recv_parts(sock)

    def _live_step(self, timeout_ms: int, out: list) -> None:
        self._drain_replicas()
        if self.held is not None:
            first, last, frame = self.held
            self.held = None
            self._take(first, last, frame, out)
            if self.replaying:
                return
        if not zmq.zmq_poll([(self.sub, sockets.POLLIN)], timeout_ms):
            if time.monotonic() - self.heard_at > SILENCE_PROBE_S:
                # The feed is silent (master down, or its last frames dropped): replay
                # whatever the replicators hold beyond next_seq.
                self.heard_at = time.monotonic()
                self.replaying, self.target, self.inflight_at = True, None, 0.0
            return
        self.heard_at = time.monotonic()
        for i in range(1024):
            if i and not sockets.readable(self.sub):
                return
            try:
                msg = sockets.recv_parts(self.sub, sockets.NOBLOCK)
            except zmq.Again:
                return
            if len(msg) != 2:
                self.stats["bad_frames"] += 1
                continue
            try:
                _n, first, last = scan(msg[1])
            except FrameError as exc:
                self.stats["bad_frames"] += 1
                log.error("%s: dropped a malformed live frame: %s", self.stream, exc)
                continue
            self.stats["live_frames"] += 1
            epoch = first_epoch(msg[1])
            if epoch < self.live_epoch:
                self.stats["fenced_frames"] += 1  # a stale master's: a newer one took over
                continue
            self.live_epoch = epoch
            self._take(first, last, msg[1], out)
            if self.replaying:
                return

    def _take(self, first: int, last: int, frame: bytes, out: list) -> None:
        if last < self.next_seq:
            return
        if first > self.next_seq:
            self.stats["gaps"] += 1
            self.held = (first, last, frame)
            self.replaying, self.target = True, first - 1
            self.inflight_at = 0.0
            return
        self._deliver(first, last, frame, out)

    def _deliver(self, first: int, last: int, frame: bytes, out: list) -> None:
        if first < self.next_seq:
            frame = trim(frame, first, self.next_seq)
            first = self.next_seq
        out.append((first, last, frame))
        self.next_seq = last + 1

    def poll(self, timeout_ms: int = 100) -> list[tuple[int, int, bytes]]:
        """Frames that continue the stream exactly where the last call ended (maybe none)."""
        out: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + timeout_ms / 1000
        while not out:
            left = max(0, int((deadline - time.monotonic()) * 1000))
            if self.replaying:
                self._replay_step(min(left, 50), out)
            else:
                self._live_step(left, out)
            if time.monotonic() >= deadline:
                break
        return out

    def due(self, events: dict, now: float) -> bool:
        """Whether poll(0) has anything to do, given what a caller's poller (with every
        socket of sockets() registered) said: not while the subscriber is live, holds no
        frame, its live socket has nothing and the silence probe is not due. A master that
        takes this stream as an upstream asks this each turn of its loop rather than calling
        poll(0) for nothing."""
        return self.replaying or self.held is not None or self.sub in events \
            or any(sock in events for sock in self.replicas) \
            or now - self.heard_at > SILENCE_PROBE_S

    def sockets(self) -> list[zmq.Socket]:
        """Every socket poll() reads (the live feed and the replay links): for a caller that
        waits on them (gateway/zwait.py) rather than calling poll() on a timer."""
        return [self.sub, *self.replicas]

    def close(self) -> None:
        self.sub.close(0)
        for sock in self.replicas:
            sock.close(0)
