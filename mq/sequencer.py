"""The sequencer master of one stream: merges producers into one gapless, replicated order.

Inputs: producer batches on a ROUTER socket (mq.producer), replies of the replicators.
Outputs: APPEND frames to every replicator, committed frames on a PUB socket (topic =
stream name + NUL), ACK / REFUSE / WELCOME / ERROR to producers.

Two layers: ``SequencerCore`` takes every decision without a socket (dedup, stamping, time,
Ticks, source ownership, backpressure; and, from mq.master.Master, claim, adoption,
reconciliation, resends and the commit point), so that the model test drives it over a
simulated network; ``Sequencer`` is the shell that owns the sockets and the loop.

Invariants:
* seq is gapless from 1 and never reused: a starting master resumes after the highest seq
  any reachable replicator holds, with an epoch above every epoch they have seen.
* A producer record is sequenced at most once: each source's next expected source_seq is
  part of the log's metadata (persisted by the replicators with each frame), so it
  survives restarts. A batch below it is a duplicate (acked again, with its seqs when the
  master still knows them); one above it is refused with the expected number.
* Nothing reaches the PUB socket or a producer ACK before the ack policy holds for it:
  "first" (one replicator), "quorum" (a majority) or "all". Frames go out in seq order.
* The uncommitted bytes stay below max_uncommitted_bytes: beyond it new batches are refused
  (REFUSE with busy), so a replicator outage never makes the window evict an uncommitted frame.
* ts_ns never goes backwards, never moves by more than max_step_ns from one record to the
  next, and keeps moving when the wall clock steps back (SequencedClock).
* No fixed batching delay: each turn of the loop sequences everything that is waiting into
  one frame, so a lone record leaves at once and records batch by themselves under load.
* When nothing was sequenced for tick_ms, a Tick record carries the time to the engines.
"""
from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import zmq

from mq import auth, wire
from mq.master import (  # noqa: F401  (re-exported: mq.mirror and mq.replica import them)
    MAX_DRAIN,
    MAX_FRAME_BYTES,
    MAX_INFLIGHT,
    POLICIES,
    RECENT_RUNS,
    RESEND_AFTER_S,
    ZERO_COPY_MIN,
    EpochExhausted,
    Link,
    Master,
    MasterShell,
    SequencerStale,
    Window,
)
from mq.record import (
    FrameError,
    kinds_bitmap,
    rebase,
    scan_producer,
    source_runs,
    stamp,
    tick,
)
from mq.subscriber import Subscriber

log = logging.getLogger("seqex.sequencer")

MAX_STEP_NS = 1_000_000_000  # sequenced time moves by at most this from one record to the next
EX_CONFIG = 78               # exit status of a master that must not be restarted as it is


