"""Instructions per record of the log's masters (sequencer, mirror), under callgrind.

Method. Wall-clock figures on a shared VM move by ±20% between runs; instruction counts do
not. This script runs the real master process objects (mq.sequencer.Sequencer, mq.mirror.Mirror:
the shell with its ZeroMQ sockets and the core) in this one process, over inproc sockets, and
plays every peer itself: three replicators (ROUTERs that answer each APPEND with APPENDED ok,
as replicator/server.py does), the producers (sequencer: DEALERs sending DATA batches of one
record) or two hot replicas (mirror: DEALERs sending the same output frame each, the second
copy compared), and a subscriber of the PUB socket. Each turn of the master is one call of
``serve_turn(0)``, the body of its loop. Time is the master's injected ``mono``, stepped by the
script, so that what is sent when (COMMITs after COMMIT_IDLE_S) does not depend on the speed
of the run; Ticks are off. Ack policy quorum for the sequencer (in.*), first for the mirror
(out.*), as in the default topology.

The pattern of one record ("1k/s": every record travels alone, as at 1,000 orders/s):
  the record arrives (mirror: from each of the two replicas in turn) -> a turn each; each of
  the three replicators acknowledges in turn -> a turn each (the second commits it: publish,
  ACK to the producer); 10 ms later -> a turn (the COMMIT to the replicators).
With ``--batch K`` K records arrive before one turn, and the replicators acknowledge the frame.

Only the master's turns are counted: each goes through ``operator.call`` (a C function), and
callgrind collects inside it alone (``--toggle-collect=_operator_call``); the peers' socket
calls, the setup and the imports are not counted.

A run sets the master up, takes it over (no recovery: epoch 1, every replicator reconciled at
seq 0), sends --warm records, then --records more (``--measure 1``) or none (``--measure 0``);
every message of the peers is built before the measured part, in both runs. The difference of
the two totals divided by --records is the instructions per record: the master's work and its
socket calls.

Run both roles both ways and print the table (needs valgrind):
    python bench/count_master.py --report
One measurement (PYTHONHASHSEED=0, the interpreter itself):
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        --toggle-collect=_operator_call $PY bench/count_master.py --role sequencer --measure 1 \\
        2>&1 | grep Collected
Without valgrind the script checks the commit point and prints a hash of what was published
(every record but its time).
"""
from __future__ import annotations

import argparse
import hashlib
import operator
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zmq  # noqa: E402

from bench.callgrind import collected  # noqa: E402
from mq import wire  # noqa: E402
from mq.record import decode, encode, pack  # noqa: E402

STREAMS = {"sequencer": "in.bench", "mirror": "out.bench"}
# every turn of the master goes through this C function, so that callgrind can count the
# master's own instructions apart from the peers' (--toggle-collect, the "master" column)
turn = operator.call
SOURCE = 7


def ready(sock: zmq.Socket) -> bool:
    return bool(zmq.zmq_poll([(sock, 1)], 0))


