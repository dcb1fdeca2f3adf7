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
* a frame that starts beyond the next seq waits (bounded) until some replica produces the
  missing seqs;
* ack policy "none" keeps no replicas of the stream: its content can be recomputed from the
  input stream. Such a mirror starts at the seq it is given (``from_seq``, default 1) and
  holds what arrives beyond it; the supervisor passes the engine's input position when it
  restarts one.
The mirror stamps nothing: its records are the engines' bytes, so copies compare exactly.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Any

from mq import auth, wire
from mq.record import FrameError, decode, scan, trim
from mq.sequencer import POLICIES, Sequencer, run

log = logging.getLogger("seqex.mirror")

MAX_HELD_BYTES = 64 << 20   # frames waiting for an earlier gap to fill


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
        self.held_bytes = 0
        self.alarms: deque[dict] = deque(maxlen=100)
        self.stats.update({"accepted": 0, "copies_compared": 0, "divergences": 0,
                           "held_frames": 0, "dropped_held": 0})

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
        for ident, kind, msg in self._waiting():
            try:
                body = wire.unpack(msg[2])
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

    def _accept(self, ident: bytes, replica: str, frame: bytes) -> None:
        _n, first, last = scan(frame)
        nxt = self.next_seq
        if first < nxt:
            upto = min(last, nxt - 1)
            self._compare(first, upto, trim(frame, first, first, upto), replica)
            if last < nxt:
                self._reply(ident, wire.ACK, {"src": 0, "next": self.committed + 1, "runs": []})
                return
            frame, first = trim(frame, first, nxt), nxt
        if first > nxt:
            self._hold(first, last, frame, replica, ident)
            return
        self._take(first, last, frame, replica, ident)
        self._release_held()

    def _release_held(self) -> None:
        """Take held frames that now start at or below the next seq, lowest first."""
        while self.held:
            f = min(self.held)
            if f > self.next_seq:
                return
            _last, frame, replica, ident = self.held.pop(f)
            self.held_bytes -= len(frame)
            self._accept(ident, replica, frame)

    def _take(self, first: int, last: int, frame: bytes, replica: str, ident: bytes) -> None:
        self.next_seq = last + 1
        self.stats["accepted"] += last - first + 1
        self._commit_frame(first, [frame], [(ident, 0, last + 1, [])], tag=replica)

    def _hold(self, first: int, last: int, frame: bytes, replica: str, ident: bytes) -> None:
        if first in self.held or self.held_bytes + len(frame) > MAX_HELD_BYTES:
            self.stats["dropped_held"] += 1
            return
        self.held[first] = (last, frame, replica, ident)
        self.held_bytes += len(frame)
        self.stats["held_frames"] += 1

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
        return {**super().status(), "role": "mirror", "alarms": list(self.alarms)}


def main(stream: str, inputs_bind: str, pub_bind: str, replicators: list[str],
         policy: str = "none", from_seq: int = 1) -> None:
    run(Mirror(stream, inputs_bind, pub_bind, replicators, policy, from_seq=from_seq), "mirror")
