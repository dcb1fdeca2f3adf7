"""MqCore: the gateway's Core (gateway/server.py) over mq/ streams.

Per shard N:
* a Producer into `in.te.N` with source id `0x7200_0000 | g` (docs/order-path.md §2): every
  record the gateway sends, exactly once, in send order;
* a Subscriber of `out.te.N` from seq 1 (or from where the gateway's index file left off,
  resume_at), replaying from the replicators and then live: every output record, in order,
  handed to the callback (the session journal is rebuilt from it).

depth(N) is the number of records this gateway submitted to `in.te.N` that it has not yet seen
applied in `out.te.N`. An output record carries its input record's source and source_seq in
its header, and a source's records are sequenced in source_seq order, so "applied" is simply
the highest source_seq of this gateway's source seen in the output (records an earlier
incarnation of the gateway sent are not counted).

Everything runs on the asyncio loop: one task handles the zmq sockets without blocking. It
sleeps until one of them has something (the loop watches each socket's ZMQ_FD) or
TIMER_S has passed (the producers' stall probes and the subscribers' replay timeouts are
checked that often), so an out.te.N record is handed on as soon as it arrives, and an idle
gateway does not wake up a thousand times a second. The records sent in one turn of the loop
go to the sequencer as one batch; the producer's submit never blocks the loop: a full outbox
makes send() wait asynchronously.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import zmq

from gateway.aio import stop_task

log = logging.getLogger("seqex.gateway.mq")

TIMER_S = 0.02       # nothing arrived for this long: run the timers (probes, timeouts)
BACKPRESSURE_SLEEP_S = 0.01
MAX_BATCH = 1024      # records per producer batch (each well under 1 kB)
MAX_QUEUED = 65536    # records per shard waiting for the producer's outbox
CONNECT_TIMEOUT_S = 60.0
CLASH_NOTE_S = 10.0        # a source held by another connection: noted this often


def gateway_source(index: int) -> int:
    """The source id of gateway `index` in every in.te.N."""
    from gateway.server import GATEWAY_SOURCE_BASE
    return GATEWAY_SOURCE_BASE | index


class MqCore:
    """shards: one dict per shard N: {"in": producer endpoint of in.te.N's sequencer,
    "pub": out.te.N's live feed, "replicators": [endpoints holding out.te.N]}; optional
    "out_stream" / "in_stream" override the stream names (tests)."""

    def __init__(self, index: int, shards: list[dict]):
        if not shards:
            raise ValueError("a gateway needs at least one shard")
        self.index = index
        self.source = gateway_source(index)
        self.shards = shards
        self.n_shards = len(shards)
        self.producers: list = []
        self.subscribers: list = []
        self.callbacks: list[Callable[[int, int, int, bytes], None]] = []
        self.first_ss = [1] * self.n_shards      # first source_seq of this incarnation
        self.submitted = [0] * self.n_shards     # last source_seq submitted
        self.seen = [0] * self.n_shards          # last source_seq of ours seen applied
        self.outq: list[list] = [[] for _ in shards]  # (kind, payload) not yet submitted
        self.flush_soon = False
        self.task: asyncio.Task | None = None
        self.stats = {"records_out": 0, "records_in": 0, "backpressure_waits": 0}
        self.read_order: dict[int, list[str]] = {}  # per shard, its replicators, best first
        self.next_seqs = [1] * self.n_shards     # where each out.te.N subscription starts

    def subscribe(self, callback: Callable[[int, int, int, bytes], None]) -> None:
        self.callbacks.append(callback)

    async def fetch(self, shard: int, seqs: list[int]) -> dict[int, bytes]:
        """The payloads of these out.te.N records, read back from its replicators (in a worker
        thread: a replay is blocking REQ/REP), each run of nearby seqs in one REPLAY; the
        replicator that answered last is asked first (one frozen replicator cost every read
        its whole timeout)."""
        sh = self.shards[shard]
        reps = self.read_order.setdefault(shard, list(sh["replicators"]))
        return await asyncio.get_running_loop().run_in_executor(
            None, read_back, reps, sh.get("out_stream", f"out.te.{shard}"), sorted(seqs))

    def resume_at(self, shard: int, next_seq: int) -> None:
        """Before start(): out.te.<shard> is read from next_seq (the gateway's index file
        covers the records before it)."""
        self.next_seqs[shard] = next_seq

    async def stamp(self, shard: int, seq: int) -> int | None:
        """The ts_ns of out.te.<shard> record seq, None if no replicator holds it; raises if
        none answers."""
        sh = self.shards[shard]
        got = await asyncio.get_running_loop().run_in_executor(
            None, read_back, list(sh["replicators"]), sh.get("out_stream", f"out.te.{shard}"),
            [seq], True)
        return got.get(seq)

    async def start(self) -> None:
        from mq.producer import Producer
        from mq.subscriber import Subscriber
        loop = asyncio.get_running_loop()
        for n, sh in enumerate(self.shards):
            p = Producer(self.source, sh["in"], keep_results=0)   # it polls
            deadline = loop.time() + CONNECT_TIMEOUT_S
            noted = 0.0
            while p.next_ss is None:  # WELCOME: where this source stands
                clash = any(r.code == "source_clash" for r in p.refusals)
                if loop.time() > deadline:
                    raise TimeoutError(
                        f"in.te.{n}: the sequencer at {sh['in']} "
                        + (f"says source {self.source:#x} (gateway {self.source & 0xFFFF}) is "
                           "held by another connection: is another gateway with this index "
                           "running?" if clash else "does not answer"))
                if clash and loop.time() - noted >= CLASH_NOTE_S:
                    noted = loop.time()
                    log.warning("in.te.%d: source %#x is held by another connection (another "
                                "gateway with index %d, or one that just stopped); waiting "
                                "up to %.0f s more", n, self.source, self.source & 0xFFFF,
                                deadline - loop.time())
                try:
                    p.connect(timeout_s=0.01)
                except TimeoutError:
                    await asyncio.sleep(0.05)
            self.producers.append(p)
            self.first_ss[n] = p.next_ss
            self.submitted[n] = self.seen[n] = p.next_ss - 1
            self.subscribers.append(Subscriber(sh.get("out_stream", f"out.te.{n}"), sh["pub"],
                                               list(sh["replicators"]),
                                               next_seq=self.next_seqs[n]))
        self.task = loop.create_task(self._poll())

    async def close(self) -> None:
        await stop_task(self.task, "the gateway core's socket loop")
        self.task = None
        self._flush()
        for p in self.producers:
            try:
                p.flush(timeout_s=2.0)
            except Exception as exc:  # the records stay unsent: the engines end it anyway
                log.warning("producer %x: %s", self.source, exc)
            p.close()
        for s in self.subscribers:
            s.close()
        self.producers.clear()
        self.subscribers.clear()

    async def send(self, shard: int, kind: int, payload: bytes) -> None:
        """Queue the record; the records queued in one turn of the loop go to the sequencer as
        one batch (in order). Waits while MAX_QUEUED records are still unsubmitted."""
        q = self.outq[shard]
        while len(q) >= MAX_QUEUED:
            self.stats["backpressure_waits"] += 1
            await asyncio.sleep(BACKPRESSURE_SLEEP_S)
        q.append((kind, bytes(payload)))
        self.stats["records_out"] += 1
        if not self.flush_soon:
            self.flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        from mq.producer import Backpressure
        self.flush_soon = False
        if not self.producers:
            return
        for n, q in enumerate(self.outq):
            while q:
                chunk = q[:MAX_BATCH]
                try:
                    _first, last = self.producers[n].submit_many(chunk, block_s=0)
                except Backpressure:
                    break  # the outbox is full: the poll task tries again
                del q[:len(chunk)]
                self.submitted[n] = last

    def depth(self, shard: int) -> int:
        return max(0, self.submitted[shard] + len(self.outq[shard]) - self.seen[shard])

    def _sockets(self) -> list[zmq.Socket]:
        return [p.sock for p in self.producers] + [sock for s in self.subscribers
                                                    for sock in s.sockets()]

    async def _poll(self) -> None:
        """Handle the sockets whenever one of them may have something (gateway/zwait.py),
        at the latest every TIMER_S."""
        from gateway.zwait import SocketWaiter
        waiter = SocketWaiter(self._sockets())
        try:
            while True:
                if self._turn():
                    await asyncio.sleep(0)   # more may follow: let the connections run first
                else:
                    await waiter.wait(TIMER_S)
        finally:
            waiter.close()

    def _turn(self) -> bool:
        """One pass over the outboxes and sockets; True if an out.te.N record came in."""
        from mq.producer import Refused
        from mq.record import decode
        source = self.source
        busy = False
        if any(self.outq):
            self._flush()
        for n in range(self.n_shards):
            try:
                self.producers[n].poll(0)
            except Refused as exc:
                log.error("in.te.%d: %s", n, exc)
            for _first, _last, frame in self.subscribers[n].poll(0):
                busy = True
                for rec in decode(frame):
                    seq, ts_ns, src, src_seq = rec[0], rec[1], rec[2], rec[3]
                    if src == source and src_seq > self.seen[n]:
                        self.seen[n] = src_seq
                    self.stats["records_in"] += 1
                    for cb in self.callbacks:
                        try:
                            cb(n, seq, ts_ns, rec[6])
                        except Exception:  # a bug in the consumer; the stream goes on
                            log.exception("out.te.%d seq %d: callback failed", n, seq)
        return busy


READ_BACK_GAP = 64         # seqs this close together are read in one REPLAY
READ_BACK_TIMEOUT_S = 5.0  # for the whole read: every replicator tried, a record not yet served
READ_BACK_TRY_S = 1.5      # for one replicator's answer to one REPLAY


def read_back(replicators: list[str], stream: str, seqs: list[int],
              stamps: bool = False) -> dict[int, bytes]:
    """{seq: payload} (with stamps: {seq: ts_ns}) of the records ``seqs`` (ascending) of a
    stream, within
    READ_BACK_TIMEOUT_S. Each REPLAY goes to the first of ``replicators``; one that fails or is
    silent for READ_BACK_TRY_S goes to the end of that list (the caller's: the order is kept
    for the next read) and the next is asked. A replicator serves what it knows committed,
    and learns the commit point a moment after the fan-out: a record just seen may not be
    served yet, so the missing ones are asked for again. Raises the last error if no replicator
    answered in time; otherwise what is still missing at the deadline is absent from the
    result."""
    from mq.control import replay
    from mq.record import decode
    want = set(seqs)
    got: dict[int, bytes] = {}
    deadline = time.monotonic() + READ_BACK_TIMEOUT_S
    while True:
        runs: list[list[int]] = []
        for s in sorted(want - got.keys()):
            if runs and s - runs[-1][1] <= READ_BACK_GAP:
                runs[-1][1] = s
            else:
                runs.append([s, s])
        if not runs:
            return got
        for lo, hi in runs:
            error: Exception | None = None
            answered = False
            for rep in list(replicators):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    for frame in replay(rep, stream, lo, hi,
                                        timeout_s=min(READ_BACK_TRY_S, left)):
                        for r in decode(frame):
                            if r[0] in want:
                                got[r[0]] = r[1] if stamps else r[6]
                    answered = True
                except (TimeoutError, RuntimeError, ValueError) as exc:
                    error = exc
                    if rep in replicators:        # asked last from now on
                        replicators.remove(rep)
                        replicators.append(rep)
                    continue
                if all(s in got for s in want if lo <= s <= hi):
                    break     # (else one behind the others: the next may hold them)
            if not answered and error is not None:
                raise error
        if time.monotonic() > deadline:
            return got
        if len(got) < len(want):
            time.sleep(0.02)
