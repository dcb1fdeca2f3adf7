"""Producer client: puts records into a stream, exactly once, across any failure of the master.

The caller numbers nothing: ``submit(kind, payloads)`` gives the payloads the next contiguous
source_seqs of this source and returns their range. Batches stay in the outbox until the
sequencer acknowledges them (after replication); ``poll`` returns the acknowledged runs as
``(ss_first, ss_last, seq_first)``, in source_seq order, each source_seq exactly once, so the
caller learns the seq of every record. ``seq_first`` is None only for records acknowledged by
a master that no longer remembers their seqs (older than its memory of recent runs).

Exactly once, and idempotent retries: a record keeps its source_seq for good. Every resend
(after a REFUSE, a WELCOME, a stall, a reconnect) sends the same records under the same
source_seqs, and the master drops what it already holds, so nothing is sequenced twice.
``seqs(first, last, timeout_s)`` waits for the seqs of a submitted range; when it raises
TimeoutError the records stay queued and are still sequenced once, and calling ``seqs`` again
for the same range is the retry: it never submits anything.

Seqs after a failover: a new master's WELCOME says how far the source is committed, but not
at which seqs. So a WELCOME acknowledges nothing here: the producer resends everything
unacknowledged, and the master answers each duplicate with an ACK naming the seqs it knows
(its tail, read back from the replicators). Only what it no longer knows comes back as None.

Refusals are exceptions with the reason (``Refused``): a batch the master would not accept
(too large, a payload over MAX_PAYLOAD, a kind out of range, no records) is refused at
``submit`` before it takes a source_seq; an ERROR answer of the master is raised by the next
``poll``/``flush``/``seqs``. Nothing is refused silently.

Bounded memory: the outbox holds at most ``max_outbox`` records and ``max_outbox_bytes``
bytes. A ``submit`` that does not fit waits up to ``block_s`` for acknowledgements (polling
the socket; the runs it receives meanwhile are returned by the next ``poll``), then raises
``Backpressure``; nothing is queued then.

Resends back off: when acknowledgements stall, the producer asks the master where it stands
(HELLO) after ``resend_after_s``, then after twice that, up to RESEND_MAX_S, each with +-25%
jitter, so that many producers of a stalled master neither resend in step nor flood it.
"""
from __future__ import annotations

import random
import time
import uuid
from collections import deque

import zmq

from mq import sockets, wire
from mq.record import MAX_FRAME, FrameError, encode, offset_of, pack, scan_producer

RESEND_MAX_S = 8.0          # the longest wait between two stall probes
RESULTS_KEPT = 1 << 16      # acknowledged runs remembered for seqs()
ASK_GIVE_UP_S = 30.0        # asking a master that never answers with dups (an older build)


class Refused(ValueError):
    """The master (or, ahead of it, the producer's own check) will not take these records.
    ``reason`` says why; ``ss_first``/``ss_last`` name the records when they are known."""

    def __init__(self, reason: str, ss_first: int | None = None, ss_last: int | None = None,
                 code: str | None = None):
        where = f" (source_seqs {ss_first}..{ss_last})" if ss_first is not None else ""
        super().__init__(f"refused{where}: {reason}")
        self.reason, self.ss_first, self.ss_last = reason, ss_first, ss_last
        self.code = code   # the master's reason code, when it gave one ("source_clash")


class Backpressure(RuntimeError):
    """The outbox is full and stayed full: the master is not acknowledging fast enough (or
    at all). Nothing was queued; submit again later."""


