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
* Dedup state is bounded (expiry). A source whose last record is older than the stream's
  sequenced time minus ``source_retention_ns`` (24 h) is forgotten once everything it sent is
  committed; ``source_floor`` then rises above every source_seq it used. At most
  ``max_sources`` sources are remembered: past that, a new source gets ERROR (reason
  too_many_sources) and nothing of it is sequenced. A source the master does not know starts
  at the floor (1 while nothing was ever forgotten): its HELLO is answered with next = floor,
  and a batch of it that does not start exactly there is neither sequenced nor acknowledged
  but refused with ERROR (reason source_expired): its records may or may not be in the log
  from before it was forgotten, so the master can neither drop them as duplicates (they could
  be lost) nor sequence them (they could be twice in the log). A starting master learns the
  same from the replicators' STATE, a function of the log alone (sequenced time, never the
  clock), so the table and STATE stay small whatever the number of sources ever seen.
"""
from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import zmq

from mq import auth, sockets, wire
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
    RecoveryStopped,
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
SOURCE_RETENTION_NS = 24 * 3600 * 10**9   # a source idle this long in sequenced time is forgotten
MAX_SOURCES = 20_000         # sources remembered at once (replicator.store.STATE_MAX_SOURCES)
EXPIRE_EVERY_S = 1.0         # how often the master looks for sources to forget
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
        form = "stream=S,source=N,pub=ADDR,replicators=ADDR|ADDR[,kinds=K|K][,route=MASK]"
        parts = spec.split(",")
        odd = next((p for p in parts if "=" not in p), None)
        if odd is not None:
            raise ValueError(f"bad upstream spec {spec!r}: {odd!r} is not KEY=VALUE ({form})")
        fields = dict(part.split("=", 1) for part in parts)
        missing = [k for k in ("stream", "source", "pub", "replicators") if k not in fields]
        if missing:
            raise ValueError(f"bad upstream spec {spec!r}: no {', '.join(missing)} ({form})")
        try:
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
                 mono: Callable[[], float] = time.monotonic,
                 source_retention_ns: int = SOURCE_RETENTION_NS, max_sources: int = MAX_SOURCES):
        super().__init__(stream, replicators, policy, window_bytes, max_uncommitted_bytes,
                         startup_grace_s, mono)
        if source_retention_ns < 1 or not 1 <= max_sources <= MAX_SOURCES:
            raise ValueError(f"source retention must be positive and max_sources in "
                             f"1 .. {MAX_SOURCES}")
        self.tick_ns = tick_ms * 1_000_000
        self.clock = clock or SequencedClock()
        self.upstream_sources: set[int] = set()
        self.owners: dict[int, bytes] = {}   # per source: the producer connection using it
        self.source_retention_ns = source_retention_ns
        self.max_sources = max_sources
        self.last_ts: dict[int, int] = {}    # per source: ts_ns of its last record
        self.source_floor = 1                # a source not in next_ss starts here
        self.expire_at = 0.0                 # monotonic time of the next look for idle sources
        self._turn_ts = 0                    # ts of the records of the current turn
        self.current_peer: str | None = None  # authenticated key of the message in hand

    def _peer_alive(self, ident: bytes) -> bool:
        raise NotImplementedError

    def _adopt(self, r) -> None:
        super()._adopt(r)
        self.clock.resume(self.ts_ns)
        best = r.answers[self.recovery.tail_link]
        self.last_ts = {x[0]: (x[3] if len(x) > 3 else self.ts_ns) for x in best["sources"]}
        floor = best.get("source_floor", 1)
        self.source_floor = floor if isinstance(floor, int) and floor >= 1 else 1

    def _state_request(self) -> dict:
        """The replicators name only the sources this master keeps (mq/sequencer.py, expiry)."""
        return {"stream": self.stream, "retention_ns": self.source_retention_ns,
                "max_sources": self.max_sources, "keep": sorted(self.upstream_sources)}

    def expire_sources(self) -> int:
        """Forget every source idle for longer than the retention in sequenced time, once all
        it sent is committed (at most once every EXPIRE_EVERY_S). Returns how many."""
        now = self.mono()
        if now < self.expire_at or self.durable_after_first_commit is not None:
            return 0
        self.expire_at = now + EXPIRE_EVERY_S
        horizon = self.ts_ns - self.source_retention_ns
        idle = [src for src, ts in self.last_ts.items()
                if ts < horizon and src != 0 and src not in self.upstream_sources
                and self.durable_ss.get(src, 1) >= self.next_ss.get(src, 1)]
        for src in idle:
            self.source_floor = max(self.source_floor, self.next_ss.pop(src, 1))
            for table in (self.durable_ss, self.recent, self.owners, self.last_ts):
                table.pop(src, None)
        if len(self.owners) > 2 * self.max_sources:
            # connections that said HELLO and never sent a record: ownership is taken again
            # by the next message
            for src in [s for s in self.owners if s not in self.next_ss]:
                del self.owners[src]
        self.stats["expired_sources"] = self.stats.get("expired_sources", 0) + len(idle)
        if idle:
            log.info("%s: forgot %d sources idle for more than %d s of sequenced time; a "
                     "source not known starts at source_seq %d", self.stream, len(idle),
                     self.source_retention_ns // 10**9, self.source_floor)
        return len(idle)

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
        self.expire_sources()
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
        expected = self.next_ss.get(src)
        if expected is None:
            expected = self.source_floor
            if self._unknown_refused(ident, src, ss_first, ss_last):
                return b""
        if ss_last < expected:
            # A duplicate: dropped, and acknowledged again (once per turn) with what is
            # committed; the rest is acked when its frame commits.
            self.stats["duplicates"] += count
            durable = self.durable_ss.get(src, 1)
            key = (ident, src)
            prior = coalesced.get(key)
            body = prior[1] if prior and prior[0] == wire.ACK else {"runs": [], "dups": []}
            body.update(src=src, next=durable)
            hi = min(ss_last, durable - 1)
            body["runs"].extend(self.recent[src].known(ss_first, hi))
            if ss_first <= hi:
                # what this answer covers: a source_seq in dups but in no run is one whose
                # seq this master does not know (the producer reports it as None at once)
                body["dups"].append([ss_first, hi])
            coalesced[key] = (wire.ACK, body)
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
        self.last_ts[src] = self._turn_ts
        self.recent[src].append(expected, ss_last, seq_first)
        runs = self.recent[src].known(ss_first, expected - 1) if skip else []
        runs.append([expected, ss_last, seq_first])
        acks.append((ident, src, ss_last + 1, runs, [ss_first, expected - 1] if skip else None))
        self.stats["sequenced"] += count - skip
        self.stats["duplicates"] += skip
        return piece

    def _unknown_refused(self, ident: bytes, src: int, ss_first: int, ss_last: int) -> bool:
        """A batch of a source this master does not know: refused with ERROR (True) when
        sources were forgotten and the batch does not start at the floor (it may be a resend
        of records from before: see the module docstring), or when the table is full."""
        if self.source_floor > 1 and ss_first != self.source_floor:
            self.owners.pop(src, None)
            self.stats["expired_refused"] = self.stats.get("expired_refused", 0) + 1
            self._reply(ident, wire.ERROR, {
                "error": f"{self.stream}: source {src} is not known (forgotten: idle for "
                         f"longer than {self.source_retention_ns // 10**9} s of sequenced time, "
                         f"or not among the {self.max_sources} most recent): source_seqs "
                         f"{ss_first}..{ss_last} were not sequenced now and may be in the log "
                         f"from before; look them up by source and source_seq (seqex replay) "
                         f"before sending them again, as new records from source_seq "
                         f"{self.source_floor} (HELLO says so)",
                "reason": "source_expired", "src": src, "next": self.source_floor})
            return True
        known = len(self.next_ss) - (0 in self.next_ss)
        if known >= self.max_sources:
            self.owners.pop(src, None)
            self.stats["too_many_sources"] = self.stats.get("too_many_sources", 0) + 1
            self._reply(ident, wire.ERROR, {
                "error": f"{self.stream}: source {src} refused: this stream already remembers "
                         f"{known} sources, its limit; nothing was sequenced. Sources idle for "
                         f"{self.source_retention_ns // 10**9} s of sequenced time are "
                         f"forgotten; use fewer source ids",
                "reason": "too_many_sources", "src": src})
            return True
        return False

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
        self.expire_sources()
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
        if self.pending:
            return False
        elapsed = now_ns - self.last_activity_ns
        # the shortest interval tick_interval_ns() may name: below it no Tick is due, and the
        # clock (a wall-clock reading in lag_ns) need not be asked, once a turn of the loop
        if elapsed < min(self.tick_ns, max(1_000_000, self.tick_ns // 10)):
            return False
        return elapsed >= self.tick_interval_ns()

    # -- control ------------------------------------------------------------------------
    def _control(self, ident: bytes, kind: bytes, body: dict) -> None:
        if kind == wire.HELLO:
            src = wire.field(body, "src", int)
            if not 0 < src < 1 << 32:
                raise wire.WireError(f"source {src} outside 1 .. 2**32-1")
            if self._may_use(ident, src):
                # A source not known (new, or forgotten) starts at the floor.
                durable = self.durable_ss.get(src, 1 if src in self.next_ss else
                                              self.source_floor)
                welcome = {"src": src, "next": self.next_ss.get(src, self.source_floor),
                           "durable": durable, "epoch": self.epoch}
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
                "replicators": [{"addr": lk.addr, "acked": lk.acked, "sent": lk.sent,
                                 "known": lk.known, "disk_full": lk.full}
                                for lk in self.links],
                "sources": len(self.next_ss), "source_floor": self.source_floor,
                "refusals": auth.refusal_stats(), **self.stats}


class Sequencer(MasterShell, SequencerCore):
    """The sequencer process: the shell of mq.master around SequencerCore, and upstreams."""

    def __init__(self, stream: str, producer_bind: str, pub_bind: str, replicators: list[str],
                 policy: str = "first", tick_ms: int = 100, window_bytes: int = 256 << 20,
                 startup_grace_s: float = 2.0, upstreams: list[Upstream] | None = None,
                 max_uncommitted_bytes: int | None = None, max_step_ms: int = 1000,
                 source_retention_ns: int = SOURCE_RETENTION_NS, max_sources: int = MAX_SOURCES):
        super().__init__(stream, replicators, policy, tick_ms, window_bytes,
                         max_uncommitted_bytes, startup_grace_s,
                         clock=SequencedClock(max_step_ms * 1_000_000),
                         source_retention_ns=source_retention_ns, max_sources=max_sources)
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
        events = self.events
        now = time.monotonic()
        for up in self.upstreams:
            if events is not None and not up.sub.due(events, now):
                continue
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
         max_step_ms: int = 1000, source_retention_s: int = SOURCE_RETENTION_NS // 10**9,
         max_sources: int = MAX_SOURCES, spin_us: int = 0) -> None:
    master = Sequencer(stream, producer_bind, pub_bind, replicators, policy, tick_ms,
                       window_bytes=window_bytes, max_uncommitted_bytes=max_uncommitted_bytes,
                       max_step_ms=max_step_ms, source_retention_ns=source_retention_s * 10**9,
                       max_sources=max_sources,
                       upstreams=[Upstream.parse(u) for u in upstreams or []])
    master.spin = sockets.Spin(spin_us)
    run(master, "sequencer")


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
    except RecoveryStopped as exc:
        log.warning("%s", exc)
        master.close()
        return
    print(f"{role} ready {master.producer_endpoint} {master.pub_endpoint} epoch {master.epoch}",
          flush=True)
    try:
        master.serve()
    finally:
        master.close()