class Clock:
    """The master's monotonic time (seconds), moved by the script."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Bench:
    def __init__(self, role: str, tag: str):
        self.role = role
        self.stream = STREAMS[role]
        self.clock = Clock()
        ctx = zmq.Context.instance()
        base = f"inproc://count-master-{tag}"
        self.reps = []
        for i in range(3):
            r = ctx.socket(zmq.ROUTER)
            r.bind(f"{base}-r{i}")
            self.reps.append(r)
        addrs = [f"{base}-r{i}" for i in range(3)]
        if role == "sequencer":
            from mq.sequencer import Sequencer
            self.m = Sequencer(self.stream, f"{base}-in", f"{base}-pub", addrs, "quorum",
                               tick_ms=10**9)
        else:
            from mq.mirror import Mirror
            self.m = Mirror(self.stream, f"{base}-in", f"{base}-pub", addrs, "first")
        m = self.m
        m.mono = self.clock
        m.tick_ns = 1 << 62
        # taken over: epoch 1, every replicator reconciled with an empty log
        m.recovery = None
        m.epoch = 1
        m.history = [(1, 1)]
        m.next_seq = m.first_own_seq = 1
        for link in m.links:
            link.known = True
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.connect(f"{base}-pub")
        self.ins = []
        for i in range(2 if role == "mirror" else 1):
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.ROUTING_ID, f"in{i}".encode())
            d.connect(f"{base}-in")
            self.ins.append(d)
        self.n = 0          # records generated
        self.ss = 1
        self.digest = hashlib.sha256()
        self.published = 0
        self.acks = 0

    def messages(self, count: int) -> list[list[bytes]]:
        """The input messages of the next `count` records (one record each)."""
        out = []
        for _ in range(count):
            self.n += 1
            payload = b"o" * 48 + self.n.to_bytes(8, "little")
            if self.role == "sequencer":
                out.append([wire.DATA, b"\x80", pack(SOURCE, self.ss, 32, [payload])])
                self.ss += 1
            else:
                out.append([wire.DATA, None, encode(
                    [(self.n, 10**18 + self.n, 3, self.n, 1, 40, payload)])])
        return out

    def send_inputs(self, msgs: list[list[bytes]], copy: int) -> None:
        d = self.ins[copy]
        for msg in msgs:
            if msg[1] is None:
                msg = [msg[0], wire.pack({"replica": f"replica{copy}"}), msg[2]]
            d.send_multipart(msg)

    def replicator_turns(self) -> None:
        """Each replicator in turn takes what came and acknowledges it; a turn after each."""
        for r in self.reps:
            last = 0
            while ready(r):
                ident, kind, *rest = r.recv_multipart()
                if kind == wire.APPEND:
                    last = wire.unpack(rest[0])["last"]
            if last:
                r.send_multipart([ident, wire.APPENDED, wire.pack(
                    {"stream": self.stream, "last": last, "epoch": 1, "ok": True})])
                self.clock.t += 0.0003
                turn(self.m.serve_turn, 0)

    def drain(self) -> None:
        for r in self.reps:       # COMMITs
            while ready(r):
                r.recv_multipart()
        while ready(self.sub):
            _topic, frame = self.sub.recv_multipart()
            self.published += 1
            for rec in decode(frame):   # all but the time, which is the wall clock's
                self.digest.update(repr(rec[:1] + rec[2:]).encode())
        for d in self.ins:
            while ready(d):
                d.recv_multipart()
                self.acks += 1

    def step(self, msgs: list[list[bytes]]) -> None:
        """The records of msgs arrive together (one record alone: the 1k/s pattern)."""
        for copy in range(len(self.ins)):
            self.send_inputs(msgs, copy)
            self.clock.t += 0.0002
            turn(self.m.serve_turn, 0)
        self.replicator_turns()
        self.clock.t += 0.010
        turn(self.m.serve_turn, 0)
        self.drain()


def run(role: str, records: int, batch: int, warm: int, measure: int) -> Bench:
    b = Bench(role, f"{role}-{batch}")
    warm_msgs = [b.messages(batch) for _ in range(warm // batch)]
    msgs = [b.messages(batch) for _ in range(records // batch)]
    for m in warm_msgs:
        b.step(m)
    if measure:
        for m in msgs:
            b.step(m)
    return b


def report(records: int, warm: int) -> None:
    for role, batch in (("sequencer", 1), ("mirror", 1), ("sequencer", 16), ("mirror", 16)):
        got = []
        for measure in (0, 1):
            n, out = collected(__file__, ["--role", role, "--batch", str(batch), "--records",
                                          str(records), "--warm", str(warm), "--measure",
                                          str(measure)], ("--toggle-collect=_operator_call",))
            got.append(n)
        digest = re.search(r"sha256 (\w+)", out)
        print(f"[instructions] {role} batch {batch}: {(got[1] - got[0]) / records:,.0f} per "
              f"record in the master's turns ({records:,} records, callgrind); published "
              f"sha256 {digest.group(1) if digest else '?'}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=sorted(STREAMS), default="sequencer")
    ap.add_argument("--records", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warm", type=int, default=256)
    ap.add_argument("--measure", type=int, choices=[0, 1], default=1)
    ap.add_argument("--report", action="store_true",
                    help="run both roles both ways under callgrind and print the table")
    a = ap.parse_args()
    if a.report:
        return report(a.records, a.warm)
    b = run(a.role, a.records, a.batch, a.warm, a.measure)
    expect = a.warm + (a.records if a.measure else 0)
    m = b.m
    if m.committed != expect or m.next_seq != expect + 1:
        raise SystemExit(f"committed {m.committed}, next {m.next_seq}: expected {expect}")
    print(f"{a.role}: {expect} records committed, {b.published} frames published, "
          f"{b.acks} replies to the inputs; sha256 {b.digest.hexdigest()[:16]}")
    m.close()


if __name__ == "__main__":
    main()
