"""Instructions per APPEND and per digest-second of a replicator, under callgrind.

Method (as bench/count_crossengine.py). Wall-clock figures on a shared VM move by ±20%
between runs; instruction counts do not. This script drives one Replicator in process: a real
LMDB store in a temporary directory, its ROUTER bound to an inproc address nobody connects to
(so every ack goes through pyzmq's send and is dropped by libzmq), no peers. It first appends
SETUP records to each of STREAMS streams, then does the measured operations (`--ops N`) or not
(`--apply 0`: their messages are built all the same); under valgrind's callgrind the difference of the two totals, divided by the
operations, is the instructions per operation.

Kinds:
* `msg1`: APPENDs as a master sends them at 1k/s: one record per APPEND, one APPEND per turn
  of the loop (`handle` of a batch of one: a transaction, a commit, an ack), round robin over
  the streams, each carrying the commit point and prev_epoch like mq/master.py's;
* `frame8`: one APPEND of a frame of 8 records per turn (per APPEND, not per record);
* `group8`: 8 one-record APPENDs per turn (a group commit of 8);
* `digest`: one stream's anti-entropy second, with two (fake) peers: the comparison of the
  newest `--digest-records` committed records (DIGEST asked of both peers, both peers' DIGEST
  requests served, both answers handled) and the STATE each way (what tick() sends every
  second per stream). One operation = one such second of one stream.

Run every kind both ways and print the table (needs valgrind):
    python bench/count_replicator.py --report
One measurement:
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null $PY \\
        bench/count_replicator.py --kind msg1 --ops 2000 --apply 1 2>&1 | grep Collected
Without valgrind the script prints a hash of the acks and the stored logs and their state (the same before and
after a change of the replicator's code).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.callgrind import collected  # noqa: E402
from mq import wire  # noqa: E402
from mq.record import encode  # noqa: E402
from replicator.server import Replicator  # noqa: E402

KINDS = ("msg1", "frame8", "group8", "digest")
STREAMS = 4
SETUP = 2_000          # records per stream before the measured part
EPOCH = 3
IDENT = b"\x00master"  # the ROUTER identity of the (absent) master


class FakeSock:
    """A peer's DEALER: keeps what is sent."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send_multipart(self, msg: list[bytes], flags: int = 0) -> None:
        self.sent.append(msg)


