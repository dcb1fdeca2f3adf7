"""The master of a stream toward its replicators: decisions without sockets, and the shell.

A master claims the stream, adopts the best log, reconciles every replicator with it, sends
each replicator what it lacks, computes the commit point, and forwards committed frames in seq
order. ``Master`` takes all of these decisions and does no I/O: the shell that owns the sockets
(mq.sequencer.Sequencer) hands it every reply of a replicator (``_on_reply``) and calls its
periodic work (``recovery_step`` while it starts, then ``_pump_all`` and ``_forward``). It sends
through three hooks that the shell implements:

* ``_try_send(link, parts) -> bool``: one message to a replicator (False: not sent now);
* ``_publish(frame)``: a committed frame to the subscribers;
* ``_reply(ident, kind, body)``: a message to a producer.

``MasterShell`` is that shell: the ZeroMQ sockets, the loop, the drain on STOP; a role is a
shell around a core (mq.sequencer.Sequencer = MasterShell + SequencerCore).

Time is ``self.mono()`` (seconds, monotonic), injectable. The model test
(tests/stateful/test_replication_model.py) runs this code, with the real replicator, over a
network that loses, reorders and duplicates messages.

Invariants:
* A replicator's acknowledgements count towards the commit point only while it is *known*:
  claimed by this master and reconciled with its log. A refusal as a conflict, a gap below what
  it acknowledged, or a fall behind the resend window makes it unknown; it is claimed and
  reconciled again (common prefix, TRUNCATE of a divergent tail, resend from there).
* Only records of this master's epoch commit what came before them (Raft's rule).
* An epoch is this master's only once the policy's number of replicators granted its CLAIM
  to this incarnation (``claimant``, random): a replicator grants an epoch to one claimant,
  so two masters that start together never both stamp records of one epoch (log matching
  rests on it). A STATE's answer, even one that names the epoch claimed, grants nothing.
* Nothing is forwarded, nor acknowledged to a producer, before the ack policy holds for it.
* The resend window does not evict an uncommitted frame (short of twice its size, a memory
  bound for a role without backpressure); the sequencer keeps the uncommitted bytes below
  ``max_uncommitted_bytes`` by refusing new input (backpressure), far below the window.
"""
from __future__ import annotations

import bisect
import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from mq import auth, replication, sockets, wire
from mq.record import first_epoch, scan, source_runs, trim

log = logging.getLogger("seqex.master")

POLICIES = ("first", "quorum", "all")
MAX_EPOCH = (1 << 32) - 1      # a record's epoch is a u32
MAX_FRAME_BYTES = 4 << 20      # a sequenced frame is cut at this size
MAX_INFLIGHT = 1 << 20         # records sent to one replicator and not yet acknowledged
RESEND_BYTES = 1 << 20         # a replicator behind gets its backlog in frames of this size
RESEND_AFTER_S = 1.0           # unacknowledged for this long: probe it (Master._stalled)
STALL_PROBE_S = 0.1            # ... and again this often until it answers
FULL_PROBE_S = 0.05            # a replicator whose disk is full gets one frame this often
PROBE_EVERY_S = 0.5            # an unknown replicator is claimed again this often
ASK_EVERY_S = 0.02             # start-up questions are repeated this often until sent
ASK_AGAIN_S = 1.0              # ... and a sent one this long after, until answered
TAIL_ASK_S = 2.0               # a tail REPLAY unanswered for this long is asked again
TAIL_RECORDS = 10_000          # a new master reads at least this many records of the tail
TAIL_MAX_BYTES = 4 << 20       # one tail REPLAY chunk
RECENT_RUNS = 4096             # per source: (ss_first, ss_last, seq_first) kept for re-acks
MAX_DRAIN = 1024               # producer messages taken per turn of the shell's loop
COMMIT_IDLE_S = 0.005          # a COMMIT goes to a replicator no APPEND reached for this long
ZERO_COPY_MIN = 64 << 10       # below this a copy is cheaper than pyzmq's zero-copy tracking


class SequencerStale(RuntimeError):
    """A replicator has seen a higher epoch: another master owns the stream."""


class RecoveryStopped(RuntimeError):
    """stop() (SIGTERM, SIGINT) came while the master was still taking over the stream: it
    leaves as a crash at that point would, having sequenced nothing."""


class EpochExhausted(RuntimeError):
    """The next epoch does not fit a record's u32 epoch: no master can take the stream over."""


@dataclass
class Link:
    """The master's view of one replicator."""
    addr: str
    sock: Any = None          # the shell's socket (None in the model)
    acked: int = 0            # highest contiguous seq it acknowledged
    sent: int = 0             # highest seq sent to it (rewound when it lost what followed)
    known: bool = False       # claimed and reconciled by this master; its acks count
    progress_at: float = 0.0  # when its acks last moved (or a resend began)
    commit_sent: int = 0      # the commit point it was last told
    behind: bool = False      # it lacks records that left the resend window (logged once)
    alarm_at: float = 0.0     # the next time a refusal that needs the operator is logged
    append_at: float = 0.0    # when the last APPEND went to it (it carried the commit point)
    full: bool = False        # its disk was full at its last answer: one frame at a time
    stalled: bool = False     # unanswered for RESEND_AFTER_S: probed until it answers (_stalled)
    probe_at: float = 0.0     # ... the next of which goes no earlier than this


FRAME_OVERHEAD = 200           # bytes the window spends on a frame besides its own (Window)


