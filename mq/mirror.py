"""The mirror master of an out.* stream (Phemex's RespMQ): one output record per engine input.

Inputs: frames from the hot replicas of one engine, on a ROUTER socket, as
``[DATA, {replica: name}, frame]``. Each record's seq is the seq of the input record that
produced it, so the out stream is gapless. Outputs: committed frames on PUB, APPENDs to the
replicators (unless the ack policy is "none"), ACK {next} to the replicas.

Rules:
* the first copy of each seq wins and is forwarded, in seq order;
* every later copy is compared byte for byte with the accepted one; a difference is a
  divergence alarm naming the seq, the replica whose copy stands and the one that differs
  (the engines are deterministic, so it means a bug or a corrupted replica);
* every DATA is answered with ACK {src: 0, next, committed, gap}: ``next`` is the first seq
  the mirror lacks, ``gap`` says that the frame lay (partly) beyond it. The mirror asks for
  what it misses this way: a hot replica told of a gap rewinds to ``next`` and resends its
  kept outputs from there, in order (mq/replica.py). A replica's HELLO {replica} is answered
  with the same ACK, so a replica learns of a restarted mirror that lacks its last outputs
  even when no new input arrives;
* a frame that starts beyond the next seq is held until the gap before it fills, released by
  a loop (never by recursion), within MAX_HELD_FRAMES and MAX_HELD_BYTES; a frame that does
  not fit is dropped and comes again with the replica's resend. While it has a gap the mirror
  logs, every NOTE_EVERY_S, that it is behind, from which seq, and why; and when it heals;
* ack policy "none" keeps no replicas of the stream: its content can be recomputed from the
  input stream. Such a mirror starts at the seq it is given (``from_seq``, default 1) and
  holds what arrives beyond it; the supervisor passes the engine's input position when it
  restarts one.
The mirror stamps nothing: its records are the engines' bytes, so copies compare exactly.
"""
from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from typing import Any

from mq import auth, wire
from mq.record import FrameError, decode, scan, trim
from mq.sequencer import POLICIES, Sequencer, run

log = logging.getLogger("seqex.mirror")

MAX_HELD_BYTES = 64 << 20   # frames waiting for an earlier gap to fill, in bytes
MAX_HELD_FRAMES = 65_536    # ... and in frames
NOTE_EVERY_S = 5.0          # a lasting condition is logged at most this often