class Producer:
    def __init__(self, source: int, addr: str, max_inflight: int = 1 << 20,
                 resend_after_s: float = 1.0, next_ss: int | None = None,
                 max_outbox: int = 1 << 20, max_outbox_bytes: int = 256 << 20,
                 block_s: float = 10.0, keep_results: int = RESULTS_KEPT):
        """keep_results: acknowledged runs remembered for seqs(); 0 for a caller that takes
        them from poll() only (a long-running one would otherwise hold RESULTS_KEPT runs)."""
        if not 0 < source < 1 << 32:
            raise ValueError("source must be in 1 .. 2**32-1 (0 is the sequencer's)")
        if max_outbox < 1 or max_outbox_bytes < 1:
            raise ValueError("the outbox bounds are at least 1")
        self.source = source
        self.addr = addr
        # A fixed identity for the socket's life: acks still reach it after a reconnect.
        self.sock = sockets.dealer(addr,
                                   routing_id=f"p{source}-{uuid.uuid4().hex[:12]}".encode())
        self.max_inflight = max_inflight
        self.max_outbox, self.max_outbox_bytes = max_outbox, max_outbox_bytes
        self.block_s = block_s
        self.resend_after_s = resend_after_s
        self.backoff_s = resend_after_s  # the current wait before a stall probe
        self.next_ss = next_ss          # next source_seq to assign (None until WELCOME)
        self.replaying = next_ss is not None   # resending a persisted outbox from next_ss
        self.acked_next = next_ss or 1  # every source_seq below it is committed
        self.reported = self.acked_next - 1  # every source_seq up to it was returned by poll
        self.sent_upto = (next_ss or 1) - 1
        self.outbox: deque[tuple[int, int, bytes]] = deque()  # (ss_first, ss_last, batch)
        self.outbox_bytes = 0
        self.progress_at = time.monotonic()
        self.hello_at = 0.0
        self.rewound, self.rewound_at = 0, 0.0
        self.epoch = 0
        self.ready: list[tuple[int, int, int | None]] = []   # acknowledged, not yet returned
        self.refusals: deque[Refused] = deque(maxlen=64)      # master ERRORs not yet raised
        self.results: deque[tuple[int, int, int | None]] = deque(maxlen=keep_results)
        self.known: list[tuple[int, int, int]] = []   # runs named by ACKs, not yet reported
        self.asking, self.asked_at = 0, 0.0   # a committed source_seq whose seq was asked for
        self.asked_upto = 0   # the end of the outbox when it was asked: what the ask resent
        self.ask_began = 0.0
        self.answered: list[tuple[int, int]] = []   # dups the master answered while asked
        self.stats = {"sent_batches": 0, "resent_batches": 0, "refused": 0, "errors": 0,
                      "stall_probes": 0, "blocked_s": 0.0, "unknown_seqs": 0,
                      "seq_queries": 0}

    def connect(self, timeout_s: float = 30.0) -> None:
        """Learn from the master where this source stands (blocks until it answers)."""
        deadline = time.monotonic() + timeout_s
        while self.next_ss is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no WELCOME from {self.addr}")
            self._hello()
            self._receive(200)
            for r in list(self.refusals):
                # the master refused the source (not registered for this peer, a version it
                # cannot read): asking again every 200 ms until the timeout changes nothing.
                # A source_clash passes (another connection still holds the source, as a
                # producer just gone does until the master drops it): asked again, as before
                if r.code != "source_clash":
                    self.refusals.remove(r)
                    raise r

    def _hello(self) -> None:
        self.hello_at = time.monotonic()
        self.sock.send_multipart([wire.HELLO, wire.pack({"src": self.source})])

    # -- submitting ---------------------------------------------------------------------
    def submit(self, kind: int, payloads: list[bytes], block_s: float | None = None
               ) -> tuple[int, int]:
        """Queue payloads as one batch; returns their (ss_first, ss_last). Raises Refused for
        a batch the master would not accept, Backpressure if the outbox stays full."""
        first = self._first()
        try:
            batch = pack(self.source, first, kind, payloads)
        except (FrameError, OverflowError, TypeError) as exc:
            raise Refused(str(exc)) from None
        return self._queue(first, len(payloads), batch, block_s)

    def submit_many(self, records: list[tuple[int, bytes]], block_s: float | None = None
                    ) -> tuple[int, int]:
        """Queue (kind, payload) pairs of any kinds as one batch; returns their range."""
        first = self._first()
        try:
            batch = encode([(0, 0, self.source, first + i, 0, kind, payload)
                            for i, (kind, payload) in enumerate(records)])
        except (FrameError, OverflowError, TypeError) as exc:
            raise Refused(str(exc)) from None
        return self._queue(first, len(records), batch, block_s)

    def _first(self) -> int:
        if self.next_ss is None:
            raise RuntimeError("connect() first: the producer does not know its position")
        return self.next_ss

    def _queue(self, first: int, count: int, batch: bytes, block_s: float | None
               ) -> tuple[int, int]:
        # The master's own check, here, so that it can never refuse the batch later.
        if count == 0:
            raise Refused("a batch holds at least one record")
        if len(batch) > MAX_FRAME:
            raise Refused(f"batch of {len(batch)} bytes exceeds {MAX_FRAME}")
        try:
            scan_producer(batch)
        except FrameError as exc:
            raise Refused(str(exc)) from None
        self._make_room(count, len(batch), self.block_s if block_s is None else block_s)
        last = first + count - 1
        self.next_ss = last + 1
        self.outbox.append((first, last, batch))
        self.outbox_bytes += len(batch)
        if first < self.acked_next:
            # A producer replaying its persisted outbox can be told that records it has not
            # resent yet are committed (the master named its earlier incarnation's seqs):
            # they were reported then and must not wait here for an ACK that never comes.
            self._trim(self.acked_next)
        self._pump()
        return first, last

    def _fits(self, count: int, size: int) -> bool:
        if not self.outbox:
            return True   # one batch larger than the bounds still goes, alone
        return (self.unacked + count <= self.max_outbox
                and self.outbox_bytes + size <= self.max_outbox_bytes)

    def _make_room(self, count: int, size: int, block_s: float) -> None:
        if self._fits(count, size):
            return
        started = time.monotonic()
        deadline = started + block_s
        try:
            while not self._fits(count, size):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Backpressure(
                        f"source {self.source}: outbox full ({self.unacked} records, "
                        f"{self.outbox_bytes} bytes unacknowledged; bounds {self.max_outbox} "
                        f"records, {self.max_outbox_bytes} bytes) for {block_s} s; the master "
                        f"at {self.addr} is not acknowledging")
                self._receive(min(50, max(1, int(left * 1000))))
                self._tend()
        finally:
            self.stats["blocked_s"] += time.monotonic() - started

    @property
    def unacked(self) -> int:
        return max(0, (self.next_ss or self.acked_next) - self.acked_next)

    def _pump(self) -> None:
        # The outbox is in source_seq order, so the unsent batches are a suffix: find its
        # start from the right instead of walking the whole outbox on every call.
        start = len(self.outbox)
        while start and self.outbox[start - 1][1] > self.sent_upto:
            start -= 1
        for k in range(start, len(self.outbox)):
            first, last, batch = self.outbox[k]
            if self.sent_upto - self.acked_next + 1 >= self.max_inflight:
                return
            if first <= self.sent_upto:  # resend from inside a batch
                batch = batch[offset_of(batch, self.sent_upto + 1 - first):]
            try:
                sockets.send_parts(self.sock, [wire.DATA, b"\x80", batch], sockets.NOBLOCK,
                                   len(batch) < 65536)
            except zmq.Again:
                return
            if self.sent_upto < self.acked_next:
                self.progress_at = time.monotonic()
            self.sent_upto = last
            self.stats["sent_batches"] += 1

    # -- acknowledgements ---------------------------------------------------------------
    def poll(self, timeout_ms: int = 0) -> list[tuple[int, int, int | None]]:
        """Handle what the master sent; return the runs acknowledged since the last call.
        Raises Refused if the master answered with an ERROR (the runs wait for the next call)."""
        self._receive(timeout_ms)
        self._tend()
        if self.refusals:
            raise self.refusals.popleft()
        acked, self.ready = self.ready, []
        return acked

    def _receive(self, timeout_ms: int) -> None:
        # (mq.sockets' compiled poll, send and receive: the producer's turn runs once a
        # record at low rates, as the master's does)
        if zmq.zmq_poll([(self.sock, sockets.POLLIN)], timeout_ms):
            first = True
            while first or sockets.readable(self.sock):
                first = False
                try:
                    msg = sockets.recv_parts(self.sock, sockets.NOBLOCK)
                except zmq.Again:
                    break
                self._on_message(msg)

    def _tend(self) -> None:
        """Probe a stalled master (backing off with jitter), and send what is due."""
        now = time.monotonic()
        if (self.outbox and now - self.progress_at > self.backoff_s
                and now - self.hello_at > self.backoff_s):
            self.stats["stall_probes"] += 1
            self._hello()  # acknowledgements stalled: ask where the master stands
            self.backoff_s = (min(RESEND_MAX_S, self.backoff_s * 2)
                              * random.uniform(0.75, 1.25))
        self._pump()

    def _on_message(self, msg: list[bytes]) -> None:
        if len(msg) < 2:
            return
        try:
            body = wire.unpack(msg[1])
        except wire.WireError:
            return
        kind = msg[0]
        if kind == wire.ERROR:
            # The master could not take something this producer sent. Its own checks make
            # this a version mismatch or a bug: say so to the caller, with the reason.
            self.stats["errors"] += 1
            reason = body.get("reason")
            self.refusals.append(Refused(f"the master at {self.addr} answered ERROR: "
                                         f"{str(body.get('error'))[:500]}",
                                         code=reason if isinstance(reason, str) else None))
            return
        if body.get("src") != self.source:
            return
        if kind == wire.ACK:
            self._on_ack(body["next"], body.get("runs") or [], body.get("dups") or [])
        elif kind in (wire.WELCOME, wire.REFUSE):
            nxt = body["next"]
            if kind == wire.WELCOME and self.next_ss is None:   # the answer to connect()
                self.epoch, self.next_ss = body["epoch"], nxt
                self.acked_next = body["durable"]
                # records below nxt, if any, are an earlier incarnation's: not reported here
                self.reported = self.sent_upto = nxt - 1
                self.progress_at = time.monotonic()
                return
            to = max(nxt, self.acked_next)   # resend what the master lacks
            if kind == wire.WELCOME:
                if body["epoch"] != self.epoch or body["durable"] > self.acked_next:
                    # A new master, or acks that never arrived. A WELCOME names no seqs, so it
                    # acknowledges nothing: resend everything unacknowledged, and the master
                    # answers the duplicates with the seqs it knows.
                    to = self.acked_next
                self.epoch = body["epoch"]
            else:
                self.stats["refused"] += 1
            if nxt > (self.next_ss or 1):
                if not self.replaying:
                    raise RuntimeError(f"source {self.source}: the master expects {nxt}, "
                                       f"beyond {self.next_ss}: another producer uses this "
                                       "source id")
                # A producer replaying its persisted outbox (next_ss given) is still behind
                # its earlier incarnation: send on from where it stands; the master answers
                # the duplicates with acks.
                to = min(to, self.next_ss)
            if self.asking >= self.acked_next:
                to = min(to, self.asking)   # still asking for these records' seqs: resend them
            now = time.monotonic()
            # Several in-flight batches past a gap are each refused with the same number:
            # rewind once for them, not once each. A WELCOME answers one HELLO: always act on it.
            if self.sent_upto != to - 1 and (kind == wire.WELCOME or self.rewound != to
                                             or now - self.rewound_at > self.resend_after_s):
                self.stats["resent_batches"] += 1
                self.sent_upto = to - 1
                self.rewound, self.rewound_at = to, now
            self.progress_at = now

    def _on_ack(self, nxt: int, runs: list, dups: list = ()) -> None:
        """Every source_seq below nxt is committed; runs name the seqs the master knows.
        Report each source_seq once, in order, with its seq. A committed record whose seq no
        ACK named yet (an ACK of later records passed it: the master committed it without
        answering, as a new master does with the tail it adopted) stays unacknowledged here
        and is sent again at once: the master answers the duplicate with its seq. Only when
        the master's answer to the duplicate (its ``dups``) covers a record and names no seq
        for it is it reported with None (the master forgot)."""
        now = time.monotonic()
        if runs:
            self.known = sorted([r for r in self.known if r[1] > self.reported]
                                + [tuple(r) for r in runs if r[1] > self.reported])
        if dups:
            merged: list[tuple[int, int]] = []
            for a, b in sorted(self.answered + [(d[0], d[1]) for d in dups]):
                if b <= self.reported:
                    continue
                if merged and a <= merged[-1][1] + 1:   # contiguous answers: one range
                    merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
                else:
                    merged.append((a, b))
            self.answered = merged
        known, i = self.known, 0
        while self.reported + 1 < nxt:
            u = self.reported + 1
            # known is sorted and u only grows: one walk over it for the whole ACK (an ACK
            # after a stall names a run per batch, and a search per run was quadratic)
            while i < len(known) and known[i][1] < u:
                i += 1
            if i < len(known) and known[i][0] <= u:
                a, b, seq = known[i]
                self._report(u, min(b, nxt - 1), seq + (u - a))
                continue
            later = [r[0] - 1 for r in known[i:i + 1]]   # the next run the master named
            told = [b for a, b in self.answered if a <= u <= b]
            if told:
                # The master answered the duplicate of u and named no seq: it forgot them.
                self._report(u, min([nxt - 1, told[0]] + later), None)
                continue
            if self.asking == u and now - self.asked_at > self.resend_after_s:
                if u <= self.asked_upto and now - self.ask_began < ASK_GIVE_UP_S:
                    # Asked, and not answered yet (a master behind on its input, or an ask
                    # lost to a failover): ask again. Answered or not, the seqs stay exact:
                    # only a master's own answer reports a record as None.
                    self.asked_at = now
                    self.sent_upto = min(self.sent_upto, u - 1)
                    self.stats["seq_queries"] += 1
                    break
                # Records never queued here when asked (an earlier incarnation's, beyond a
                # replayed outbox) cannot be asked for, nor those a master that names no
                # dups never answers: reported as None, and only as far as the ask went.
                upto = [self.asked_upto] if self.asked_upto >= u else []
                self._report(u, min([nxt - 1] + upto + later), None)
                continue
            if self.asking != u:
                self.asking, self.asked_at, self.ask_began = u, now, now
                self.asked_upto = (self.next_ss or 1) - 1
                self.sent_upto = min(self.sent_upto, u - 1)   # ask: resend from u
                self.stats["seq_queries"] += 1
            break
        if i:
            del known[:i]   # runs wholly reported
        self._acknowledge(self.reported + 1)

    def _report(self, a: int, b: int, seq: int | None) -> None:
        if seq is None:
            self.stats["unknown_seqs"] += b - a + 1
        if len(self.ready) >= RESULTS_KEPT:
            del self.ready[:RESULTS_KEPT // 2]   # a caller that never polls (it uses seqs)
        self.ready.append((a, b, seq))
        self.results.append((a, b, seq))
        self.reported = b

    def _acknowledge(self, nxt: int) -> None:
        if nxt <= self.acked_next:
            return
        self.acked_next = nxt
        self.progress_at = time.monotonic()
        self.backoff_s = self.resend_after_s
        self._trim(nxt)
        if self.sent_upto < nxt - 1:
            self.sent_upto = nxt - 1

    def _trim(self, nxt: int) -> None:
        """Drop from the outbox every record below source_seq nxt."""
        while self.outbox and self.outbox[0][1] < nxt:
            self.outbox_bytes -= len(self.outbox.popleft()[2])
        if self.outbox and self.outbox[0][0] < nxt:
            first, last, batch = self.outbox.popleft()
            rest = batch[offset_of(batch, nxt - first):]
            self.outbox_bytes -= len(batch) - len(rest)
            self.outbox.appendleft((nxt, last, rest))

    def flush(self, timeout_s: float = 30.0) -> list[tuple[int, int, int | None]]:
        """Wait until everything submitted is acknowledged; return the runs acknowledged
        meanwhile (and any not yet returned by poll)."""
        deadline = time.monotonic() + timeout_s
        acked = self.poll(0)
        while self.outbox:
            if time.monotonic() > deadline:
                self.ready[:0] = acked   # not lost: the next poll returns them
                raise TimeoutError(f"source {self.source}: {self.unacked} records unacknowledged")
            acked.extend(self.poll(50))
        return acked

    def seqs(self, first: int, last: int, timeout_s: float = 30.0) -> list[int | None]:
        """The seqs of source_seqs first..last (None where the master no longer knew them),
        waiting up to timeout_s. Idempotent: on TimeoutError the records stay queued, and
        calling again for the same range waits for the same records. A caller that takes its
        seqs here need not poll: the runs poll would return are dropped past RESULTS_KEPT."""
        if self.next_ss is None or not 0 < first <= last < self.next_ss:
            raise ValueError(f"source_seqs {first}..{last} were not submitted here")
        if not self.results.maxlen:
            raise ValueError("this producer keeps no results (keep_results=0): use poll()")
        deadline = time.monotonic() + timeout_s
        while self.acked_next <= last:
            if time.monotonic() > deadline:
                raise TimeoutError(f"source {self.source}: source_seqs {first}..{last} not "
                                   f"acknowledged in {timeout_s} s; they stay queued")
            self._receive(50)
            self._tend()
            if self.refusals:
                raise self.refusals.popleft()
        out: list[int | None] = [None] * (last - first + 1)
        found = 0
        for a, b, seq in reversed(self.results):
            lo, hi = max(a, first), min(b, last)
            if lo <= hi:
                for ss in range(lo, hi + 1):
                    out[ss - first] = None if seq is None else seq + (ss - a)
                found += hi - lo + 1
                if found >= len(out):
                    break
            if b < first:
                break
        return out

    def close(self) -> None:
        self.sock.close(0)