class Window:
    """Recent frames in seq order, for resending to replicators that fell behind.

    ``add(..., keep_from=S)`` does not evict a frame holding a seq >= S: the master passes its
    first uncommitted seq, so the window exceeds max_bytes only by uncommitted frames, which
    the sequencer's backpressure bounds well below it. A master without backpressure (a mirror)
    still has its memory bounded: beyond twice max_bytes the oldest frame goes even when
    uncommitted, and is counted in ``evicted_uncommitted``.

    A frame counts its bytes plus FRAME_OVERHEAD, what the window spends on it besides (its
    tuple, its ints, the bytes object's header, three list slots): with small frames (a
    replica's outputs, a few hundred bytes) that is as much again, and the bound held by the
    payload alone let a replica's memory reach 1.3-2x max_bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.firsts: list[int] = []
        self.frames: list[tuple[int, int, bytes]] = []
        self.tags: list[str] = []  # who produced each frame (mirror streams)
        self.start = 0
        self.bytes = 0
        self.evicted_uncommitted = 0

    def add(self, first: int, last: int, frame: bytes, tag: str = "",
            keep_from: int | None = None) -> None:
        self.firsts.append(first)
        self.frames.append((first, last, frame))
        self.tags.append(tag)
        self.bytes += len(frame) + FRAME_OVERHEAD
        while self.bytes > self.max_bytes and self.start < len(self.frames) - 1:
            if keep_from is not None and self.frames[self.start][1] >= keep_from:
                if self.bytes <= 2 * self.max_bytes:
                    break  # an uncommitted frame stays until it commits
                self.evicted_uncommitted += 1
            self.bytes -= len(self.frames[self.start][2]) + FRAME_OVERHEAD
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

    def run_from(self, seq: int, max_bytes: int) -> tuple[int, int, bytes] | None:
        """The records from seq on as one frame: the frame holding seq (from seq), joined with
        the frames after it while the whole stays within max_bytes (0: that frame alone) and
        of one epoch, so that a replicator behind gets its backlog in a few APPENDs, not one
        per frame the master made (a replicator back from a full disk after 10 s at 800
        frames/s took 8,000, and then as many again when its peers had meanwhile caught it
        up: ~1 s of overlaps to check before the frames it lacked). None if seq left the
        window."""
        i = self._index(seq)
        if i < 0:
            return None
        first, last, frame = self.frames[i]
        head = trim(frame, first, seq)
        frames = self.frames
        j = i + 1
        if j >= len(frames):   # the newest frame: the live path, as it is
            return seq, last, head
        epoch = first_epoch(head)
        parts, size = [head], len(head)
        while j < len(frames):
            _f, nxt_last, nxt = frames[j]
            if size + len(nxt) > max_bytes or first_epoch(nxt) != epoch:
                break
            parts.append(nxt)
            size += len(nxt)
            last = nxt_last
            j += 1
        return seq, last, head if len(parts) == 1 else b"".join(parts)

    def _index(self, seq: int) -> int:
        """The index of the frame holding seq, or -1 if seq left the window (or is beyond)."""
        i = bisect.bisect_right(self.firsts, seq, lo=self.start) - 1
        if i < self.start or seq > self.frames[i][1]:
            return -1
        return i

    def frame_from(self, seq: int) -> tuple[int, int, bytes] | None:
        """The records from seq to the end of the frame holding seq, or None if evicted."""
        i = self._index(seq)
        if i < 0:
            return None
        first, last, frame = self.frames[i]
        return seq, last, trim(frame, first, seq)


class RecentRuns:
    """Per source, the last RECENT_RUNS runs (ss_first, ss_last, seq_first), in source_seq
    order, so that a duplicate is acknowledged again with its seqs at O(log n) a batch."""

    def __init__(self) -> None:
        self.firsts: list[int] = []
        self.runs: list[tuple[int, int, int]] = []

    def append(self, ss_first: int, ss_last: int, seq_first: int) -> None:
        if self.runs and ss_first <= self.runs[-1][1]:
            return  # already known (a tail re-read after a failover)
        self.firsts.append(ss_first)
        self.runs.append((ss_first, ss_last, seq_first))
        if len(self.runs) > 2 * RECENT_RUNS:
            del self.firsts[:RECENT_RUNS], self.runs[:RECENT_RUNS]

    def known(self, lo: int, hi: int) -> list[list[int]]:
        """[[ss_first, ss_last, seq_first]] for the part of lo..hi still remembered."""
        out: list[list[int]] = []
        i = max(0, bisect.bisect_right(self.firsts, lo) - 1)
        while i < len(self.runs) and self.runs[i][0] <= hi:
            ss_first, ss_last, seq_first = self.runs[i]
            a, b = max(lo, ss_first), min(hi, ss_last)
            if a <= b:
                out.append([a, b, seq_first + (a - ss_first)])
            i += 1
        return out

    def __iter__(self):
        return iter(self.runs)


@dataclass
class Recovery:
    """Where a starting master stands: asking STATE, claiming, reading the tail, done."""
    phase: str                 # "state", "claim", "tail"
    deadline: float
    started: float
    ask_at: float = 0.0
    asked: dict[int, float] = field(default_factory=dict)   # link -> when it may be asked again
    answers: dict[int, dict] = field(default_factory=dict)
    epoch: int = 0
    tail_link: int = -1
    # replicator -> the seq up to which its log is the adopted one (those that can serve
    # part of the tail; the adopted replicator first)
    tail_holders: dict[int, int] = field(default_factory=dict)
    tail_seq: int = 0
    tail_to: int = 0
    tail_waiting: bool = False  # a tail REPLAY is out and unanswered
    req: int = 0
    stated: frozenset = frozenset()   # (claim) the replicators that answered STATE


def _state_ok(st: Any, stream: str) -> bool:
    """A STATE answer that a master can act on (anything else is ignored)."""
    if not isinstance(st, dict) or st.get("stream") != stream:
        return False
    for key in ("last", "epoch", "commit", "last_epoch", "ts"):
        v = st.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return False
    return isinstance(st.get("history"), list) and isinstance(st.get("sources", []), list)


class Master:
    """The decisions of a stream's master (see the module docstring). The shell subclasses it."""

    policies = POLICIES
    stamps_epochs = True   # every record carries this master's epoch (APPENDs name the previous)
    tail_records = TAIL_RECORDS

    def __init__(self, stream: str, replicators: list[str], policy: str = "first",
                 window_bytes: int = 256 << 20, max_uncommitted_bytes: int | None = None,
                 startup_grace_s: float = 2.0, mono: Callable[[], float] = time.monotonic):
        if policy not in self.policies:
            raise ValueError(f"ack policy must be one of {self.policies}, not {policy!r}")
        self.spin = sockets.Spin()   # --spin-us (mq/sockets.py); off by default
        if not replicators and policy != "none":
            raise ValueError(f"ack policy {policy!r} needs at least one replicator")
        if max_uncommitted_bytes is None:
            max_uncommitted_bytes = window_bytes // 4
        if max_uncommitted_bytes < 1 or window_bytes < max_uncommitted_bytes + 2 * MAX_FRAME_BYTES:
            raise ValueError(f"window of {window_bytes} bytes must hold the uncommitted bound "
                             f"({max_uncommitted_bytes}) and two frames of {MAX_FRAME_BYTES}")
        self.stream = stream
        self.policy = policy
        self.mono = mono
        self.startup_grace_s = startup_grace_s
        self.max_uncommitted_bytes = max_uncommitted_bytes
        self.links: list[Link] = [Link(addr) for addr in replicators]
        # acknowledgements a record needs to commit (replication.needed; a mirror without
        # replicators, policy "none", computes its own commit point)
        self.need = replication.needed(policy, len(self.links)) if policy in POLICIES else 0
        self.window = Window(window_bytes)
        self.epoch = 0
        # This incarnation's name in its CLAIMs (nonzero, a u64): a replicator grants an epoch
        # to one claimant only.
        self.claimant = int.from_bytes(os.urandom(8), "big") | 1
        self.next_seq = 1
        self.first_own_seq = 1       # acks count towards commit from this seq on
        self.committed = 0
        self.history: list[tuple[int, int]] = []  # [(epoch, first seq)] of this master's log
        self.durable_after_first_commit: dict[int, int] | None = None
        self.probe_at = 0.0
        self.commit_note_at = 0.0
        # the last APPEND and COMMIT headers packed, by (epoch, first, last, commit) and
        # (epoch, commit): each goes to every replicator in turn
        self.append_key: tuple = ()
        self.append_head = b""
        self.commit_key: tuple = ()
        self.commit_head = b""
        self.ts_ns = 0                         # ts of the last record of the adopted log
        self.next_ss: dict[int, int] = {}      # per source: next source_seq to sequence
        self.durable_ss: dict[int, int] = {}   # per source: next source_seq not yet committed
        self.recent: dict[int, RecentRuns] = defaultdict(RecentRuns)
        # frames sequenced but not yet forwarded: (first, last, frame, producer acks)
        self.pending: deque[tuple[int, int, bytes, list[tuple]]] = deque()
        self.pending_bytes = 0
        self.recovery: Recovery | None = None
        self.last_activity_ns = 0    # monotonic ns of the last record sequenced
        self.stats = {"sequenced": 0, "frames": 0, "duplicates": 0, "refused": 0,
                      "ticks": 0, "bad_batches": 0, "reconciled": 0, "tail_records": 0,
                      "busy": 0, "clashes": 0}

    # -- I/O hooks (the shell implements them) --------------------------------------------
    def _try_send(self, link: Link, msg: list[bytes]) -> bool:
        raise NotImplementedError

    def _publish(self, frame: bytes) -> None:
        raise NotImplementedError

    def _reply(self, ident: bytes, kind: bytes, body: dict) -> None:
        raise NotImplementedError

    # -- role hooks (a role without Ticks, sources or backpressure needs none of them) -------
    def _open_sources(self) -> None:
        """Start taking input other than the producer socket."""

    def _take_sources(self) -> None:
        """Take what that other input has (once a turn)."""

    def tick_interval_ns(self) -> int:
        return 1 << 62

    def tick_due(self, now_ns: int) -> bool:
        return False

    def _emit_tick(self, now_ns: int) -> None:
        """Sequence a record of this epoch (a role that stamps records does)."""

    def busy(self, unframed: int = 0) -> bool:
        return False

    # -- start-up: learn, claim, adopt, reconcile, read the tail ---------------------------
    def begin_recovery(self, deadline_s: float = 60.0) -> None:
        now = self.mono()
        self.recovery = Recovery("state", deadline=now + deadline_s, started=now)

    def recovery_step(self) -> bool:
        """Ask what is unanswered and move on when enough has been answered. True once the
        master has taken the stream over (then it sequences its first record)."""
        r = self.recovery
        if r is None:
            return True
        now = self.mono()
        if now > r.deadline:
            raise TimeoutError(f"{self.stream}: recovery stuck in phase {r.phase!r} "
                               f"({len(r.answers)} of {len(self.links)} replicators answered)")
        need = replication.needed(self.policy, len(self.links))
        # The grace is for replicators that are slow to answer, and the STATE phase waits it
        # out. The CLAIM phase does not wait it out again for one that did not answer STATE
        # (it is down): once every replicator that answered STATE has answered the CLAIM,
        # and they are enough, the master goes on. (It waited 2 s more: a master restarted
        # while quorum was lost took over 2 s after a replicator came back, not at once.)
        if r.phase in ("state", "claim") and (
                len(r.answers) == len(self.links)
                or (len(r.answers) >= need and (
                    now - r.started >= self.startup_grace_s
                    or (r.phase == "claim" and r.stated <= r.answers.keys())))):
            if r.phase == "state":
                seen = max(st["epoch"] for st in r.answers.values())
                if seen + 1 > MAX_EPOCH:
                    raise EpochExhausted(
                        f"{self.stream}: the replicators have seen epoch {seen}, and a record's "
                        f"epoch is a u32 (at most {MAX_EPOCH}), so no master can take the "
                        f"stream over. Nothing was claimed. Next step: stop the stream's "
                        f"replicators and reset their stored epoch to the epoch of their last "
                        f"record (docs/log.md, 'Epoch exhausted'), then start the master again.")
                self.recovery = r = Recovery("claim", r.deadline, now, epoch=seen + 1,
                                             stated=frozenset(r.answers))
            elif all(st["ok"] for st in r.answers.values()) and self.stamps_epochs and max(
                    st["last_epoch"] for st in r.answers.values()) >= r.epoch:
                # Records of the epoch claimed exist: another master was granted it. That
                # cannot happen while the replicators grant an epoch to one claimant and a
                # majority must grant it; never adopt such a log, claim again above it.
                log.error("%s: the replicators hold records of epoch %d, which this master "
                          "was just granted; claiming again", self.stream, r.epoch)
                self.recovery = r = Recovery("state", r.deadline, now)
            elif all(st["ok"] for st in r.answers.values()):
                self._adopt(r)
                r = self.recovery
            else:
                log.warning("%s: epoch %d was overtaken by another master; trying again",
                            self.stream, r.epoch)
                self.recovery = r = Recovery("state", r.deadline, now)
        if r.phase in ("state", "claim") and now >= r.ask_at:
            # Sends fail until a connection is up (IMMEDIATE): ask often, it is cheap.
            # A question that was sent is asked again only after ASK_AGAIN_S: a replicator
            # holding many sources takes a while to answer, and must not get a queue of them.
            for i, link in enumerate(self.links):
                if i not in r.answers and now >= r.asked.get(i, 0.0):
                    if r.phase == "state":
                        sent = self._try_send(link, [wire.STATE,
                                                     wire.pack(self._state_request())])
                    else:
                        sent = self._claim(link, r.epoch)
                    if sent:
                        r.asked[i] = now + ASK_AGAIN_S
            r.ask_at = now + ASK_EVERY_S
        if r.phase == "tail":
            if r.tail_seq > r.tail_to:
                self.recovery = None
                log.info("%s: epoch %d resumes after seq %d (commit %d; tail of %d records "
                         "read from %s)", self.stream, self.epoch, self.next_seq - 1,
                         self.committed, self.stats["tail_records"],
                         self.links[r.tail_link].addr if r.tail_link >= 0 else "-")
                return True
            if now >= r.ask_at:
                if r.tail_waiting:
                    self._next_tail_link(r, f"no answer for {TAIL_ASK_S:.0f} s")
                elif r.tail_holders.get(r.tail_link, 0) < r.tail_seq:
                    self._next_tail_link(r, "")   # it holds no more of the adopted log
                r.req += 1
                upto = min(r.tail_to, r.tail_holders.get(r.tail_link, r.tail_to))
                self._try_send(self.links[r.tail_link], [wire.REPLAY, wire.pack(
                    {"stream": self.stream, "from": r.tail_seq, "to": upto,
                     "max_bytes": TAIL_MAX_BYTES, "uncommitted": True, "req": r.req})])
                r.tail_waiting = True
                r.ask_at = now + TAIL_ASK_S
        return False

    def _adopt(self, r: Recovery) -> None:
        """Take the epoch, adopt the best log, reconcile every claimed replicator with it, and
        start reading the part of the tail that the master needs from the best replicator."""
        claimed = r.answers
        order = sorted(claimed)
        best_i = order[replication.best_log([claimed[i] for i in order])]
        best = claimed[best_i]
        last = best["last"]
        self.epoch = r.epoch
        self.history = [tuple(h) for h in best["history"]] + [(self.epoch, last + 1)]
        self.next_seq = self.first_own_seq = last + 1
        commit = max(st["commit"] for st in claimed.values())
        self.committed = min(commit, last)
        self.ts_ns = best["ts"]
        # The best log's source table describes exactly the adopted log. It counts as
        # durable (WELCOME.durable) only once this epoch's first record commits.
        self.next_ss = {src: nxt for src, nxt, *_seq_ts in best["sources"]}
        self.durable_after_first_commit = dict(self.next_ss)
        # what an earlier attempt at recovery read is forgotten: this one reads afresh
        self.window = Window(self.window.max_bytes)
        self.recent.clear()
        self.append_key = self.commit_key = ()   # headers packed under the old history
        self.stats["tail_records"] = 0
        for i in order:
            self._reconcile(self.links[i], claimed[i])
        # What the master must hold to resend: the uncommitted tail (records at or below a
        # commit point are served by any replicator's peers), and at least the last
        # tail_records records, to acknowledge duplicates with their seqs. Never the whole
        # log because some replicator is empty or far behind: peers catch that one up.
        tail_from = max(1, min(self.committed + 1, last - self.tail_records + 1))
        # Any replicator whose log is the adopted one up to some seq can serve the tail up
        # to there (log matching: the same epochs over the same seqs, the same records).
        # When the one asked cannot (a frame of it rotted and is not repaired yet, or it is
        # gone), the next that holds the seq needed is asked.
        holders = {best_i: last}
        if self.stamps_epochs:
            for i in order:
                agreed = min(claimed[i]["last"], replication.common_prefix(
                    claimed[i]["history"], claimed[i]["last"], best["history"], last))
                if i != best_i and agreed >= tail_from:
                    holders[i] = agreed
        self.recovery = Recovery("tail", r.deadline, self.mono(), tail_link=best_i,
                                 tail_holders=holders, tail_seq=tail_from, tail_to=last)

    def _next_tail_link(self, r: Recovery, why: str) -> None:
        """Move to the next replicator (in turn) that holds the next seq of the adopted log:
        the one asked did not serve it (`why`), or holds no more of it. At once if there is
        another; if not, the same one is asked again in TAIL_ASK_S."""
        r.tail_waiting = False
        order = sorted(r.tail_holders)
        k = order.index(r.tail_link) if r.tail_link in order else -1
        for step in range(1, len(order) + 1):
            i = order[(k + step) % len(order)]
            if r.tail_holders[i] >= r.tail_seq and i != r.tail_link:
                was, r.tail_link = r.tail_link, i
                r.ask_at = 0.0
                if why:
                    log.warning("%s: %s did not serve the tail from %d (%s); asking %s",
                                self.stream, self.links[was].addr, r.tail_seq, why,
                                self.links[i].addr)
                return

    def _on_tail(self, body: dict, frame: bytes) -> None:
        r = self.recovery
        if body.get("req") != r.req or body.get("from") != r.tail_seq:
            return  # a late or repeated answer
        if not frame:
            # It no longer holds what it claimed: another holder, or start over.
            r.tail_holders.pop(r.tail_link, None)
            was = r.tail_link
            self._next_tail_link(r, "")
            if r.tail_link == was:
                log.warning("%s: %s could not replay the tail from %d; recovering again",
                            self.stream, self.links[was].addr, r.tail_seq)
                self.recovery = Recovery("state", r.deadline, self.mono())
            return
        _n, first, last = scan(frame)
        if first != r.tail_seq or last > r.tail_to:
            raise RuntimeError(f"{self.stream}: replay from {r.tail_seq} gave {first}..{last}")
        self.window.add(first, last, frame)
        for src, ss_first, ss_last, seq_first in source_runs(frame):
            self.recent[src].append(ss_first, ss_last, seq_first)
        self.stats["tail_records"] += last - first + 1
        r.tail_seq = last + 1
        r.ask_at = 0.0
        r.tail_waiting = False

    def _claim(self, link: Link, epoch: int) -> bool:
        """CLAIM, preceded by a STATE: a replicator that has just restarted opens the stream
        on the STATE (a read) before the CLAIM writes to it. The STATE's answer carries an
        older epoch until the replicator was claimed, and is then ignored. True if sent."""
        if self._try_send(link, [wire.STATE, wire.pack(self._state_request())]):
            return self._try_send(link, [wire.CLAIM, wire.pack({**self._state_request(),
                                                                "epoch": epoch,
                                                                "claimant": self.claimant})])
        return False

    def _state_request(self) -> dict:
        """The body of a STATE (and, with the epoch, of a CLAIM)."""
        return {"stream": self.stream}

    def _reconcile(self, link: Link, st: dict) -> int:
        """Bring a replicator's view in line with this master's log: the seq up to which it
        agrees; a divergent tail beyond it (never committed) is truncated. Returns that seq."""
        top = self.next_seq - 1
        if self.stamps_epochs:
            agreed = min(replication.common_prefix(st["history"], st["last"], self.history, top),
                         st["last"])
        else:
            # A mirror's records keep their engine's epochs, not this master's: its own
            # history (the adopted log, then its epoch from its first seq) says nothing of
            # theirs, and compared with a replicator's (its records' epochs) it found a
            # divergent tail at its first seq in every replicator reconciled after a failover
            # of the mirror: the TRUNCATE was refused (committed) and the replicator left out
            # of the stream for good. The copies of one seq are the same bytes (the engine is
            # deterministic; the replicators compare and repair them): it agrees to its end.
            agreed = min(st["last"], top)
        if agreed < st["last"]:
            log.warning("%s: %s holds a divergent tail %d..%d; truncating it", self.stream,
                        link.addr, agreed + 1, st["last"])
            self._try_send(link, [wire.TRUNCATE, wire.pack(
                {"stream": self.stream, "epoch": self.epoch, "after": agreed})])
        link.acked = link.sent = agreed
        link.known = True
        link.full = link.stalled = False
        link.progress_at = self.mono()
        self.stats["reconciled"] += 1
        return agreed

    # -- replies of the replicators -----------------------------------------------------------
    def _on_reply(self, link: Link, msg: list[bytes]) -> None:
        """One message from a replicator. Malformed answers are ignored (and logged)."""
        try:
            self._on_reply_checked(link, msg)
        except (wire.WireError, KeyError, TypeError, ValueError) as exc:
            log.error("%s: bad answer from %s: %s", self.stream, link.addr, exc)

    def _on_reply_checked(self, link: Link, msg: list[bytes]) -> None:
        if len(msg) < 2:
            return
        kind = msg[0]
        body = wire.unpack(msg[1])
        i = self.links.index(link)
        r = self.recovery
        if kind == wire.ERROR:
            log.error("%s: %s answered %s", self.stream, link.addr, body)
            if r is not None and r.phase == "tail" and i == r.tail_link and r.tail_waiting:
                self._next_tail_link(r, "an error")   # e.g. a damaged frame
            return
        if r is not None:
            if kind == wire.STATE and r.phase in ("state", "claim") and \
                    _state_ok(body, self.stream) and isinstance(body.get("ok"), bool):
                # In the claim phase only the CLAIM's own answer counts: granted to this
                # claimant at the epoch claimed, or refused by an epoch at least as high. A
                # STATE's answer (sent before each CLAIM) that names the epoch claimed means
                # another master was granted it; a late answer to an earlier question is
                # ignored.
                if r.phase == "state" or (
                        body["ok"] and body["epoch"] == r.epoch
                        and body.get("claimant") == self.claimant) or (
                        not body["ok"] and body["epoch"] >= r.epoch):
                    r.answers[i] = body
            elif kind == wire.RECORDS and r.phase == "tail" and i == r.tail_link \
                    and len(msg) >= 3:
                self._on_tail(body, msg[2])
            return
        if kind == wire.APPENDED:
            self._on_appended(link, body)
        elif kind == wire.STATE:
            if link.known or not _state_ok(body, self.stream):
                return
            if body.get("ok") is not True or body["epoch"] > self.epoch:
                raise SequencerStale(f"{self.stream}: {link.addr} has seen epoch "
                                     f"{body['epoch']} > {self.epoch}; this master is fenced")
            if body["epoch"] == self.epoch:
                self._reconcile(link, body)

    def _on_appended(self, link: Link, body: dict) -> None:
        if body.get("stream", self.stream) != self.stream:
            return
        epoch, last = wire.field(body, "epoch", int), wire.field(body, "last", int)
        if epoch > self.epoch:
            raise SequencerStale(f"{self.stream}: {link.addr} has seen epoch "
                                 f"{epoch} > {self.epoch}; this master is fenced")
        if not link.known:
            return  # not reconciled yet: what it says does not count
        link.stalled = False   # it answers
        if body.get("ok") is True:
            # It can hold nothing of this master's beyond what was sent to it. (A stall does
            # not rewind `sent`: what went before it and was only queued there is answered
            # now, and is not sent again.)
            last = min(last, link.sent)
            if last > link.acked:
                link.acked = last
                link.progress_at = self.mono()
            link.full = False
            return
        reason = body.get("reason")
        if reason == "disk_full" and last >= link.acked:
            # It stored nothing of what was sent beyond what it acknowledged. Go back there,
            # and until it takes a frame again send it one frame every FULL_PROBE_S: it
            # resumes within that of having room, and a long outage costs no resends of the
            # whole backlog.
            link.sent = link.acked
            link.progress_at = self.mono()
            if not link.full:
                link.full = True
                link.probe_at = 0.0   # the first probe at once
        elif reason == "gap" and last >= link.acked:
            # It lost what was in flight: resend from what it acknowledged (its own `last`
            # may end in records that are not this master's, so it is not taken on trust).
            link.sent = link.acked
            link.progress_at = self.mono()
        elif reason in ("gap", "conflict", "committed", "disk_full"):
            # Other bytes where this master writes (a tail kept from an older epoch, a TRUNCATE
            # that was lost), or fewer records than it acknowledged (a gap or a full disk below
            # its ack: it lost records, e.g. its file was quarantined): its acks stop counting
            # until it is claimed and reconciled again, which starts at once.
            link.known = False
            if reason == "committed":
                # It refuses to truncate below its commit point: its committed log differs
                # from this master's, which no reconciliation can settle. It is claimed
                # again at the next probe (every PROBE_EVERY_S), not at once: that ran claim,
                # reconcile, TRUNCATE, refusal round the loop at full speed.
                now = self.mono()
                if now >= link.alarm_at:
                    link.alarm_at = now + 10.0
                    log.error("%s: %s holds committed records up to %s that differ from this "
                              "master's log; it is left out. Next step: stop that replicator, "
                              "move its data directory aside and start it empty, so that its "
                              "peers rebuild it", self.stream, link.addr, body.get("seq"))
                return
            self.probe_at = 0.0
            log.warning("%s: %s refused seq %s (%s); reconciling it", self.stream,
                        link.addr, body.get("seq", last), reason)

    # -- sending to the replicators -----------------------------------------------------------
    def _pump_all(self) -> None:
        now = self.mono()
        if now >= self.probe_at:
            # A replicator that was down, refused a write, or fell behind the window is claimed
            # again and reconciled when it answers.
            self.probe_at = now + PROBE_EVERY_S
            for link in self.links:
                if not link.known:
                    self._claim(link, self.epoch)
        top = self.next_seq - 1
        for link in self.links:
            if link.sent > link.acked and now - link.progress_at > (
                    STALL_PROBE_S if link.stalled else RESEND_AFTER_S):
                self._stalled(link, now)
            if link.known and link.sent < top:   # (what _pump checks first)
                self._pump(link)

    def _stalled(self, link: Link, now: float) -> None:
        """Acknowledgements stalled for RESEND_AFTER_S. What was sent may be lost (a dropped
        connection) or only queued in a replicator that is not reading (its disk stalled).
        Resending all of it, as this did, queued the backlog there again each time (sockets
        take no receive high-water mark, mq/sockets.py). So it is probed with the newest
        record sent, and nothing else goes until it answers: queued, the rest is answered
        before the probe and the probe is a duplicate; lost, the probe leaves a gap, which the
        replicator answers with "gap", and the master resends from what it acknowledged.

        Until it answers, the probe goes again every STALL_PROBE_S: a probe sent on a
        connection that then dropped (a frozen replicator's, after its heartbeats stopped) is
        lost, and one the socket would not take (not connected) was never sent; waiting
        RESEND_AFTER_S for each made a replicator thawed after a 3-5 s freeze take up to 5.7 s
        to catch up. A probe is one record, so ten a second queue next to nothing."""
        probe = None if link.full or not link.known else self.window.read(link.sent, link.sent)
        if probe is None:
            link.progress_at = now
            link.sent = link.acked   # a full disk's probes, or the record left the window
            return
        link.stalled = True
        if self._append(link, link.sent, link.sent, probe[0]):
            link.progress_at = now   # (not sent: tried again on the next turn)

    def _pump(self, link: Link) -> None:
        """Send this replicator what it lacks, oldest first, within the in-flight limit."""
        top = self.next_seq - 1
        while link.known and link.sent < top and link.sent - link.acked < MAX_INFLIGHT:
            if link.full and (link.sent > link.acked or self.mono() < link.probe_at):
                return   # its disk is full: the next probe frame is not due
            if link.stalled and link.sent > link.acked:
                return   # the stall's probe is not answered yet
            # the backlog goes in runs; a full disk is probed with one frame (a run of 0 bytes)
            piece = self.window.run_from(link.sent + 1, 0 if link.full else RESEND_BYTES)
            if piece is None:
                if not link.behind:
                    log.warning("%s: %s is behind the resend window (at %d, window from %d); "
                                "its peers catch it up", self.stream, link.addr, link.sent,
                                self.window.lowest())
                link.behind = True
                link.known = False
                return
            link.behind = False
            first, last, frame = piece
            if not self._append(link, first, last, frame):
                return
            now = link.append_at
            if link.full:
                link.probe_at = now + FULL_PROBE_S
            if link.sent == link.acked:
                link.progress_at = now
            link.sent = last

    def _append(self, link: Link, first: int, last: int, frame: bytes) -> bool:
        """Send one APPEND of records first..last; False if the socket would not take it."""
        # A replicator takes min(commit, its last) as committed: name no seq beyond this
        # frame, which the APPEND checks (it may hold a stale tail beyond it).
        commit = min(self.committed, last)
        key = (self.epoch, first, last, commit)
        if key == self.append_key:   # the same frame to the next replicator: same header
            head = self.append_head
        else:
            fields = {"stream": self.stream, "epoch": self.epoch, "first": first,
                      "last": last, "commit": commit}
            if self.stamps_epochs:   # the records before `first` carry this log's epochs
                fields["prev_epoch"] = replication.epoch_at(self.history, first - 1)
                if self.need == 1:
                    # One replicator's copy commits a record of this master's epoch: the
                    # replicator may publish it itself (docs/log.md, "Fan-out from the
                    # replicators").
                    fields["fanout"] = True
            head = wire.pack(fields)
            self.append_key, self.append_head = key, head
        if not self._try_send(link, [wire.APPEND, head, frame]):
            return False
        link.commit_sent = max(link.commit_sent, commit)
        link.append_at = self.mono()
        return True

    # -- committing and forwarding ------------------------------------------------------------
    def _commit_frame(self, first: int, parts: list[bytes], acks: list, tag: str = "") -> None:
        """Frame first..next_seq-1 from parts: keep it for resends, replicate it, and queue
        it to be forwarded (and its producers acked) once committed."""
        frame = parts[0] if len(parts) == 1 else b"".join(parts)
        last = self.next_seq - 1
        self.window.add(first, last, frame, tag, keep_from=self.committed + 1)
        self.pending.append((first, last, frame, acks))
        self.pending_bytes += len(frame)
        self.stats["frames"] += 1
        self._note_activity()
        self._pump_all()

    def _note_activity(self) -> None:
        """Something was sequenced (idle Ticks are timed from here)."""
        self.last_activity_ns = int(self.mono() * 1e9)

    @property
    def uncommitted_bytes(self) -> int:
        return self.pending_bytes

    def _commit_point(self) -> int:
        # the policy's count of acks is worked out once (self.need), not every turn
        point = replication.held_by([lk.acked for lk in self.links if lk.known], self.need)
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
        if self.pending and self.pending[0][1] <= self.committed:
            self._forward_committed()
        now = self.mono()
        if now >= self.commit_note_at:
            self._note_commit(now)

    def _forward_committed(self) -> None:
        """Publish the pending frames up to the commit point, ack their producers."""
        acks_by: dict[tuple[bytes, int], list] = {}
        while self.pending and self.pending[0][1] <= self.committed:
            _first, _last, frame, acks = self.pending.popleft()
            self.pending_bytes -= len(frame)
            self._publish(frame)
            for ident, src, nxt, runs, dups in acks:
                self.durable_ss[src] = max(self.durable_ss.get(src, 1), nxt)
                entry = acks_by.get((ident, src))
                if entry is None:
                    entry = acks_by[(ident, src)] = [nxt, list(runs), []]
                else:   # extended in place: a frame of many batches is not quadratic
                    entry[0] = max(entry[0], nxt)
                    entry[1].extend(runs)
                if dups:
                    entry[2].append(dups)
        for (ident, src), (nxt, runs, dups) in acks_by.items():
            body = {"src": src, "next": nxt, "runs": runs}
            if dups:
                body["dups"] = dups
            self._reply(ident, wire.ACK, body)

    def _note_commit(self, now: float) -> None:
        """A COMMIT to each replicator that was not told the commit point (at most once in
        COMMIT_IDLE_S)."""
        # Replicators serve replay up to the commit point; tell them when it moved and no
        # APPEND carried it for COMMIT_IDLE_S (checked at most that often). While frames
        # flow, each APPEND carries the point (up to the frame before it), and a COMMIT
        # would only cost the replicator a transaction of its own ahead of the next APPEND.
        self.commit_note_at = now + COMMIT_IDLE_S
        # Each is told at most what it acknowledged of this master's log: beyond that it
        # may hold a stale tail whose TRUNCATE it never got, and it takes min(commit, its
        # last) as committed.
        for link in self.links:
            commit = min(self.committed, link.acked)
            if link.known and link.commit_sent < commit \
                    and now - link.append_at >= COMMIT_IDLE_S:
                key = (self.epoch, commit)
                if key != self.commit_key:   # every replicator is told the same, mostly
                    self.commit_key, self.commit_head = key, wire.pack(
                        {"stream": self.stream, "epoch": self.epoch, "commit": commit})
                if self._try_send(link, [wire.COMMIT, self.commit_head]):
                    link.commit_sent = commit

    def _all_replicated(self) -> bool:
        """Every known replicator holds everything and has been told it is committed."""
        top = self.next_seq - 1
        return not self.pending and self.committed >= top and all(
            lk.acked >= top and lk.commit_sent >= top for lk in self.links if lk.known)