class Driver:
    def __init__(self, data_dir: str):
        self.rep = Replicator(data_dir, "inproc://count-replicator", check=False,
                              map_size=1 << 30)  # 64 GiB does not map under valgrind
        self.next = {f"in.bench.{i}": 1 for i in range(STREAMS)}
        self.replies: list[list[bytes]] = []
        self.ss = 0
        send = self.rep._send
        self.rep._send = lambda replies: (self.replies.extend(replies), send(replies))[1]

    def frame(self, stream: str, n: int) -> tuple[bytes, int, int]:
        first = self.next[stream]
        recs = []
        for k in range(n):
            self.ss += 1
            recs.append((first + k, 1_700_000_000_000_000_000 + first * 1000, 7 + self.ss % 5,
                         self.ss, EPOCH, 3, b"p" * (60 + (first + k) % 40), 0))
        self.next[stream] = first + n
        return encode(recs), first, first + n - 1

    def append_msg(self, stream: str, n: int) -> list[bytes]:
        frame, first, last = self.frame(stream, n)
        body = {"stream": stream, "epoch": EPOCH, "first": first, "last": last,
                "commit": first - 1, "prev_epoch": EPOCH if first > 1 else 0}
        return [IDENT, wire.APPEND, wire.pack(body), frame]

    def batches(self, ops: int, per_msg: int, per_turn: int) -> list[list[list[bytes]]]:
        names = list(self.next)
        k = 0
        out = []
        for _ in range(ops // per_turn):
            batch = []
            for _ in range(per_turn):
                batch.append(self.append_msg(names[k % len(names)], per_msg))
                k += 1
            out.append(batch)
        return out

    def turns(self, ops: int, per_msg: int, per_turn: int, apply: bool = True) -> None:
        """Build the APPENDs (always) and handle them (when apply), one batch per turn."""
        peers = [None] * per_turn
        for batch in self.batches(ops, per_msg, per_turn):
            if apply:
                self.rep.handle(batch, peers)

    def digest_second(self, stream: str, records: int) -> None:
        """One stream's comparison second against two peers (both agree with it)."""
        rep, peers = self.rep, self.rep.peers
        log_ = rep.store.find(stream)
        peers.compare_from[stream] = log_.commit - records + 1
        peers.comparing.pop(stream, None)
        for sock in peers.socks:
            sock.sent.clear()
        # tick(): STATE and DIGEST asked of every peer
        peers._ask_all([wire.STATE, wire.pack({"stream": stream})])
        peers._start_compare(stream, 0.0)
        asked = peers.socks[0].sent[-1]
        # the peers ask the same of this replicator: served as the loop does
        rep.handle([[b"p1", *m] for m in peers.socks[0].sent] * 2, [None] * 4)
        answers = self.replies[-4:]
        for i in range(len(peers.socks)):
            for a in answers[:2]:
                peers._on_answer(i, a[1:])
        assert asked[0] == wire.DIGEST and peers.compare_from[stream] == log_.commit + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=KINDS, default="msg1")
    ap.add_argument("--ops", type=int, default=2_000)
    ap.add_argument("--apply", type=int, choices=[0, 1], default=1,
                    help="0: build the operations' messages but do not hand them over")
    ap.add_argument("--digest-records", type=int, default=1_000,
                    help="records compared per digest-second (about a second's worth per "
                         "stream at the rates of the 1k/s profile)")
    ap.add_argument("--report", action="store_true",
                    help="run every kind both ways under callgrind and print the table")
    a = ap.parse_args()
    if a.report:
        return report(a.ops, a.digest_records)
    tmp = tempfile.mkdtemp(prefix="count-replicator-")
    try:
        d = Driver(tmp)
        d.turns(SETUP * STREAMS, 1, 1)
        if a.kind == "digest":
            d.rep.peers.socks = [FakeSock(), FakeSock()]
            d.rep.peers.addrs = ["peer0", "peer1"]
            d.turns(max(0, a.digest_records - SETUP) * STREAMS, 1, 1)
            d.turns(STREAMS, 1, 1)  # the commit point reaches every record before
            for _ in range(a.ops if a.apply else 0):
                d.digest_second("in.bench.0", a.digest_records)
        else:
            per_msg, per_turn = {"msg1": (1, 1), "frame8": (8, 1), "group8": (1, 8)}[a.kind]
            d.turns(a.ops, per_msg, per_turn, bool(a.apply))
        h = hashlib.sha256()
        for reply in d.replies:
            h.update(b"|".join(reply))
        for name in sorted(d.next):
            log_ = d.rep.store.find(name)
            h.update(log_.read(1))
            h.update(repr(log_.state()).encode())  # last, epoch, ts, commit, history, sources
        print(f"{a.kind}: {len(d.replies)} replies, hash {h.hexdigest()[:16]}")
        d.rep.sock.close(0)
        d.rep.store.close()
    finally:
        shutil.rmtree(tmp)


def report(ops: int, digest_records: int) -> None:
    for kind in KINDS:
        n = ops if kind != "digest" else max(1, ops // 100)
        got, hashes = [], []
        for apply in (0, 1):
            count, out = collected(__file__, ["--kind", kind, "--ops", str(n), "--apply",
                                              str(apply), "--digest-records",
                                              str(digest_records)])
            got.append(count)
            hashes.append(out.split("hash ")[-1].strip())
        what = {"msg1": "APPEND (1 record, 1 per turn)", "frame8": "APPEND (8 records)",
                "group8": "APPEND (1 record, 8 per turn)",
                "digest": f"digest-second ({digest_records:,} records, 2 peers)"}[kind]
        print(f"[instructions] {kind}: {(got[1] - got[0]) / n:,.0f} per {what}; {n:,} ops, "
              f"result hash {hashes[1]}", flush=True)


if __name__ == "__main__":
    main()
