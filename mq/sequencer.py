"""The sequencer master of one stream: merges producers into one gapless, replicated order.

Inputs: producer batches on a ROUTER socket (mq.producer), replies of the replicators.
Outputs: APPEND frames to every replicator, committed frames on a PUB socket (topic =
stream name + NUL), ACK / REFUSE / WELCOME to producers.

Invariants:
* seq is gapless from 1 and never reused: a starting master resumes after the highest seq
  any reachable replicator holds, with an epoch above every epoch they have seen.
* A producer record is sequenced at most once: each source's next expected source_seq is
  part of the log's metadata (persisted by the replicators with each frame), so it
  survives restarts. A batch below it is a duplicate (acked again, with its seqs when the
  master still knows them); one above it is refused with the expected number.
* Nothing reaches the PUB socket or a producer ACK before the ack policy holds for it:
  "first" (one replicator), "quorum" (a majority) or "all". Frames go out in seq order.
* No fixed batching delay: each turn of the loop sequences everything that is waiting into
  one frame, so a lone record leaves at once and records batch by themselves under load.
* When nothing was sequenced for tick_ms, a Tick record carries the time to the engines.
"""
from __future__ import annotations

import bisect
import logging
import signal
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from mq import replication, sockets, wire
from mq.record import (
    FrameError,
    kinds_bitmap,
    rebase,
    scan,
    scan_producer,
    source_runs,
    stamp,
    tick,
    trim,
)
from mq.subscriber import Subscriber

log = logging.getLogger("seqex.sequencer")

POLICIES = ("first", "quorum", "all")
MAX_DRAIN = 1024             # producer messages taken per turn of the loop
MAX_FRAME_BYTES = 4 << 20    # a sequenced frame is cut at this size
MAX_INFLIGHT = 1 << 20       # records sent to one replicator and not yet acknowledged
RESEND_AFTER_S = 1.0         # unacknowledged for this long: go back and resend
RECENT_RUNS = 4096           # per source: (ss_first, ss_last, seq_first) kept for re-acks
ZERO_COPY_MIN = 64 << 10     # below this a copy is cheaper than pyzmq's zero-copy tracking


@dataclass
class Upstream:
    """Another stream taken as a source: its records whose kind passes the filter, each with
    source_seq = its seq in that stream, so that the position there is this stream's dedup
    state (persisted by the replicators with every frame) and survives restarts."""
    stream: str
    source: int
    pub: str
    replicators: list[str]
    kinds: list[int]
    sub: Any = None       # the Subscriber, once the master knows where to start
    bitmap: bytes = b""   # kinds as rebase() takes them

    @classmethod
    def parse(cls, spec: str) -> Upstream:
        """'stream=out.te.0,source=1001,pub=tcp://h:p,replicators=tcp://a|tcp://b,kinds=32|33'"""
        try:
            fields = dict(part.split("=", 1) for part in spec.split(","))
            up = cls(fields["stream"], int(fields["source"]), fields["pub"],
                     fields["replicators"].split("|"),
                     [int(k) for k in fields.get("kinds", "").split("|") if k])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"bad upstream spec {spec!r}: {exc}") from None
        if not 0 < up.source < 1 << 32:
            raise ValueError(f"bad upstream spec {spec!r}: source must be in 1 .. 2**32-1")
        return up


class SequencerStale(RuntimeError):
    """A replicator has seen a higher epoch: another master owns the stream."""


@dataclass
class Link:
    """The master's view of one replicator."""
    addr: str
    sock: zmq.Socket
    acked: int = 0            # highest contiguous seq it acknowledged
    sent: int = 0             # highest seq sent to it
    known: bool = False       # it answered STATE (or an APPEND) since the master started
    progress_at: float = field(default_factory=time.monotonic)
    commit_sent: int = 0      # the commit point it was last told


