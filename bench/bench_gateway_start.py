"""How long a gateway takes to start against a long out.te stream (docs/gateway.md, "The
index on disk"): from Gateway.start() to listening, over a real log on 127.0.0.1.

A log cluster (one replicator, policy `first`) holds a stream standing for out.te.0: records
of ten session messages each (ExecutionReports of the tests' fake core's layout), spread over
64 sessions. The stream also echoes what the gateway sends (its GatewayStart comes back as a
record, which is how MqCore sees it applied).

* baseline: a gateway with no index file, reading the stream from seq 1 (as every start did
  before the index file);
* the index file: a gateway that ran once and wrote its file, started again: it checks the
  file's last record against the log and reads only the records after it.

    python bench/bench_gateway_start.py [--messages N] [--repeat R]

Prints the seconds of each start (medians of R, the two alternating), the ratio, and a hash
of the index each built (every session's out.te seqs; equal for both).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gateway.server as gs  # noqa: E402
from deploy.local import LogCluster  # noqa: E402
from gateway.accounts import Accounts  # noqa: E402
from gateway.mq_core import MqCore  # noqa: E402
from mq.producer import Producer  # noqa: E402
from tests.gateway_fakes import FakeCore  # noqa: E402

PER_RECORD = 10
SESSIONS = 64
WRITER = 0x7200_0005      # the source that writes the stream (a gateway index of the policy)


def records(messages: int) -> list[tuple[int, bytes]]:
    fake = FakeCore()
    sessions = [{"user": 7, "sid": sid, "next_seq": 1, "account": 1} for sid in
                range(1, SESSIONS + 1)]
    out = []
    for i in range(messages // PER_RECORD):
        s = sessions[i % SESSIONS]
        out.append((gs.KIND_CLIENT_MESSAGE,
                    b"".join(fake._er(s, 10**6 + k) for k in range(PER_RECORD))))
    return out


def fill(cluster: LogCluster, recs: list[tuple[int, bytes]]) -> None:
    prod = Producer(WRITER, cluster.prod_addr, max_inflight=400_000)
    prod.connect()
    for i in range(0, len(recs), 512):
        prod.submit_many(recs[i:i + 512])
        prod.poll(0)
        while prod.unacked > 200_000:
            prod.poll(5)
    prod.flush(600)
    prod.close()


def start_once(cluster: LogCluster, index_file: str) -> tuple[float, str, int]:
    """Seconds from start() to listening, the index's hash, sessions found."""
    shard = {"in": cluster.prod_addr, "pub": cluster.pub_addr,
             "replicators": cluster.rep_addrs, "out_stream": cluster.stream}

    async def run():
        core = MqCore(3, [shard])
        gw = gs.Gateway(core, Accounts({}), gs.Config(index=3, index_file=index_file))
        t0 = time.perf_counter()
        await gw.start()
        took = time.perf_counter() - t0
        h = hashlib.sha256()
        for key in sorted(gw.journal):
            h.update(repr(key).encode() + gw.journal[key].locs.tobytes())
        n = len(gw.journal)
        await gw.close()
        await core.close()
        return took, h.hexdigest()[:16], n
    return asyncio.run(asyncio.wait_for(run(), 3600))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqex-gwstart-") as root:
        with LogCluster(root, stream="in.te.0", replicators=1, policy="first",
                        tick_ms=100) as cluster:
            cluster.start()
            t0 = time.perf_counter()
            fill(cluster, records(a.messages))
            print(f"{a.messages:,} session messages in {a.messages // PER_RECORD:,} records, "
                  f"{SESSIONS} sessions, written in {time.perf_counter() - t0:.1f} s")
            index_file = os.path.join(root, "gw", "journal.index")
            start_once(cluster, index_file)     # writes the file
            whole, indexed, hashes = [], [], set()
            for r in range(a.repeat):
                for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                    took, h, n = start_once(cluster, index_file if which else "")
                    (indexed if which else whole).append(took)
                    hashes.add(h)
                    print(f"  round {r + 1}: {'index file' if which else 'from seq 1'}: "
                          f"{took:.3f} s, {n} sessions, index hash {h}")
            w, i = statistics.median(whole), statistics.median(indexed)
            print(f"start from seq 1 (baseline): {w:.3f} s; with the index file: {i:.3f} s; "
                  f"{w / i:.1f}x faster; index hashes {'equal' if len(hashes) == 1 else 'DIFFER'}"
                  f" ({', '.join(sorted(hashes))})")
            print(f"index file: {os.path.getsize(index_file):,} bytes")
            return 0 if len(hashes) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