class Mirror(Sequencer):
    policies = POLICIES + ("none",)
    # its records keep the epochs their engine copied from the input stream, so the APPENDs
    # cannot name the epoch before them; copies are compared byte for byte instead
    stamps_epochs = False

    def __init__(self, stream: str, inputs_bind: str, pub_bind: str, replicators: list[str],
                 policy: str = "none", window_bytes: int = 256 << 20, from_seq: int = 1):
        super().__init__(stream, inputs_bind, pub_bind, replicators, policy, tick_ms=1,
                         window_bytes=window_bytes)
        self.tick_ns = 1 << 62          # a mirror never ticks: its seqs are its input's
        self.from_seq = from_seq
        self.held: dict[int, tuple[int, bytes, str, bytes]] = {}  # first -> (last, frame, ...)
        self.held_firsts: list[int] = []    # a heap of the keys of held
        self.held_bytes = 0
        self.behind_since = 0.0             # monotonic time the out stream found a gap; 0: none
        self.behind_note_at = 0.0
        self.full_note_at = 0.0
        self.alarms: deque[dict] = deque(maxlen=100)
        self.heads: dict[bytes, dict] = {}  # DATA head bytes -> decoded (read only)
        self.stats.update({"accepted": 0, "copies_compared": 0, "divergences": 0,
                           "held_frames": 0, "dropped_held": 0,
                           "held_duplicates": 0, "gaps_reported": 0})

    def recover(self, deadline_s: float = 60.0) -> None:
        if self.policy == "none":
            self.epoch = 1
            self.next_seq = self.first_own_seq = self.from_seq
            self.committed = self.from_seq - 1
            return
        super().recover(deadline_s)

    def _emit_tick(self, now_ns: int) -> None:
        self.last_activity_ns = now_ns

    def _commit_point(self) -> int:
        if self.policy == "none":
            return self.next_seq - 1
        return super()._commit_point()

    # -- input ------------------------------------------------------------------------------
    def _sequence_waiting(self) -> None:
        heads = self.heads
        for ident, kind, msg in self._waiting():
            try:
                # a replica sends the same head ({replica}) with every DATA: decoded once
                body = heads.get(msg[2]) if kind == wire.DATA else None
                if body is None:
                    body = wire.unpack(msg[2])
                    if kind == wire.DATA:
                        if len(heads) >= 64:
                            heads.clear()
                        heads[msg[2]] = body
                if kind == wire.DATA and len(msg) == 4:
                    if self._refused(ident, auth.feed_refusal(self.current_peer, self.stream),
                                     "DATA"):
                        continue
                    name = auth.peer_name(self.current_peer) or body.get("replica")
                    self._accept(ident, str(name)[:64] if name else ident.hex(), msg[3])
                else:
                    self._control(ident, kind, body)
            except (FrameError, wire.WireError) as exc:
                self.stats["bad_batches"] += 1
                self._reply(ident, wire.ERROR, {"error": str(exc)})

    def _control(self, ident: bytes, kind: bytes, body: dict) -> None:
        if kind == wire.HELLO and "replica" in body:
            # A replica's probe: where does the out stream stand?
            self._reply(ident, wire.ACK, self._position(gap=False))
        else:
            super()._control(ident, kind, body)

    def _position(self, gap: bool) -> dict[str, Any]:
        return {"src": 0, "next": self.next_seq, "committed": self.committed, "gap": gap}

    def _accept(self, ident: bytes, replica: str, frame: bytes) -> None:
        """Place one frame from a replica, take whatever held frames it unblocks, and tell
        the replica where the out stream stands (with gap set if it must resend)."""
        _n, first, last = scan(frame)
        self._place(ident, replica, frame, first, last)
        self._release_held()
        gap = self.next_seq <= last      # part of this frame lies beyond a missing range
        if gap:
            self._note_behind(replica, first)
        elif self.behind_since and not self.held:
            log.warning("%s: caught up: contiguous again at seq %d after %.1f s",
                        self.stream, self.next_seq - 1, time.monotonic() - self.behind_since)
            self.behind_since = 0.0
        self._reply(ident, wire.ACK, self._position(gap))

    def _place(self, ident: bytes, replica: str, frame: bytes, first: int, last: int) -> None:
        """Compare what the out stream already has, take what continues it, hold the rest.
        Never calls itself or _release_held: a held frame is placed by the release loop."""
        nxt = self.next_seq
        if first < nxt:
            upto = min(last, nxt - 1)
            self._compare(first, upto, trim(frame, first, first, upto), replica)
            if last < nxt:
                return
            frame, first = trim(frame, first, nxt), nxt
        if first > nxt:
            self._hold(first, last, frame, replica, ident)
            return
        self._take(first, last, frame, replica, ident)

    def _release_held(self) -> None:
        """Place held frames that now start at or below the next seq, lowest first: a loop,
        so that any number of held frames is released with a flat stack."""
        heap = self.held_firsts
        while heap and heap[0] <= self.next_seq:
            f = heapq.heappop(heap)
            last, frame, replica, ident = self.held.pop(f)
            self.held_bytes -= len(frame)
            self._place(ident, replica, frame, f, last)

    def _take(self, first: int, last: int, frame: bytes, replica: str, ident: bytes) -> None:
        self.next_seq = last + 1
        self.stats["accepted"] += last - first + 1
        self._commit_frame(first, [frame], [], tag=replica)

    def _hold(self, first: int, last: int, frame: bytes, replica: str, ident: bytes) -> None:
        """Keep a frame that starts beyond the next seq until the gap before it fills.
        Bounded: a frame that does not fit (MAX_HELD_FRAMES, MAX_HELD_BYTES) is dropped. Nothing
        is lost by that: the sender is told about the gap, rewinds to the mirror's next seq and
        resends everything from there in order, the dropped frame included."""
        if first in self.held:
            self.stats["held_duplicates"] += 1   # the same seqs from another replica
            return
        if (len(self.held) >= MAX_HELD_FRAMES
                or self.held_bytes + len(frame) > MAX_HELD_BYTES):
            self.stats["dropped_held"] += 1
            now = time.monotonic()
            if now >= self.full_note_at:
                self.full_note_at = now + NOTE_EVERY_S
                log.warning("%s: held frames at their bound (%d frames, %d bytes): dropping "
                            "frames beyond seq %d until the replicas resend from there",
                            self.stream, len(self.held), self.held_bytes, self.next_seq)
            return
        self.held[first] = (last, frame, replica, ident)
        heapq.heappush(self.held_firsts, first)
        self.held_bytes += len(frame)
        self.stats["held_frames"] += 1

    def _note_behind(self, replica: str, first: int) -> None:
        now = time.monotonic()
        if not self.behind_since:
            self.behind_since = now
        self.stats["gaps_reported"] += 1
        if now >= self.behind_note_at:
            self.behind_note_at = now + NOTE_EVERY_S
            log.warning("%s: behind for %.1f s: missing seq %d onwards (a frame from %s starts "
                        "at %d: frames were lost in transport or with a restarted mirror); "
                        "holding %d frames (%d bytes); asking the replicas to resend from %d",
                        self.stream, now - self.behind_since, self.next_seq, replica, first,
                        len(self.held), self.held_bytes, self.next_seq)

    def _compare(self, first: int, upto: int, theirs: bytes, replica: str) -> None:
        accepted = self.window.read(first, upto)
        if accepted is None:
            return  # older than the window: nothing left to compare with
        mine, tags = accepted
        self.stats["copies_compared"] += upto - first + 1
        if mine == theirs:
            return
        seq = next((a[0] for a, b in zip(decode(mine), decode(theirs), strict=False) if a != b),
                   first)
        alarm = {"seq": seq, "first_copy": tags[0] if tags else "?", "divergent": replica}
        self.alarms.append(alarm)
        self.stats["divergences"] += 1
        log.error("%s: DIVERGENCE at seq %d: %s differs from the first copy, by %s; the first "
                  "copy stands", self.stream, seq, replica, alarm["first_copy"])

    def status(self) -> dict[str, Any]:
        behind = time.monotonic() - self.behind_since if self.behind_since else 0.0
        return {**super().status(), "role": "mirror", "alarms": list(self.alarms),
                "held_now": len(self.held), "held_bytes": self.held_bytes,
                "behind_s": round(behind, 3)}


def main(stream: str, inputs_bind: str, pub_bind: str, replicators: list[str],
         policy: str = "none", from_seq: int = 1) -> None:
    run(Mirror(stream, inputs_bind, pub_bind, replicators, policy, from_seq=from_seq), "mirror")