class Window:
    """Recent frames in seq order, for resending to replicators that fell behind."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.firsts: list[int] = []
        self.frames: list[tuple[int, int, bytes]] = []
        self.tags: list[str] = []  # who produced each frame (mirror streams)
        self.start = 0
        self.bytes = 0

    def add(self, first: int, last: int, frame: bytes, tag: str = "") -> None:
        self.firsts.append(first)
        self.frames.append((first, last, frame))
        self.tags.append(tag)
        self.bytes += len(frame)
        while self.bytes > self.max_bytes and self.start < len(self.frames) - 1:
            self.bytes -= len(self.frames[self.start][2])
            self.start += 1
        if self.start > 4096 and self.start * 2 > len(self.frames):
            del self.firsts[:self.start], self.frames[:self.start], self.tags[:self.start]
            self.start = 0

    def lowest(self) -> int:
        return self.frames[self.start][0] if self.start < len(self.frames) else 0

    def read(self, seq_from: int, seq_to: int) -> tuple[bytes, list[str]] | None:
        """Records seq_from..seq_to and the tags of the frames they came from; None if any of
        them left the window."""
        i = bisect.bisect_right(self.firsts, seq_from, lo=self.start) - 1
        if i < self.start:
            return None
        parts, tags = [], []
        while i < len(self.frames) and self.frames[i][0] <= seq_to:
            first, last, frame = self.frames[i]
            parts.append(trim(frame, first, max(seq_from, first), min(seq_to, last)))
            tags.append(self.tags[i])
            i += 1
        return b"".join(parts), tags

    def frame_from(self, seq: int) -> tuple[int, int, bytes] | None:
        """The records from seq to the end of the frame holding seq, or None if evicted."""
        i = bisect.bisect_right(self.firsts, seq, lo=self.start) - 1
        if i < self.start:
            return None
        first, last, frame = self.frames[i]
        if seq > last:
            return None
        return seq, last, trim(frame, first, seq)


class Sequencer:
    policies = POLICIES
    stamps_epochs = True   # every record carries this master's epoch (APPENDs name the previous)

    def __init__(self, stream: str, producer_bind: str, pub_bind: str, replicators: list[str],
                 policy: str = "first", tick_ms: int = 100, window_bytes: int = 256 << 20,
                 startup_grace_s: float = 2.0, upstreams: list[Upstream] | None = None):
        if policy not in self.policies:
            raise ValueError(f"ack policy must be one of {self.policies}, not {policy!r}")
        if not replicators and policy != "none":
            raise ValueError(f"ack policy {policy!r} needs at least one replicator")
        self.stream = stream
        self.topic = stream.encode() + b"\0"
        self.policy = policy
        self.tick_ns = tick_ms * 1_000_000
        self.startup_grace_s = startup_grace_s
        self.ctx = zmq.Context.instance()
        self.router = sockets.router(producer_bind)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(pub_bind)
        self.producer_endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.links: list[Link] = []
        for addr in replicators:
            self.links.append(Link(addr, sockets.dealer(addr, immediate=True, sndhwm=10_000)))
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        for link in self.links:
            self.poller.register(link.sock, zmq.POLLIN)
        self.window = Window(window_bytes)
        self.upstreams = upstreams or []
        self.taken: dict[int, int] = {}  # per upstream source: records taken by this master
        for up in self.upstreams:
            up.bitmap = kinds_bitmap(up.kinds)
        self.epoch = 0
        self.next_seq = 1
        self.first_own_seq = 1       # acks count towards commit from this seq on
        self.committed = 0
        self.history: list[tuple[int, int]] = []  # [(epoch, first seq)] of this master's log
        self.durable_after_first_commit: dict[int, int] | None = None
        self.probe_at = 0.0
        self.commit_note_at = 0.0
        self.ts_ns = 0
        self.next_ss: dict[int, int] = {}     # per source: next source_seq to sequence
        self.durable_ss: dict[int, int] = {}  # per source: next source_seq not yet committed
        self.recent: dict[int, deque[tuple[int, int, int]]] = defaultdict(
            lambda: deque(maxlen=RECENT_RUNS))
        # frames sequenced but not yet forwarded: (first, last, frame, producer acks)
        self.pending: deque[tuple[int, int, bytes, list[tuple]]] = deque()
        self.last_activity_ns = 0
        self.running = True
        self.drain_until = 0.0      # set by stop(): draining until this monotonic time
        self.stats = {"sequenced": 0, "frames": 0, "duplicates": 0, "refused": 0,
                      "ticks": 0, "bad_batches": 0}

    # -- start-up -----------------------------------------------------------------------
    def recover(self, deadline_s: float = 60.0) -> None:
        """Take over the stream: learn the replicators' states, claim an epoch above every
        epoch they have seen (which fences any older master), adopt the best log, truncate
        the divergent uncommitted tails of the others, and resume after the best log's end."""
        need = replication.needed(self.policy, len(self.links))
        deadline = time.monotonic() + deadline_s
        while True:
            states = self._gather(wire.STATE, lambda: {"stream": self.stream}, need, deadline)
            epoch = max(st["epoch"] for st in states.values()) + 1
            claimed = self._gather(wire.CLAIM, lambda e=epoch: {"stream": self.stream, "epoch": e},
                                   need, deadline, min_epoch=epoch)
            if all(st["ok"] for st in claimed.values()):
                break
            log.warning("%s: epoch %d was overtaken by another master; trying again",
                        self.stream, epoch)
        self.epoch = epoch
        order = sorted(claimed)
        best_i = order[replication.best_log([claimed[i] for i in order])]
        best = claimed[best_i]
        last = best["last"]
        self.history = [tuple(h) for h in best["history"]] + [(epoch, last + 1)]
        self.next_seq = self.first_own_seq = last + 1
        self.committed = max(st["commit"] for st in claimed.values())
        self.ts_ns = best["ts"]
        # The best log's source table describes exactly the adopted log. It counts as
        # durable (WELCOME.durable) only once this epoch's first record commits.
        self.next_ss = {src: nxt for src, nxt, _seq in best["sources"]}
        self.durable_after_first_commit = dict(self.next_ss)
        lowest = last
        for i in order:
            lowest = min(lowest, self._reconcile(self.links[i], claimed[i]))
        self._load_tail(self.links[best_i],
                        max(1, min(lowest + 1, last - 10_000 + 1)), last)
        log.info("%s: epoch %d resumes after seq %d (commit %d; %d of %d replicators, lowest "
                 "agreeing at %d)", self.stream, self.epoch, last, self.committed,
                 len(claimed), len(self.links), lowest)

    def _gather(self, kind: bytes, body: Any, need: int, deadline: float,
                min_epoch: int = 0) -> dict[int, dict]:
        """Ask every replicator; return the answers of all of them, or of at least `need`
        once the start-up grace has passed."""
        answers: dict[int, dict] = {}
        started = time.monotonic()
        ask_at = 0.0
        while len(answers) < len(self.links):
            now = time.monotonic()
            if len(answers) >= need and now - started >= self.startup_grace_s:
                break
            if now > deadline:
                raise TimeoutError(f"{self.stream}: {len(answers)} of {need} replicators answered")
            if now >= ask_at:
                # Sends fail until a connection is up (IMMEDIATE): ask often, it is cheap.
                for i, link in enumerate(self.links):
                    if i not in answers:
                        self._try_send(link, [kind, wire.pack(body())])
                ask_at = now + 0.02
            for sock, _ in self.poller.poll(20):
                for i, link in enumerate(self.links):
                    if sock is link.sock:
                        msg = sock.recv_multipart()
                        if msg[0] != wire.STATE:
                            continue
                        st = wire.unpack(msg[1])
                        # a late answer to an earlier question does not count
                        if st.get("stream") == self.stream and (
                                st["epoch"] >= min_epoch or not st["ok"]):
                            answers[i] = st
        return answers

    def _reconcile(self, link: Link, st: dict) -> int:
        """Bring a replicator's view in line with this master's log: the seq up to which it
        agrees; a divergent tail beyond it (never committed) is truncated. Returns that seq."""
        top = self.next_seq - 1
        agreed = min(replication.common_prefix(st["history"], st["last"], self.history, top),
                     st["last"])
        if agreed < st["last"]:
            log.warning("%s: %s holds a divergent tail %d..%d; truncating it", self.stream,
                        link.addr, agreed + 1, st["last"])
            self._try_send(link, [wire.TRUNCATE, wire.pack(
                {"stream": self.stream, "epoch": self.epoch, "after": agreed})])
        link.acked = link.sent = agreed
        link.known = True
        link.progress_at = time.monotonic()
        return agreed

    def _load_tail(self, link: Link, seq_from: int, seq_to: int) -> None:
        """Seed the resend window (and the re-ack memory) from the most advanced replicator."""
        seq = seq_from
        while seq <= seq_to:
            link.sock.send_multipart([wire.REPLAY, wire.pack(
                {"stream": self.stream, "from": seq, "to": seq_to, "max_bytes": 4 << 20,
                 "uncommitted": True})])
            if not link.sock.poll(10_000):
                raise TimeoutError(f"{self.stream}: replay of the tail from {link.addr} timed out")
            msg = link.sock.recv_multipart()
            if msg[0] != wire.RECORDS or not msg[2]:
                raise RuntimeError(f"{self.stream}: {link.addr} could not replay from {seq}")
            _n, first, last = scan(msg[2])
            if first != seq:
                raise RuntimeError(f"{self.stream}: replay from {seq} began at {first}")
            self.window.add(first, last, msg[2])
            for src, ss_first, ss_last, seq_first in source_runs(msg[2]):
                self.recent[src].append((ss_first, ss_last, seq_first))
            seq = last + 1

    # -- the loop -----------------------------------------------------------------------
    def serve(self) -> None:
        log.info("%s: producers on %s, subscribers on %s, policy %s", self.stream,
                 self.producer_endpoint, self.pub_endpoint, self.policy)
        # A first record of this epoch at once: when it commits, so does the adopted tail.
        self._emit_tick(time.time_ns())
        self._open_upstreams()
        while self.running:
            wait_ms = max(0, (self.last_activity_ns + self.tick_ns - time.time_ns()) // 1_000_000)
            events = dict(self.poller.poll(min(wait_ms, 100)))
            if self.router in events:
                if self.drain_until:
                    self._answer_control_only()
                else:
                    self._sequence_waiting()
            if self.upstreams and not self.drain_until:
                self._take_upstreams()
            for link in self.links:
                if link.sock in events:
                    self._on_replies(link)
            now_ns = time.time_ns()
            if now_ns - self.last_activity_ns >= self.tick_ns and not self.drain_until:
                self._emit_tick(now_ns)
            self._pump_all()
            self._forward()
            if self.drain_until and (self._all_replicated() or time.monotonic() > self.drain_until):
                self.running = False

    def stop(self, timeout_s: float = 5.0) -> None:
        """Take no new input, wait (bounded) until every replicator holds everything, exit."""
        self.drain_until = time.monotonic() + timeout_s

    def _all_replicated(self) -> bool:
        """Every known replicator holds everything and has been told it is committed."""
        top = self.next_seq - 1
        return not self.pending and self.committed >= top and all(
            lk.acked >= top and lk.commit_sent >= top for lk in self.links if lk.known)

    def _answer_control_only(self) -> None:
        """While draining, producers get no new seqs; they resend to the next master."""
        for ident, kind, msg in self._waiting():
            if kind in (wire.PING, wire.STOP):
                self._control(ident, kind, wire.unpack(msg[2]))

    def _waiting(self) -> Any:
        """Up to MAX_DRAIN messages waiting on the producer socket, as (ident, kind, parts);
        messages too short to carry a kind are dropped."""
        for _ in range(MAX_DRAIN):
            try:
                msg = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(msg) >= 3:
                yield msg[0], msg[1], msg

    def _now(self) -> int:
        """Sequencer time: wall clock, never below the last stamped time."""
        self.ts_ns = max(self.ts_ns, time.time_ns())
        return self.ts_ns

    def _sequence_waiting(self) -> None:
        parts: list[bytes] = []
        acks: list[tuple] = []
        size = 0
        first = self.next_seq
        ts_ns = self._now()
        for ident, kind, msg in self._waiting():
            try:
                if kind == wire.DATA and len(msg) == 4:
                    piece = self._sequence_batch(ident, msg[3], ts_ns, acks)
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

    def _sequence_batch(self, ident: bytes, batch: bytes, ts_ns: int, acks: list) -> bytes:
        src, ss_first, count = scan_producer(batch)
        ss_last = ss_first + count - 1
        expected = self.next_ss.get(src, 1)
        if ss_first > expected:
            self.stats["refused"] += 1
            self._reply(ident, wire.REFUSE, {"src": src, "next": expected})
            return b""
        if ss_last < expected:
            # A duplicate. Only what is committed may be acknowledged; the rest is acked
            # when its frame commits.
            self.stats["duplicates"] += count
            durable = self.durable_ss.get(src, 1)
            self._reply(ident, wire.ACK, {"src": src, "next": durable, "runs": self._known_runs(
                src, ss_first, min(ss_last, durable - 1))})
            return b""
        skip = expected - ss_first
        seq_first = self.next_seq
        piece = stamp(batch, skip, seq_first, ts_ns, self.epoch)
        self.next_seq += count - skip
        self.next_ss[src] = ss_last + 1
        self.recent[src].append((expected, ss_last, seq_first))
        runs = self._known_runs(src, ss_first, expected - 1) if skip else []
        runs.append([expected, ss_last, seq_first])
        acks.append((ident, src, ss_last + 1, runs))
        self.stats["sequenced"] += count - skip
        self.stats["duplicates"] += skip
        return piece

    def _open_upstreams(self) -> None:
        for up in self.upstreams:
            start = self.next_ss.get(up.source, 1)
            up.sub = Subscriber(up.stream, up.pub, up.replicators, next_seq=start)
            self.poller.register(up.sub.sub, zmq.POLLIN)
            for sock in up.sub.replicas:
                self.poller.register(sock, zmq.POLLIN)
            log.info("%s: takes %s from seq %d as source %d (kinds %s)", self.stream,
                     up.stream, start, up.source, up.kinds or "all")

    def _take_upstreams(self) -> None:
        parts: list[bytes] = []
        first = self.next_seq
        ts_ns = self._now()
        for up in self.upstreams:
            for _f, _last, frame in up.sub.poll(0):
                batch = rebase(frame, up.source, up.bitmap)
                if batch:
                    # source_seqs increase but may skip (records the filter left out)
                    runs = source_runs(batch)
                    count = sum(b - a + 1 for _s, a, b, _q in runs)
                    if runs[0][1] < self.next_ss.get(up.source, 1):
                        raise RuntimeError(f"{self.stream}: {up.stream} went back to {runs[0][1]}")
                    parts.append(stamp(batch, 0, self.next_seq, ts_ns, self.epoch))
                    self.next_seq += count
                    self.next_ss[up.source] = runs[-1][2] + 1
                    self.stats["sequenced"] += count
                    self.taken[up.source] = self.taken.get(up.source, 0) + count
        if parts:
            self._commit_frame(first, parts, [])

    def _known_runs(self, src: int, lo: int, hi: int) -> list[list]:
        """[[ss_first, ss_last, seq_first]] for the part of lo..hi still remembered."""
        out = []
        for ss_first, ss_last, seq_first in self.recent.get(src, ()):
            a, b = max(lo, ss_first), min(hi, ss_last)
            if a <= b:
                out.append([a, b, seq_first + (a - ss_first)])
        return out

    def _commit_frame(self, first: int, parts: list[bytes], acks: list, tag: str = "") -> None:
        """Frame first..next_seq-1 from parts: keep it for resends, replicate it, and queue
        it to be forwarded (and its producers acked) once committed."""
        frame = parts[0] if len(parts) == 1 else b"".join(parts)
        last = self.next_seq - 1
        self.window.add(first, last, frame, tag)
        self.pending.append((first, last, frame, acks))
        self.stats["frames"] += 1
        self.last_activity_ns = time.time_ns()
        self._pump_all()

    def _emit_tick(self, now_ns: int) -> None:
        ss = self.next_ss.get(0, 1)
        frame = tick(self.next_seq, self._now(), ss, self.epoch)
        self.next_ss[0] = ss + 1
        self.next_seq += 1
        self.stats["ticks"] += 1
        self._commit_frame(self.next_seq - 1, [frame], [])
        self.last_activity_ns = now_ns

    # -- replication --------------------------------------------------------------------
    def _pump_all(self) -> None:
        now = time.monotonic()
        if now >= self.probe_at:
            # A replicator that was down, or fell behind the window, is claimed again and
            # reconciled when it answers.
            self.probe_at = now + 0.5
            for link in self.links:
                if not link.known:
                    self._try_send(link, [wire.CLAIM, wire.pack(
                        {"stream": self.stream, "epoch": self.epoch})])
        for link in self.links:
            if link.sent > link.acked and now - link.progress_at > RESEND_AFTER_S:
                link.sent = link.acked  # acknowledgements stalled: go back and resend
                link.progress_at = now
            self._pump(link)

    def _pump(self, link: Link) -> None:
        """Send this replicator what it lacks, oldest first, within the in-flight limit."""
        top = self.next_seq - 1
        while link.known and link.sent < top and link.sent - link.acked < MAX_INFLIGHT:
            piece = self.window.frame_from(link.sent + 1)
            if piece is None:
                log.warning("%s: %s is behind the resend window (at %d, window from %d)",
                            self.stream, link.addr, link.sent, self.window.lowest())
                link.known = False
                return
            first, last, frame = piece
            fields = {"stream": self.stream, "epoch": self.epoch, "first": first,
                      "last": last, "commit": self.committed}
            if self.stamps_epochs:   # the records before `first` carry this log's epochs
                fields["prev_epoch"] = replication.epoch_at(self.history, first - 1)
            body = wire.pack(fields)
            if not self._try_send(link, [wire.APPEND, body, frame]):
                return
            link.commit_sent = self.committed
            if link.sent == link.acked:
                link.progress_at = time.monotonic()
            link.sent = last

    def _try_send(self, link: Link, msg: list[bytes]) -> bool:
        try:
            link.sock.send_multipart(msg, zmq.NOBLOCK, copy=len(msg[-1]) < ZERO_COPY_MIN)
            return True
        except zmq.Again:
            return False

    def _on_replies(self, link: Link) -> None:
        while True:
            try:
                msg = link.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[0] == wire.APPENDED:
                body = wire.unpack(msg[1])
                if body["epoch"] > self.epoch:
                    raise SequencerStale(f"{self.stream}: {link.addr} has seen epoch "
                                         f"{body['epoch']} > {self.epoch}; this master is fenced")
                if body["last"] > link.acked:
                    link.progress_at = time.monotonic()
                if body["ok"]:
                    link.acked = max(link.acked, body["last"])
                elif body["reason"] == "gap":
                    link.acked = link.sent = body["last"]  # it lost what was in flight
                    link.progress_at = time.monotonic()
                elif body["reason"] in ("conflict", "committed"):
                    # It holds other bytes where this master writes (a tail it kept from an
                    # older epoch): claim it again and reconcile; until then its acks do not
                    # count.
                    link.known = False
                    log.warning("%s: %s refused seq %d (%s); reconciling it", self.stream,
                                link.addr, body["seq"], body["reason"])
                link.known = True
            elif msg[0] == wire.STATE:
                body = wire.unpack(msg[1])
                if body.get("stream") != self.stream or link.known:
                    continue
                if not body["ok"] or body["epoch"] > self.epoch:
                    raise SequencerStale(f"{self.stream}: {link.addr} has seen epoch "
                                         f"{body['epoch']} > {self.epoch}; this master is fenced")
                if body["epoch"] == self.epoch:
                    self._reconcile(link, body)
            elif msg[0] == wire.ERROR:
                log.error("%s: %s answered %s", self.stream, link.addr, wire.unpack(msg[1]))

    def _commit_point(self) -> int:
        point = replication.commit_point(
            [lk.acked for lk in self.links if lk.known],
            len(self.links), self.policy)
        if point < self.first_own_seq:
            return self.committed  # only a record of this epoch commits what came before
        return max(point, self.committed)

    def _forward(self) -> None:
        point = self._commit_point()
        if point > self.committed:
            self.committed = point
            if self.durable_after_first_commit is not None:
                for src, nxt in self.durable_after_first_commit.items():
                    self.durable_ss[src] = max(self.durable_ss.get(src, 1), nxt)
                self.durable_after_first_commit = None
        acks_by: dict[tuple[bytes, int], tuple[int, list]] = {}
        while self.pending and self.pending[0][1] <= self.committed:
            _first, _last, frame, acks = self.pending.popleft()
            self.pub.send_multipart([self.topic, frame], copy=len(frame) < ZERO_COPY_MIN)
            for ident, src, nxt, runs in acks:
                self.durable_ss[src] = max(self.durable_ss.get(src, 1), nxt)
                entry = acks_by.setdefault((ident, src), (nxt, []))
                acks_by[(ident, src)] = (max(entry[0], nxt), entry[1] + runs)
        for (ident, src), (nxt, runs) in acks_by.items():
            self._reply(ident, wire.ACK, {"src": src, "next": nxt, "runs": runs})
        now = time.monotonic()
        if now >= self.commit_note_at:
            # Replicators serve replay up to the commit point; tell them when it moved and no
            # APPEND carried it (at most every 5 ms).
            self.commit_note_at = now + 0.005
            for link in self.links:
                if link.known and link.commit_sent < self.committed:
                    if self._try_send(link, [wire.COMMIT, wire.pack(
                            {"stream": self.stream, "epoch": self.epoch,
                             "commit": self.committed})]):
                        link.commit_sent = self.committed

    # -- control ------------------------------------------------------------------------
    def _control(self, ident: bytes, kind: bytes, body: dict) -> None:
        if kind == wire.HELLO:
            src = wire.field(body, "src", int)
            self._reply(ident, wire.WELCOME, {"src": src, "next": self.next_ss.get(src, 1),
                                              "durable": self.durable_ss.get(src, 1),
                                              "epoch": self.epoch})
        elif kind == wire.PING:
            self._reply(ident, wire.PONG, self.status())
        elif kind == wire.STOP:
            self.stop()
            self._reply(ident, wire.PONG, {"role": "sequencer", "stopping": True})
        else:
            raise wire.WireError(f"unknown message kind {kind[:32]!r}")

    def status(self) -> dict[str, Any]:
        return {"role": "sequencer", "stream": self.stream, "epoch": self.epoch,
                "last": self.next_seq - 1, "committed": self.committed,
                "replicators": [{"addr": lk.addr, "acked": lk.acked, "known": lk.known}
                                for lk in self.links],
                "upstreams": {up.stream: {"source": up.source,
                                          "next": self.next_ss.get(up.source, 1),
                                          "taken": self.taken.get(up.source, 0)}
                              for up in self.upstreams},
                **self.stats}

    def _reply(self, ident: bytes, kind: bytes, body: dict) -> None:
        try:
            self.router.send_multipart([ident, kind, wire.pack(body)], zmq.NOBLOCK)
        except zmq.Again:
            pass  # producers resend what stays unacknowledged

    def close(self) -> None:
        for sock in [self.router, self.pub] + [lk.sock for lk in self.links]:
            sock.close(0)


def main(stream: str, producer_bind: str, pub_bind: str, replicators: list[str],
         policy: str = "first", tick_ms: int = 100, upstreams: list[str] | None = None) -> None:
    run(Sequencer(stream, producer_bind, pub_bind, replicators, policy, tick_ms,
                  upstreams=[Upstream.parse(u) for u in upstreams or []]), "sequencer")


def run(master: Sequencer, role: str) -> None:
    """Recover, serve until SIGTERM / SIGINT / STOP (a drain), close."""
    signal.signal(signal.SIGTERM, lambda *_: master.stop())
    signal.signal(signal.SIGINT, lambda *_: master.stop())
    master.recover()
    print(f"{role} ready {master.producer_endpoint} {master.pub_endpoint} epoch {master.epoch}",
          flush=True)
    try:
        master.serve()
    finally:
        master.close()