class SequencedClock:
    """The time a sequencer stamps: the wall clock, made monotonic and rate-bounded.

    Each reading is the wall clock clamped into [lo, hi] with
      lo = last + max(1 ns, min(elapsed, max_step) / 2)   time keeps moving, at half speed
                                                          at least, when the wall clock
                                                          steps back (until it catches up);
      hi = last + min(max_step, max(1 ns, 2 * elapsed))   one record never moves time by more
                                                          than max_step, and time never runs
                                                          faster than twice the monotonic
                                                          clock, however far the wall clock
                                                          jumps (or however long the stream
                                                          was down): the engines see time
                                                          catch up at most at double speed, so
                                                          a brief forward step of the wall
                                                          clock leaves time at most as far
                                                          ahead as the step lasted, and no
                                                          record crosses two timer intervals
                                                          longer than max_step;
    where elapsed is the monotonic time since the previous reading. The first reading of an
    empty stream is the wall clock. ``wall`` and ``mono`` are injectable (ns)."""

    def __init__(self, max_step_ns: int = MAX_STEP_NS,
                 wall: Callable[[], int] = time.time_ns,
                 mono: Callable[[], int] = time.monotonic_ns):
        if max_step_ns < 2:
            raise ValueError("max_step_ns must be at least 2 ns")
        self.max_step_ns = max_step_ns
        self.wall = wall
        self.mono = mono
        self.last_ns = 0
        self.mono_at: int | None = None

    def resume(self, last_ns: int) -> None:
        """Continue after a log whose last record is stamped last_ns (a new master)."""
        self.last_ns = max(self.last_ns, last_ns)
        self.mono_at = None

    def now(self) -> int:
        wall, mono = self.wall(), self.mono()
        if self.last_ns == 0:
            self.last_ns, self.mono_at = max(1, wall), mono
            return self.last_ns
        elapsed = 0 if self.mono_at is None else max(0, mono - self.mono_at)
        self.mono_at = mono
        lo = self.last_ns + max(1, min(elapsed, self.max_step_ns) // 2)
        hi = self.last_ns + min(self.max_step_ns, max(1, 2 * elapsed))
        self.last_ns = min(max(wall, lo), hi)
        return self.last_ns

    def lag_ns(self) -> int:
        """How far sequenced time is behind the wall clock (0 when ahead, or nothing yet)."""
        return max(0, self.wall() - self.last_ns) if self.last_ns else 0


@dataclass
class Upstream:
    """Another stream taken as a source: its records whose kind and route pass the filters,
    each with source_seq = its seq in that stream, so that the position there is this stream's
    dedup state (persisted by the replicators with every frame) and survives restarts."""
    stream: str
    source: int
    pub: str
    replicators: list[str]
    kinds: list[int]
    route: int = 0        # route mask: take a record only if route & mask != 0 (0: every route)
    sub: Any = None       # the Subscriber, once the master knows where to start
    bitmap: bytes = b""   # kinds as rebase() takes them

    @classmethod
    def parse(cls, spec: str) -> Upstream:
        """'stream=out.te.0,source=1001,pub=tcp://h:p,replicators=tcp://a|tcp://b,kinds=32|33,
        route=0x3' (kinds and route optional; route in hex or decimal)."""
        try:
            fields = dict(part.split("=", 1) for part in spec.split(","))
            up = cls(fields["stream"], int(fields["source"]), fields["pub"],
                     fields["replicators"].split("|"),
                     [int(k) for k in fields.get("kinds", "").split("|") if k])
            if "route" in fields:
                up.route = int(fields["route"], 0)
                if not 0 < up.route < 1 << 64:
                    raise ValueError("route must be a mask in 1 .. 2**64-1 (omit it to take "
                                     "every route)")
        except (KeyError, ValueError) as exc:
            raise ValueError(f"bad upstream spec {spec!r}: {exc}") from None
        if not 0 < up.source < 1 << 32:
            raise ValueError(f"bad upstream spec {spec!r}: source must be in 1 .. 2**32-1")
        return up


class SequencerCore(Master):
    """The sequencer's decisions, without sockets (the shell below adds them).

    Besides the three hooks of Master, the shell implements ``_peer_alive(ident)``: whether a
    producer connection is still up (for source ownership)."""

    def __init__(self, stream: str, replicators: list[str], policy: str = "first",
                 tick_ms: int = 100, window_bytes: int = 256 << 20,
                 max_uncommitted_bytes: int | None = None, startup_grace_s: float = 2.0,
                 clock: SequencedClock | None = None,
                 mono: Callable[[], float] = time.monotonic):
        super().__init__(stream, replicators, policy, window_bytes, max_uncommitted_bytes,
                         startup_grace_s, mono)
        self.tick_ns = tick_ms * 1_000_000
        self.clock = clock or SequencedClock()
        self.upstream_sources: set[int] = set()
        self.owners: dict[int, bytes] = {}   # per source: the producer connection using it
        self._turn_ts = 0                    # ts of the records of the current turn
        self.current_peer: str | None = None  # authenticated key of the message in hand

    def _peer_alive(self, ident: bytes) -> bool:
        raise NotImplementedError

    def _adopt(self, r) -> None:
        super()._adopt(r)
        self.clock.resume(self.ts_ns)

    def _now(self) -> int:
        self.ts_ns = self.clock.now()
        return self.ts_ns

    def tick_interval_ns(self) -> int:
        """Idle Ticks every tick_ms; ten times as often while sequenced time catches up with
        the wall clock (after a jump or an outage), each moving it by at most max_step."""
        if self.clock.lag_ns() > self.clock.max_step_ns:
            return max(1_000_000, self.tick_ns // 10)
        return self.tick_ns

    def busy(self, unframed: int = 0) -> bool:
        """Backpressure: the uncommitted bytes (with `unframed` bytes sequenced in this turn
        and not yet framed) reached their bound; new input waits."""
        return self.pending_bytes + unframed >= self.max_uncommitted_bytes

    # -- producers ------------------------------------------------------------------------
    def sequence_turn(self, messages: Iterable[tuple[bytes, bytes, list[bytes]]]) -> None:
        """One turn of the loop: every DATA batch waiting goes into one frame (cut at
        MAX_FRAME_BYTES), control messages are answered. Re-acks of duplicates and refusals
        are coalesced: one reply per producer and source per turn, however many batches it
        resent."""
        parts: list[bytes] = []
        acks: list[tuple] = []
        coalesced: dict[tuple[bytes, int], tuple[bytes, dict]] = {}
        size = 0
        first = self.next_seq
        self._turn_ts = 0  # read from the clock when the turn stamps its first record
        for ident, kind, msg in messages:
            try:
                if kind == wire.DATA and len(msg) == 4:
                    piece = self._sequence_batch(ident, msg[3], acks, coalesced, size)
                    if piece:
                        parts.append(piece)
                        size += len(piece)
                        if size >= MAX_FRAME_BYTES:
                            self._commit_frame(first, parts, acks)
                            parts, acks, size, first = [], [], 0, self.next_seq
                else:
                    self._control(ident, kind, wire.unpack(msg[2]))
            except (FrameError, wire.WireError) as exc:
                self.stats["bad_batches"] += 1
                self._reply(ident, wire.ERROR, {"error": str(exc)})
        if parts:
            self._commit_frame(first, parts, acks)
        for (ident, _src), (kind, body) in coalesced.items():
            self._reply(ident, kind, body)

    def _turn_time(self) -> int:
        """The time of this turn's records: read once a turn, and only if it stamps a record,
        so that every reading of the clock is a record's time (the step bound holds between
        records)."""
        if not self._turn_ts:
            self._turn_ts = self._now()
        return self._turn_ts

    def _sequence_batch(self, ident: bytes, batch: bytes, acks: list, coalesced: dict,
                        unframed: int = 0) -> bytes:
        src, ss_first, count = scan_producer(batch)
        if not self._may_use(ident, src):
            return b""
        ss_last = ss_first + count - 1
        expected = self.next_ss.get(src, 1)
        if ss_last < expected:
            # A duplicate: dropped, and acknowledged again (once per turn) with what is
            # committed; the rest is acked when its frame commits.
            self.stats["duplicates"] += count
            durable = self.durable_ss.get(src, 1)
            key = (ident, src)
            prior = coalesced.get(key)
            runs = prior[1]["runs"] if prior and prior[0] == wire.ACK else []
            runs.extend(self.recent[src].known(ss_first, min(ss_last, durable - 1)))
            coalesced[key] = (wire.ACK, {"src": src, "next": durable, "runs": runs})
            return b""
        if ss_first > expected or self.busy(unframed):
            # A gap (resend from `next`), or backpressure: nothing of it is sequenced, and
            # the producer keeps it until the stream has room again.
            busy = ss_first <= expected
            self.stats["busy" if busy else "refused"] += 1
            body = {"src": src, "next": expected}
            if busy:
                body["busy"] = True
            coalesced[(ident, src)] = (wire.REFUSE, body)
            return b""
        skip = expected - ss_first
        seq_first = self.next_seq
        piece = stamp(batch, skip, seq_first, self._turn_time(), self.epoch)
        self.next_seq += count - skip
        self.next_ss[src] = ss_last + 1
        self.recent[src].append(expected, ss_last, seq_first)
        runs = self.recent[src].known(ss_first, expected - 1) if skip else []
        runs.append([expected, ss_last, seq_first])
        acks.append((ident, src, ss_last + 1, runs))
        self.stats["sequenced"] += count - skip
        self.stats["duplicates"] += skip
        return piece

    def _may_use(self, ident: bytes, src: int) -> bool:
        """A source belongs to one producer connection at a time: another connection that
        claims it while the first is alive gets ERROR (reason source_clash) and nothing of
        its batches is sequenced; once the first is gone, the newcomer takes it over."""
        if self._refused(ident, auth.producer_refusal(self.current_peer, src), f"source {src}"):
            return False
        owner = self.owners.get(src)
        if owner == ident:
            return True
        if src in self.upstream_sources or (owner is not None and self._peer_alive(owner)):
            self.stats["clashes"] += 1
            held = "an upstream stream" if src in self.upstream_sources else \
                "another live producer connection"
            self._reply(ident, wire.ERROR, {
                "error": f"{self.stream}: source {src} is in use by {held}; two producers "
                         f"must never share a source id (check the topology)",
                "reason": "source_clash", "src": src})
            return False
        self.owners[src] = ident
        return True

    def _emit_tick(self, now_ns: int) -> None:
        ss = self.next_ss.get(0, 1)
        frame = tick(self.next_seq, self._now(), ss, self.epoch)
        self.next_ss[0] = ss + 1
        self.next_seq += 1
        self.stats["ticks"] += 1
        self._commit_frame(self.next_seq - 1, [frame], [])
        self.last_activity_ns = now_ns

    def tick_due(self, now_ns: int) -> bool:
        """An idle Tick is due; it waits while anything is uncommitted (the stream is then
        stalled, and Ticks would only pile up; the next committed record carries the time)."""
        return now_ns - self.last_activity_ns >= self.tick_interval_ns() and not self.pending

    # -- control ------------------------------------------------------------------------
    def _control(self, ident: bytes, kind: bytes, body: dict) -> None:
        if kind == wire.HELLO:
            src = wire.field(body, "src", int)
            if not 0 < src < 1 << 32:
                raise wire.WireError(f"source {src} outside 1 .. 2**32-1")
            if self._may_use(ident, src):
                durable = self.durable_ss.get(src, 1)
                welcome = {"src": src, "next": self.next_ss.get(src, 1), "durable": durable,
                           "epoch": self.epoch}
                unacked = body.get("from")
                if isinstance(unacked, int) and not isinstance(unacked, bool) and unacked > 0:
                    # The producer's first unacknowledged number: WELCOME names the seqs of
                    # what it acknowledges (as far as they are remembered), so that a client
                    # learns the seq of every record even across a failover.
                    recent = self.recent.get(src)   # never create one for a mere HELLO
                    welcome["runs"] = recent.known(unacked, durable - 1) if recent else []
                self._reply(ident, wire.WELCOME, welcome)
        elif kind == wire.PING:
            self._reply(ident, wire.PONG, self.status())
        elif kind == wire.STOP:
            if self._refused(ident, auth.operator_refusal(self.current_peer), "STOP"):
                return
            self.stop()
            self._reply(ident, wire.PONG, {"role": "sequencer", "stopping": True})
        else:
            raise wire.WireError(f"unknown message kind {kind[:32]!r}")

    def _refused(self, ident: bytes, reason: str | None, what: str) -> bool:
        """True (after an ERROR to the sender, counted and logged by mq.auth) when the
        sender's role does not allow the message; nothing of it is sequenced."""
        if reason is None:
            return False
        self.stats["unauthorized"] = self.stats.get("unauthorized", 0) + 1
        auth.note_refusal(self.current_peer, reason, f"{self.stream}: {what}")
        self._reply(ident, wire.ERROR, auth.refused_body(reason, f"{self.stream}: {what}"))
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        return {"role": "sequencer", "stream": self.stream, "epoch": self.epoch,
                "last": self.next_seq - 1, "committed": self.committed, "ts_ns": self.ts_ns,
                "uncommitted_bytes": self.pending_bytes,
                "max_uncommitted_bytes": self.max_uncommitted_bytes,
                "evicted_uncommitted": self.window.evicted_uncommitted,
                "replicators": [{"addr": lk.addr, "acked": lk.acked, "known": lk.known}
                                for lk in self.links],
                "refusals": auth.refusal_stats(), **self.stats}


class Sequencer(MasterShell, SequencerCore):
    """The sequencer process: the shell of mq.master around SequencerCore, and upstreams."""

    def __init__(self, stream: str, producer_bind: str, pub_bind: str, replicators: list[str],
                 policy: str = "first", tick_ms: int = 100, window_bytes: int = 256 << 20,
                 startup_grace_s: float = 2.0, upstreams: list[Upstream] | None = None,
                 max_uncommitted_bytes: int | None = None, max_step_ms: int = 1000):
        super().__init__(stream, replicators, policy, tick_ms, window_bytes,
                         max_uncommitted_bytes, startup_grace_s,
                         clock=SequencedClock(max_step_ms * 1_000_000))
        self._open_sockets(producer_bind, pub_bind)
        self.upstreams = upstreams or []
        self.taken: dict[int, int] = {}  # per upstream source: records taken by this master
        for up in self.upstreams:
            up.bitmap = kinds_bitmap(up.kinds)
            self.upstream_sources.add(up.source)

    # -- upstream streams ---------------------------------------------------------------
    def _open_sources(self) -> None:
        self._open_upstreams()

    def _take_sources(self) -> None:
        if self.upstreams:
            self._take_upstreams()

    def _open_upstreams(self) -> None:
        for up in self.upstreams:
            start = self.next_ss.get(up.source, 1)
            up.sub = Subscriber(up.stream, up.pub, up.replicators, next_seq=start)
            self.poller.register(up.sub.sub, zmq.POLLIN)
            for sock in up.sub.replicas:
                self.poller.register(sock, zmq.POLLIN)
            log.info("%s: takes %s from seq %d as source %d (kinds %s, route %s)", self.stream,
                     up.stream, start, up.source, up.kinds or "all",
                     f"{up.route:#x}" if up.route else "any")

    def _take_upstreams(self) -> None:
        parts: list[bytes] = []
        first = self.next_seq
        self._turn_ts = 0
        for up in self.upstreams:
            for _f, _last, frame in up.sub.poll(0):
                batch = rebase(frame, up.source, up.bitmap, up.route)
                if batch:
                    # source_seqs increase but may skip (records the filter left out)
                    runs = source_runs(batch)
                    count = sum(b - a + 1 for _s, a, b, _q in runs)
                    if runs[0][1] < self.next_ss.get(up.source, 1):
                        raise RuntimeError(f"{self.stream}: {up.stream} went back to {runs[0][1]}")
                    parts.append(stamp(batch, 0, self.next_seq, self._turn_time(), self.epoch))
                    self.next_seq += count
                    self.next_ss[up.source] = runs[-1][2] + 1
                    self.stats["sequenced"] += count
                    self.taken[up.source] = self.taken.get(up.source, 0) + count
        if parts:
            self._commit_frame(first, parts, [])

    def status(self) -> dict[str, Any]:
        return {**super().status(),
                "upstreams": {up.stream: {"source": up.source,
                                          "next": self.next_ss.get(up.source, 1),
                                          "taken": self.taken.get(up.source, 0)}
                              for up in self.upstreams}}


def main(stream: str, producer_bind: str, pub_bind: str, replicators: list[str],
         policy: str = "first", tick_ms: int = 100, upstreams: list[str] | None = None,
         window_bytes: int = 256 << 20, max_uncommitted_bytes: int | None = None,
         max_step_ms: int = 1000) -> None:
    run(Sequencer(stream, producer_bind, pub_bind, replicators, policy, tick_ms,
                  window_bytes=window_bytes, max_uncommitted_bytes=max_uncommitted_bytes,
                  max_step_ms=max_step_ms,
                  upstreams=[Upstream.parse(u) for u in upstreams or []]), "sequencer")


def run(master: Sequencer, role: str) -> None:
    """Recover, serve until SIGTERM / SIGINT / STOP (a drain), close. A stream that no master
    can take over as it stands exits with EX_CONFIG and the operator's next step."""
    signal.signal(signal.SIGTERM, lambda *_: master.stop())
    signal.signal(signal.SIGINT, lambda *_: master.stop())
    try:
        master.recover()
    except EpochExhausted as exc:
        log.critical("%s", exc)
        print(f"{role} refused: {exc}", flush=True)
        master.close()
        raise SystemExit(EX_CONFIG) from None
    print(f"{role} ready {master.producer_endpoint} {master.pub_endpoint} epoch {master.epoch}",
          flush=True)
    try:
        master.serve()
    finally:
        master.close()
