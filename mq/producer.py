"""Producer client: puts records into a stream, exactly once, across any failure of the master.

The caller numbers nothing: ``submit(kind, payloads)`` gives the payloads the next contiguous
source_seqs of this source and returns their range. Batches stay in the outbox until the
sequencer acknowledges them (after replication); ``poll`` returns the acknowledged runs as
``(ss_first, ss_last, seq_first)``, so the caller learns the seq of every record (or None for
records acknowledged by a master that no longer remembers their seqs).

Recovery: after a REFUSE (a gap: the master lost what was in flight, or restarted), after a
WELCOME, or when acknowledgements stall for ``resend_after_s``, the producer asks the master
where it stands and resends its outbox from there. The master drops what it already has, so
a resend never sequences a record twice.
"""
from __future__ import annotations

import time
import uuid
from collections import deque

import zmq

from mq import sockets, wire
from mq.record import encode, offset_of, pack


class Producer:
    def __init__(self, source: int, addr: str, max_inflight: int = 1 << 20,
                 resend_after_s: float = 1.0, next_ss: int | None = None):
        if not 0 < source < 1 << 32:
            raise ValueError("source must be in 1 .. 2**32-1 (0 is the sequencer's)")
        self.source = source
        self.addr = addr
        # A fixed identity for the socket's life: acks still reach it after a reconnect.
        self.sock = sockets.dealer(addr,
                                   routing_id=f"p{source}-{uuid.uuid4().hex[:12]}".encode())
        self.max_inflight = max_inflight
        self.resend_after_s = resend_after_s
        self.next_ss = next_ss          # next source_seq to assign (None until WELCOME)
        self.acked_next = next_ss or 1  # every source_seq below it is committed
        self.sent_upto = (next_ss or 1) - 1
        self.outbox: deque[tuple[int, int, bytes]] = deque()  # (ss_first, ss_last, batch)
        self.progress_at = time.monotonic()
        self.hello_at = 0.0
        self.rewound, self.rewound_at = 0, 0.0
        self.epoch = 0
        self.stats = {"sent_batches": 0, "resent_batches": 0, "refused": 0}

    def connect(self, timeout_s: float = 30.0) -> None:
        """Learn from the master where this source stands (blocks until it answers)."""
        deadline = time.monotonic() + timeout_s
        while self.next_ss is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no WELCOME from {self.addr}")
            self._hello()
            self.poll(200)

    def _hello(self) -> None:
        self.hello_at = time.monotonic()
        self.sock.send_multipart([wire.HELLO, wire.pack({"src": self.source})])

    def submit(self, kind: int, payloads: list[bytes]) -> tuple[int, int]:
        """Queue payloads as one batch; returns their (ss_first, ss_last)."""
        if self.next_ss is None:
            raise RuntimeError("connect() first: the producer does not know its position")
        first = self.next_ss
        batch = pack(self.source, first, kind, payloads)
        last = first + len(payloads) - 1
        self.next_ss = last + 1
        self.outbox.append((first, last, batch))
        self._pump()
        return first, last

    def submit_many(self, records: list[tuple[int, bytes]]) -> tuple[int, int]:
        """Queue (kind, payload) pairs of any kinds as one batch; returns their range."""
        if self.next_ss is None:
            raise RuntimeError("connect() first: the producer does not know its position")
        first = self.next_ss
        batch = encode([(0, 0, self.source, first + i, 0, kind, payload)
                        for i, (kind, payload) in enumerate(records)])
        last = first + len(records) - 1
        self.next_ss = last + 1
        self.outbox.append((first, last, batch))
        self._pump()
        return first, last

    @property
    def unacked(self) -> int:
        return (self.next_ss or self.acked_next) - self.acked_next

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
                self.sock.send_multipart([wire.DATA, b"\x80", batch], zmq.NOBLOCK,
                                         copy=len(batch) < 65536)
            except zmq.Again:
                return
            if self.sent_upto < self.acked_next:
                self.progress_at = time.monotonic()
            self.sent_upto = last
            self.stats["sent_batches"] += 1

    def poll(self, timeout_ms: int = 0) -> list[tuple[int, int, int | None]]:
        """Handle what the master sent; return the runs acknowledged since the last call."""
        acked: list[tuple[int, int, int | None]] = []
        if self.sock.poll(timeout_ms):
            while True:
                try:
                    msg = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_message(msg, acked)
        now = time.monotonic()
        if (self.outbox and now - self.progress_at > self.resend_after_s
                and now - self.hello_at > self.resend_after_s):
            self._hello()  # acknowledgements stalled: ask where the master stands
        self._pump()
        return acked

    def _on_message(self, msg: list[bytes], acked: list) -> None:
        if len(msg) < 2:
            return
        body = wire.unpack(msg[1])
        if body.get("src") != self.source:
            return
        kind = msg[0]
        if kind == wire.ACK:
            self._acknowledge(body["next"])
            acked.extend((a, b, s) for a, b, s in body["runs"])
        elif kind in (wire.WELCOME, wire.REFUSE):
            nxt = body["next"]
            if kind == wire.WELCOME:
                self.epoch = body["epoch"]
                self._acknowledge(body["durable"])
                if self.next_ss is None:
                    self.next_ss = nxt
                    self.acked_next = body["durable"]
            else:
                self.stats["refused"] += 1
            if nxt > (self.next_ss or 1):
                raise RuntimeError(f"source {self.source}: the master expects {nxt}, beyond "
                                   f"{self.next_ss}: another producer uses this source id")
            now = time.monotonic()
            # Several in-flight batches past a gap are each refused with the same number:
            # rewind once for them, not once each.
            if self.sent_upto != nxt - 1 and (self.rewound != nxt
                                              or now - self.rewound_at > self.resend_after_s):
                self.stats["resent_batches"] += 1
                self.sent_upto = max(nxt, self.acked_next) - 1
                self.rewound, self.rewound_at = nxt, now
            self.progress_at = now

    def _acknowledge(self, nxt: int) -> None:
        if nxt <= self.acked_next:
            return
        self.acked_next = nxt
        self.progress_at = time.monotonic()
        while self.outbox and self.outbox[0][1] < nxt:
            self.outbox.popleft()
        if self.outbox and self.outbox[0][0] < nxt:
            first, last, batch = self.outbox.popleft()
            self.outbox.appendleft((nxt, last, batch[offset_of(batch, nxt - first):]))
        if self.sent_upto < nxt - 1:
            self.sent_upto = nxt - 1

    def flush(self, timeout_s: float = 30.0) -> list[tuple[int, int, int | None]]:
        """Wait until everything submitted is acknowledged."""
        deadline = time.monotonic() + timeout_s
        acked = []
        while self.outbox:
            if time.monotonic() > deadline:
                raise TimeoutError(f"source {self.source}: {self.unacked} records unacknowledged")
            acked.extend(self.poll(50))
        return acked

    def close(self) -> None:
        self.sock.close(0)