class MasterShell:
    """The process around a master's decisions: the sockets, the loop, the drain on STOP.

    A role is a shell and a core: ``class Sequencer(MasterShell, SequencerCore)``. The shell
    implements the core's I/O hooks on ZeroMQ sockets and calls, each turn of its loop, the
    role's hooks: ``_sequence_waiting()`` (input on the producer socket), ``_take_sources()``
    (other input), ``tick_due(now_ns)`` / ``_emit_tick(now_ns)``, ``busy()``."""

    def _open_sockets(self, producer_bind: str, pub_bind: str) -> None:
        self.topic = self.stream.encode() + b"\0"
        self.ctx = zmq.Context.instance()
        self.router = sockets.router(producer_bind, heartbeat_ms=sockets.HEARTBEAT_MS)
        # Sends to a producer connection that is gone fail instead of vanishing: that is how
        # the master tells whether a source's owner is still alive.
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.pub = sockets.publisher(pub_bind)
        self.producer_endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        for link in self.links:
            link.sock = sockets.dealer(link.addr, immediate=True, sndhwm=10_000)
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        for link in self.links:
            self.poller.register(link.sock, zmq.POLLIN)
        self.running = True
        self.events: dict | None = None   # what the poller said this turn (None: not polled)
        self.drain_until = 0.0      # set by stop(): draining until this monotonic time

    def _sequence_waiting(self) -> None:
        self.sequence_turn(self._waiting())

    # -- I/O hooks ----------------------------------------------------------------------
    def _try_send(self, link: Link, msg: list[bytes]) -> bool:
        try:
            sockets.send_parts(link.sock, msg, sockets.NOBLOCK, len(msg[-1]) < ZERO_COPY_MIN)
            return True
        except zmq.Again:
            return False

    def _publish(self, frame: bytes) -> None:
        sockets.send_parts(self.pub, [self.topic, frame], 0, len(frame) < ZERO_COPY_MIN)

    def _reply(self, ident: bytes, kind: bytes, body: dict) -> None:
        try:
            sockets.send_parts(self.router, [ident, kind, wire.pack(body)], sockets.NOBLOCK)
        except zmq.ZMQError:
            pass  # full or gone: producers resend what stays unacknowledged

    def _peer_alive(self, ident: bytes) -> bool:
        try:
            sockets.send_parts(self.router, [ident, wire.PONG, wire.pack({"role": "sequencer"})],
                               sockets.NOBLOCK)
        except zmq.Again:
            return True   # connected, its queue is full
        except zmq.ZMQError:
            return False  # EHOSTUNREACH: no such connection any more
        return True

    # -- start-up -----------------------------------------------------------------------
    def recover(self, deadline_s: float = 60.0) -> None:
        """Take over the stream (mq.master: learn, claim an epoch above every epoch seen,
        adopt the best log, reconcile the others, read the tail the master needs)."""
        log.info("%s: taking over the stream from %d replicators", self.stream,
                 len(self.links))
        self.begin_recovery(deadline_s)
        while not self.recovery_step():
            if self.drain_until:
                raise RecoveryStopped(f"{self.stream}: stopped while taking over the stream")
            for sock, _ in self.poller.poll(20):
                for link in self.links:
                    if sock is link.sock:
                        self._on_replies(link)

    # -- the loop -----------------------------------------------------------------------
    def serve(self) -> None:
        log.info("%s: producers on %s, subscribers on %s, policy %s", self.stream,
                 self.producer_endpoint, self.pub_endpoint, self.policy)
        # A first record of this epoch at once: when it commits, so does the adopted tail.
        self._emit_tick(time.monotonic_ns())
        self._open_sources()
        while self.running:
            self.serve_turn()

    def serve_turn(self, max_wait_ms: int = 100) -> None:
        """One turn of the loop: wait (at most max_wait_ms) for input, take it, answer."""
        now_ns = time.monotonic_ns()
        wait_ms = (self.last_activity_ns + self.tick_interval_ns() - now_ns) // 1_000_000
        if wait_ms <= 0 and self.pending:
            wait_ms = 10  # a Tick is due but waits for the stream to commit
        self.events = events = dict(zmq.zmq_poll(
            self.poller.sockets, self.spin.timeout_ms(min(max(wait_ms, 0), max_wait_ms))))
        self.spin.polled(events)
        if self.router in events:
            if self.drain_until:
                self._answer_control_only()
            else:
                self._sequence_waiting()
        if not self.drain_until and not self.busy():
            self._take_sources()
        for link in self.links:
            if link.sock in events:
                self._on_replies(link)
        now_ns = time.monotonic_ns()
        if not self.drain_until and self.tick_due(now_ns):
            self._emit_tick(now_ns)
        self._pump_all()
        self._forward()
        if self.drain_until and (self._all_replicated() or time.monotonic() > self.drain_until):
            self.running = False

    def stop(self, timeout_s: float = 5.0) -> None:
        """Take no new input, wait (bounded) until every replicator holds everything, exit."""
        self.drain_until = time.monotonic() + timeout_s

    def _answer_control_only(self) -> None:
        """While draining, producers get no new seqs; they resend to the next master."""
        for ident, kind, msg in self._waiting():
            if kind in (wire.PING, wire.STOP):
                try:
                    self._control(ident, kind, wire.unpack(msg[2]))
                except wire.WireError as exc:
                    self._reply(ident, wire.ERROR, {"error": str(exc)})

    def _waiting(self) -> Any:
        """Up to MAX_DRAIN messages waiting on the producer socket, as (ident, kind, parts);
        messages too short to carry a kind are dropped."""
        for i in range(MAX_DRAIN):
            if i and not sockets.readable(self.router):
                return
            try:
                peer, msg = auth.recv_multipart(self.router, sockets.NOBLOCK)
            except zmq.Again:
                return
            if len(msg) >= 3:
                self.current_peer = peer  # the role checks of this message read it
                yield msg[0], msg[1], msg

    def _on_replies(self, link: Link) -> None:
        """Every reply waiting (called when the poller says the socket is readable)."""
        first = True
        while first or sockets.readable(link.sock):
            first = False
            try:
                msg = sockets.recv_parts(link.sock, sockets.NOBLOCK)
            except zmq.Again:
                return
            self._on_reply(link, msg)

    def close(self) -> None:
        for sock in [self.router, self.pub] + [lk.sock for lk in self.links]:
            sock.close(0)
