"""Benchmark of the sequenced log: producer -> sequencer -> replicator(s) -> subscriber.

Method. Every process is a real `seqex` process (deploy.local.LogCluster); the subscriber is
this process. Records carry 64-byte payloads (102 bytes with the record header).
* Ceiling: raw pyzmq PUSH -> PULL between two processes with the same 102-byte records, one
  per message and 256 per message, measured in the same run; every log figure is also given
  as a ratio to the batched ceiling.
* Throughput: one producer sends N records as fast as its window allows (batches of 1024);
  records/s = N / (time from the first delivery to the last at the subscriber).
* Latency: open-loop. The producer schedules record i at start + i/rate and stamps that
  scheduled time into the payload; latency = delivery time - scheduled time, so queueing in
  the producer counts. The first 10% is warm-up and not counted. p50 / p99 / p99.9. The
  baseline is the same four hops (producer -> master -> replicator -> master -> subscriber)
  relayed by raw pyzmq processes doing no work, with the same open-loop producer. Each round
  measures the log twice: the master fanning out after the replicator's ack (four hops), and
  the replicator fanning out what it stored (`seqex replicator --pub`, policy `first`; three
  hops, docs/log.md "Fan-out from the replicators"); the order flips each round. The
  fan-out is also given against a raw three-hop floor (the relay standing for the replicator
  publishes), measured in the same rounds.
* Result hash: sha256 of the canonical (source, first, last) runs of producer records
  delivered, ticks left out; any loss, duplicate or reordering changes it.
* CURVE cost: the raw PUSH -> PULL pair (1 and 256 records per message), the throughput run
  (tcp, one replicator, os) and the latency run at 10,000/s, each without CURVE (as the other
  figures) and with CURVE (raw: encryption only; log: every process its own key, the ZAP
  authenticator, the roles checked on every message), alternating in the same run; the ratio
  secure / insecure is the cost. The hashes must match. `--curve-only` runs just these.

* Redis Streams: the log a user would otherwise pick, measured in the same run (Debian's
  redis-server on a loopback port, a temporary directory, AOF fsync everysec; redis-py with
  hiredis, `pip install 'seqex[bench]'`): XADD -> XREAD BLOCK, one producer process and one
  consumer (this process), open loop with the log's method (whatever is due, up to 256, in one
  pipeline), and its ceiling (pipelines of 1024 as fast as they go). Redis replicates nothing
  before it delivers. Skipped, with a line saying why, when redis-server or redis-py is absent.
  The latency rounds alternate floor, log and Redis.
* Against another build: `--against DIR` (a checkout of another commit, its Cython built)
  adds that build's log to every latency round, right after this one's (the order flips each
  round): its processes and its subscriber run that checkout's code, the floor and Redis are
  shared, so the two builds are compared on the same machine in the same minutes.

Run: python bench/bench_mq.py [--quick] [--repeat 3] [--latency-only] [--against DIR]
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import itertools
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import zmq

# `_log_latency DIR ...` measures the log of the checkout in DIR (bench_mq.py --against)
ROOT = (sys.argv[2] if len(sys.argv) > 2 and sys.argv[1] == "_log_latency"
        else os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from deploy.local import LogCluster  # noqa: E402
from deploy.procs import tcp  # noqa: E402
from mq import auth  # noqa: E402
from mq.record import HEADER_SIZE, decode, pack, source_runs  # noqa: E402
from mq.subscriber import Subscriber  # noqa: E402

PAYLOAD = 64
RECORD = HEADER_SIZE + PAYLOAD


# -- raw ceiling -----------------------------------------------------------------------
def _push(addr: str, n: int, per_msg: int, curve: list[str] | None = None) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    if curve:  # client public, client secret, server public (z85)
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = \
            (k.encode() for k in curve)
    sock.connect(addr)
    msg = pack(1, 1, 16, [b"\0" * PAYLOAD] * per_msg)
    for _ in range(n // per_msg):
        sock.send(msg)
    sock.close(linger=-1)
    ctx.term()


def raw_ceiling(addr: str, n: int, per_msg: int, curve: bool = False) -> float:
    """Records/s from a PUSH process to this PULL; curve: both ends CURVE (no ZAP handler:
    the cost of the encryption alone)."""
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 1000)
    keys: list[str] = []
    if curve:
        server_pub, server_sec = zmq.curve_keypair()
        client_pub, client_sec = zmq.curve_keypair()
        pull.curve_publickey, pull.curve_secretkey = server_pub, server_sec
        pull.curve_server = True
        keys = [client_pub.decode(), client_sec.decode(), server_pub.decode()]
    pull.bind(addr)
    child = subprocess.Popen([sys.executable, __file__, "_push", addr, str(n), str(per_msg),
                              *keys])
    msgs = n // per_msg
    pull.recv()
    t0 = time.perf_counter()
    for _ in range(msgs - 1):
        pull.recv(copy=False)
    elapsed = time.perf_counter() - t0
    child.wait()
    pull.close(0)
    return (msgs - 1) * per_msg / elapsed


def _relay_a(pull_addr: str, b_addr: str, pub_addr: str) -> None:
    """Raw stand-in for the sequencer: PULL -> DEALER (to B), DEALER replies -> PUB."""
    ctx = zmq.Context()
    pull, dealer, pub = ctx.socket(zmq.PULL), ctx.socket(zmq.DEALER), ctx.socket(zmq.PUB)
    pull.bind(pull_addr)
    dealer.connect(b_addr)
    pub.bind(pub_addr)
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(dealer, zmq.POLLIN)
    while True:
        events = dict(poller.poll(1000))
        if pull in events:
            dealer.send(pull.recv())
        if dealer in events:
            pub.send(dealer.recv())


def _relay_b(addr: str, pub_addr: str | None = None) -> None:
    """Raw stand-in for the replicator: echo; with pub_addr, also publish (fan-out)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(addr)
    pub = None
    if pub_addr:
        pub = ctx.socket(zmq.PUB)
        pub.bind(pub_addr)
    while True:
        msg = router.recv_multipart()
        router.send_multipart(msg)
        if pub is not None:
            pub.send(msg[-1])


def _open_loop_push(addr: str, n: int, rate: int) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(addr)
    time.sleep(0.5)
    start, step = time.time_ns(), 1e9 / rate
    for i in range(n):
        due = start + i * step
        wait = (due - time.time_ns()) / 1e9
        if wait > 0:
            time.sleep(wait)
        push.send(struct.pack("<Q", int(due)) + b"\0" * (RECORD - 8))
    time.sleep(2)


def raw_hops_latency(rate: int, seconds: float, transport: str = "tcp",
                     hops: int = 4) -> dict:
    """The same four hops as the log (producer -> master -> replicator -> master ->
    subscriber) with raw pyzmq and no work at all: the latency floor of this machine. hops=3:
    the relay standing for the replicator also publishes, and the subscriber listens to it
    (the path of the replicators' fan-out)."""
    with tempfile.TemporaryDirectory(prefix="seqex-bench-") as root:
        return _raw_hops_latency(rate, seconds, _endpoints(transport, root), hops)


def _raw_hops_latency(rate: int, seconds: float, endpoint, hops: int = 4) -> dict:
    n = int(rate * seconds)
    a_in, b, pub, b_pub = endpoint(), endpoint(), endpoint(), endpoint()
    procs = [subprocess.Popen([sys.executable, __file__, "_relay_b", b,
                               *([b_pub] if hops == 3 else [])]),
             subprocess.Popen([sys.executable, __file__, "_relay_a", a_in, b, pub])]
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(b_pub if hops == 3 else pub)
    time.sleep(0.3)
    procs.append(subprocess.Popen([sys.executable, __file__, "_push", "-", str(n), str(rate),
                                   a_in]))
    lat = []
    try:
        # the first record may take long on a loaded machine (the producer process starts)
        while len(lat) < n and sub.poll(5000 if lat else 60_000):
            lat.append(time.time_ns() - struct.unpack_from("<Q", sub.recv())[0])
    finally:
        for p in procs:
            p.kill()
            p.wait()
        sub.close(0)
    return _percentiles(lat, n)


def _percentiles(lat: list[int], n: int) -> dict:
    lat = sorted(lat[n // 10:])
    if not lat:
        raise RuntimeError(f"no record of {n} arrived after the warm-up")
    q = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] / 1000  # noqa: E731
    return {"records": len(lat), "p50_us": q(0.5), "p99_us": q(0.99), "p999_us": q(0.999)}


# -- Redis Streams, the log a user would otherwise pick ----------------------------------
REDIS_STREAM = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of Debian's package on a loopback port, in a temporary directory, AOF
    with fsync every second (its usual durable setting), no RDB snapshots; stopped on exit."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.root = tempfile.mkdtemp(prefix="seqex-bench-redis-")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> RedisServer:
        import redis
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.root,
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--daemonize", "no", "--logfile", os.path.join(self.root, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.__exit__()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def redis_missing() -> str | None:
    """Why the Redis baseline cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    try:
        import hiredis  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        return "redis-py with hiredis is not installed (pip install 'seqex[bench]')"
    return None


def _redis_produce(port: str, n: str, rate: str, batch: str) -> None:
    """The Redis producer process: XADD of 64-byte payloads (scheduled time first), open
    loop at `rate` as the log's producer (whatever is due, up to `batch`, in one pipeline),
    or with rate 0 as fast as it goes in pipelines of `batch`."""
    import redis
    client = redis.Redis(port=int(port))
    n, rate, batch = int(n), int(rate), int(batch)
    pad = b"\0" * (PAYLOAD - 16)
    prefix = struct.Struct("<QQ")
    time.sleep(0.3)
    start = time.time_ns()
    step = 1e9 / rate if rate else 0.0
    i = 0
    while i < n:
        if rate:
            now = time.time_ns()
            due = min(n, int((now - start) / step) + 1)
            if due <= i:
                time.sleep(max(0.0, (start + i * step - now) / 1e9))
                continue
            k = min(batch, due - i)
        else:
            k = min(batch, n - i)
        pipe = client.pipeline(transaction=False)
        for j in range(i, i + k):
            when = int(start + j * step) if rate else time.time_ns()
            pipe.xadd(REDIS_STREAM, {b"d": prefix.pack(j, when) + pad})
        pipe.execute()
        i += k
    client.close()


def _redis_consume(port: int, n: int, seconds_max: float) -> tuple[list[int], list[int], float]:
    """XREAD BLOCK until n records came: (latencies ns, record numbers, seconds from the
    first delivery to the last)."""
    import redis
    client = redis.Redis(port=port)
    prefix = struct.Struct("<QQ")
    lat: list[int] = []
    order: list[int] = []
    last_id = b"0-0"
    t_first = t_last = 0.0
    deadline = time.monotonic() + seconds_max
    while len(lat) < n and time.monotonic() < deadline:
        got = client.xread({REDIS_STREAM: last_id}, count=10_000, block=1000)
        if not got:
            continue
        now = time.time_ns()
        t_last = time.perf_counter()
        if not t_first:
            t_first = t_last
        entries = got[0][1]
        for _id, fields in entries:
            num, when = prefix.unpack_from(fields[b"d"])
            lat.append(now - when)
            order.append(num)
        last_id = entries[-1][0]
    client.close()
    return lat, order, t_last - t_first


def _runs_hash(order: list[int]) -> str:
    runs: list = []
    _canonical_runs([(1, k + 1, k + 1, 0) for k in order], runs)
    return hashlib.sha256(json.dumps(runs).encode()).hexdigest()[:16]


def redis_latency(rate: int, seconds: float) -> dict:
    """Open-loop XADD -> XREAD BLOCK latency, one producer and one consumer process (this
    one), the log's method."""
    n = int(rate * seconds)
    with RedisServer() as server:
        prod = subprocess.Popen([sys.executable, __file__, "_redis_produce", str(server.port),
                                 str(n), str(rate), "256"])
        try:
            lat, order, _ = _redis_consume(server.port, n, seconds * 4 + 30)
        finally:
            prod.kill()
            prod.wait()
    return {**_percentiles(lat, n), "hash": _runs_hash(order)}


def redis_throughput(n: int) -> dict:
    """Records/s through Redis Streams: pipelines of 1024 XADDs as fast as they go."""
    with RedisServer() as server:
        prod = subprocess.Popen([sys.executable, __file__, "_redis_produce", str(server.port),
                                 str(n), "0", "1024"])
        try:
            lat, order, elapsed = _redis_consume(server.port, n, 300)
        finally:
            prod.kill()
            prod.wait()
    return {"records": len(order), "rate": len(order) / elapsed if elapsed > 0 else 0.0,
            "hash": _runs_hash(order)}


# -- the log ---------------------------------------------------------------------------
def _endpoints(kind: str, root: str):
    if kind == "tcp":
        return tcp
    counter = itertools.count()
    return lambda: f"ipc://{root}/e{next(counter)}.ipc"


def _canonical_runs(runs_in, acc: list) -> None:
    for src, a, b, _seq in runs_in:
        if src == 0:
            continue
        if acc and acc[-1][0] == src and acc[-1][2] + 1 == a:
            acc[-1][2] = b
        else:
            acc.append([src, a, b])


def _secured(root: str, curve: bool) -> dict:
    """LogCluster options for a run with CURVE (keys in root/keys, this process the
    operator) or without (every process started with --insecure)."""
    if not curve:
        return {}
    return {"keys_dir": os.path.join(root, "keys"), "producers": {"producer": [1]}}


def _producer_key(cluster: LogCluster) -> list[str]:
    return cluster.key_args("producer") or ["--insecure"]


def log_throughput(transport: str, replicas: int, durability: str, n: int,
                   curve: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="seqex-bench-") as root:
        cluster = LogCluster(root, "in.bench", replicators=replicas, policy="first",
                             durability=durability, endpoint=_endpoints(transport, root),
                             **_secured(root, curve))
        if curve:
            auth.configure(cluster.keys_dir, "operator")
        with cluster:
            cluster.start()
            sub = Subscriber("in.bench", cluster.pub_addr, cluster.rep_addrs)
            sub.poll(50)
            cluster.group.spawn("producer", [
                *_producer_key(cluster),
                "produce", "--sequencer", cluster.prod_addr, "--source", "1", "--count", str(n),
                "--batch", "1024", "--window", "500000", "--payload-bytes", str(PAYLOAD)])
            got = 0
            runs: list = []
            t_first = t_last = 0.0
            deadline = time.monotonic() + 300
            while got < n and time.monotonic() < deadline:
                for _f, _l, frame in sub.poll(200):
                    rr = source_runs(frame)
                    k = sum(b - a + 1 for s, a, b, _ in rr if s)
                    if k and not got:
                        t_first = time.perf_counter()
                    got += k
                    _canonical_runs(rr, runs)
                    t_last = time.perf_counter()
            sub.close()
        auth.reset()
        digest = hashlib.sha256(json.dumps(runs).encode()).hexdigest()[:16]
    return {"records": got, "rate": got / (t_last - t_first) if t_last > t_first else 0.0,
            "hash": digest}


def log_latency(transport: str, rate: int, seconds: float, curve: bool = False,
                fanout: bool = False, spin_us: int = 0) -> dict:
    """fanout: the replicator publishes what it stored and the subscriber takes the records
    from it (three hops: producer -> master -> replicator -> subscriber); otherwise from the
    master after the replicator's ack (four hops). spin_us: the master and the replicator
    poll without sleeping for that long after each input (--spin-us)."""
    n = int(rate * seconds)
    prefix = struct.Struct("<QQ")
    with tempfile.TemporaryDirectory(prefix="seqex-bench-") as root:
        cluster = LogCluster(root, "in.bench", replicators=1, policy="first", durability="os",
                             endpoint=_endpoints(transport, root), **_secured(root, curve),
                             # (no keyword at all without fanout: an --against checkout's
                             # LogCluster may predate it)
                             **({"fanout": True} if fanout else {}),
                             **({"sequencer_args": ["--spin-us", str(spin_us)],
                                 "replicator_args": ["--spin-us", str(spin_us)]}
                                if spin_us else {}))
        if curve:
            auth.configure(cluster.keys_dir, "operator")
        with cluster:
            cluster.start()
            sub = Subscriber("in.bench", cluster.rep_pubs if fanout else cluster.pub_addr,
                             cluster.rep_addrs)
            sub.poll(50)
            cluster.group.spawn("producer", [
                *_producer_key(cluster),
                "produce", "--sequencer", cluster.prod_addr, "--source", "1", "--count", str(n),
                "--rate", str(rate), "--batch", "256", "--payload-bytes", str(PAYLOAD)])
            lat = []
            runs: list = []
            deadline = time.monotonic() + seconds * 4 + 30
            while len(lat) < n and time.monotonic() < deadline:
                for _f, _l, frame in sub.poll(200):
                    now = time.time_ns()
                    _canonical_runs(source_runs(frame), runs)
                    for rec in decode(frame):
                        if rec[2]:
                            lat.append(now - prefix.unpack_from(rec[6])[1])
            sub.close()
        auth.reset()
    return {**_percentiles(lat, n),
            "hash": hashlib.sha256(json.dumps(runs).encode()).hexdigest()[:16]}


def log_latency_of(root: str, transport: str, rate: int, seconds: float) -> dict:
    """log_latency with the code of the checkout in root: this file's method, run in a child
    whose imports, and whose cluster's processes, come from root."""
    root = os.path.abspath(root)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "_log_latency", root,
                          transport, str(rate), str(seconds)],
                         env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def curve_cost(a: argparse.Namespace, n: int, results: list) -> None:
    """Throughput and latency without and with CURVE, alternating (median of --repeat)."""
    raw: dict[tuple[bool, int], list] = {}
    for _ in range(a.repeat):
        for per_msg in (1, 256):
            for curve in (False, True):
                raw.setdefault((curve, per_msg), []).append(
                    raw_ceiling(tcp(), 200_000 if per_msg == 1 else 4_000_000, per_msg, curve))
    for per_msg in (1, 256):
        off = statistics.median(raw[(False, per_msg)])
        on = statistics.median(raw[(True, per_msg)])
        print(f"[tcp] CURVE cost, raw PUSH->PULL, {per_msg} record(s) per message: {off:,.0f} "
              f"records/s without, {on:,.0f} with: ratio {on / off:.3f}", flush=True)
        results.append({"transport": "tcp", "what": "curve_cost_raw", "per_msg": per_msg,
                        "off": off, "on": on, "ratio": on / off})
    tp: dict[bool, list] = {False: [], True: []}
    lat: dict[bool, list] = {False: [], True: []}
    seconds = 3 if a.quick else 8
    for _ in range(a.repeat):
        for curve in (False, True):
            tp[curve].append(log_throughput("tcp", 1, "os", n, curve))
            lat[curve].append(log_latency("tcp", 10_000, seconds, curve))
    pick = lambda runs, key: sorted(runs, key=lambda r: r[key])[len(runs) // 2]  # noqa: E731
    off, on = pick(tp[False], "rate"), pick(tp[True], "rate")
    print(f"[tcp] CURVE cost, throughput (1 replicator, os): {off['rate']:,.0f} records/s "
          f"without, {on['rate']:,.0f} with: ratio {on['rate'] / off['rate']:.3f}  "
          f"(hashes {off['hash']} {on['hash']})", flush=True)
    loff, lon = pick(lat[False], "p99_us"), pick(lat[True], "p99_us")
    print(f"[tcp] CURVE cost, open-loop latency at 10,000/s: p50 {loff['p50_us']:.0f} -> "
          f"{lon['p50_us']:.0f} us, p99 {loff['p99_us']:.0f} -> {lon['p99_us']:.0f} us, "
          f"p99.9 {loff['p999_us']:.0f} -> {lon['p999_us']:.0f} us; p99 ratio "
          f"{lon['p99_us'] / loff['p99_us']:.2f}  (hashes {loff['hash']} {lon['hash']})",
          flush=True)
    results.append({"transport": "tcp", "what": "curve_cost", "throughput_off": off,
                    "throughput_on": on, "ratio": on["rate"] / off["rate"],
                    "latency_off": loff, "latency_on": lon,
                    "p99_ratio": lon["p99_us"] / loff["p99_us"]})


def latency_section(a: argparse.Namespace, results: list, throughputs: dict) -> None:
    """Open-loop latency at 10k/s and 50k/s: the raw four-hop floor, the log and Redis
    Streams, alternating within each of --repeat rounds (medians by p99); then the log and
    Redis side by side (throughput ceiling and p99 at 10k/s)."""
    seconds = 3 if a.quick else 8
    why_not = redis_missing()
    if why_not:
        print(f"Redis Streams baseline skipped: {why_not}", flush=True)
    pick = lambda runs: sorted(runs, key=lambda r: r["p99_us"])[len(runs) // 2]  # noqa: E731
    redis_p99: dict[int, dict] = {}
    # ipc (one host) at 10k/s too, each transport against its own floor
    for transport, rate in (("tcp", 10_000), ("ipc", 10_000), ("tcp", 50_000)):
        runs: dict[str, list] = {"raw": [], "raw3": [], "log": [], "fanout": [], "redis": [],
                                 "against": [], "spin": []}
        for i in range(a.repeat):
            runs["raw"].append(raw_hops_latency(rate, seconds, transport))
            runs["raw3"].append(raw_hops_latency(rate, seconds, transport, hops=3))
            builds = ["log", "fanout"] + (["against"] if a.against else []) + \
                (["spin"] if a.spin_us and (transport, rate) == ("tcp", 10_000) else [])
            for key in builds if i % 2 == 0 else builds[::-1]:
                runs[key].append(
                    log_latency(transport, rate, seconds) if key == "log" else
                    log_latency(transport, rate, seconds, spin_us=a.spin_us) if key == "spin"
                    else
                    log_latency(transport, rate, seconds, fanout=True) if key == "fanout" else
                    log_latency_of(a.against, transport, rate, seconds))
            if not why_not and transport == "tcp":
                runs["redis"].append(redis_latency(rate, seconds))
        raw, r = pick(runs["raw"]), pick(runs["log"])
        print(f"[{transport}] open-loop latency at {rate:,}/s: p50 {r['p50_us']:.0f} us  p99 "
              f"{r['p99_us']:.0f} us  p99.9 {r['p999_us']:.0f} us  (hash {r['hash']}); raw "
              f"four-hop floor p50 {raw['p50_us']:.0f} p99 {raw['p99_us']:.0f} p99.9 "
              f"{raw['p999_us']:.0f} us; ratios p50 {r['p50_us'] / raw['p50_us']:.2f} "
              f"p99 {r['p99_us'] / raw['p99_us']:.2f}", flush=True)
        f, raw3 = pick(runs["fanout"]), pick(runs["raw3"])
        print(f"[{transport}] the same, the replicator fanning out (3 hops) at {rate:,}/s: p50 "
              f"{f['p50_us']:.0f} us  p99 {f['p99_us']:.0f} us  p99.9 {f['p999_us']:.0f} us  "
              f"(hash {f['hash']}); ratios to the four-hop floor p50 "
              f"{f['p50_us'] / raw['p50_us']:.2f} p99 {f['p99_us'] / raw['p99_us']:.2f}; raw "
              f"three-hop floor p50 {raw3['p50_us']:.0f} p99 {raw3['p99_us']:.0f} us, ratios p50 "
              f"{f['p50_us'] / raw3['p50_us']:.2f} p99 {f['p99_us'] / raw3['p99_us']:.2f}",
              flush=True)
        entry = {"transport": transport, "what": "latency", "rate": rate, **r, "raw_floor": raw,
                 "p50_ratio": r["p50_us"] / raw["p50_us"], "p99_ratio": r["p99_us"] / raw["p99_us"],
                 "fanout": f, "raw3_floor": raw3, "runs": {k: [x["p99_us"] for x in v] for k, v in runs.items() if v}}
        if runs["against"]:
            o = entry["against"] = pick(runs["against"])
            print(f"[{transport}] the build in {a.against} at {rate:,}/s: p50 {o['p50_us']:.0f} us"
                  f"  p99 {o['p99_us']:.0f} us  p99.9 {o['p999_us']:.0f} us  (hash {o['hash']});"
                  f" this build / that one: p50 {r['p50_us'] / o['p50_us']:.2f} p99 "
                  f"{r['p99_us'] / o['p99_us']:.2f}", flush=True)
        if runs["spin"]:
            o = entry["spin"] = pick(runs["spin"])
            print(f"[{transport}] the same, master and replicator spinning {a.spin_us} us after "
                  f"each input, at {rate:,}/s: p50 {o['p50_us']:.0f} us  p99 {o['p99_us']:.0f} us"
                  f"  p99.9 {o['p999_us']:.0f} us  (hash {o['hash']}); ratios to the four-hop "
                  f"floor p50 {o['p50_us'] / raw['p50_us']:.2f} p99 "
                  f"{o['p99_us'] / raw['p99_us']:.2f}; spinning / not p99 "
                  f"{o['p99_us'] / r['p99_us']:.2f}", flush=True)
        if runs["redis"]:
            rd = redis_p99[rate] = pick(runs["redis"])
            print(f"[tcp] Redis Streams (XADD -> XREAD BLOCK, AOF everysec) at {rate:,}/s: p50 "
                  f"{rd['p50_us']:.0f} us  p99 {rd['p99_us']:.0f} us  p99.9 {rd['p999_us']:.0f} us"
                  f"  (hash {rd['hash']}); log p99 / Redis p99 {r['p99_us'] / rd['p99_us']:.2f}"
                  f", with the replicator fanning out {f['p99_us'] / rd['p99_us']:.2f}", flush=True)
            entry["redis"] = rd
        results.append(entry)
    if why_not:
        return
    n = 300_000 if a.quick else 1_000_000
    rtp = statistics.median(redis_throughput(n)["rate"] for _ in range(a.repeat))
    results.append({"what": "redis_throughput", "rate": rtp})
    log_tp = throughputs.get("tcp")
    log10 = next(x for x in results if x.get("what") == "latency" and x["rate"] == 10_000
                  and x["transport"] == "tcp")
    print(f"{'':28}{'records/s (ceiling)':>22}{'p99 at 10k/s':>16}", flush=True)
    print(f"{'log (tcp, 1 replicator, os)':28}"
          f"{(f'{log_tp:,.0f}' if log_tp else 'not run'):>22}{log10['p99_us']:>13,.0f} us",
          flush=True)
    print(f"{'Redis Streams (AOF everysec)':28}{rtp:>22,.0f}"
          f"{redis_p99[10_000]['p99_us']:>13,.0f} us", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller runs, one transport")
    ap.add_argument("--repeat", type=int, default=1, help="median of this many runs")
    ap.add_argument("--spin-us", type=int, default=0, metavar="US",
                    help="also measure (tcp, 10k/s) the log with its master and replicator "
                         "polling without sleeping for US after each input")
    ap.add_argument("--curve-only", action="store_true",
                    help="only the cost of CURVE (with and without, same run)")
    ap.add_argument("--latency-only", action="store_true",
                    help="only the open-loop latency: the raw floor, the log and Redis Streams, "
                         "alternating in the same run")
    ap.add_argument("--against", metavar="DIR",
                    help="also the log of the checkout in DIR (another build), alternating "
                         "with this one in every latency round")
    a = ap.parse_args()
    gc.disable()
    n = 300_000 if a.quick else 2_000_000
    transports = ["ipc"] if a.quick else ["ipc", "tcp"]
    results = []

    def med(fn, *args):
        runs = [fn(*args) for _ in range(a.repeat)]
        runs.sort(key=lambda r: r.get("rate", r.get("p99_us", 0)))
        return runs[len(runs) // 2]

    throughputs: dict[str, float] = {}
    if a.latency_only:
        latency_section(a, results, throughputs)
        print(json.dumps(results))
        return
    curve_cost(a, n, results)
    if a.curve_only:
        print(json.dumps(results))
        return
    for transport in transports:
        with tempfile.TemporaryDirectory() as root:
            ep = _endpoints(transport, root)
            c1 = statistics.median(raw_ceiling(ep(), 200_000, 1) for _ in range(a.repeat))
            c256 = statistics.median(raw_ceiling(ep(), 4_000_000, 256)
                                     for _ in range(a.repeat))
        print(f"[{transport}] raw PUSH->PULL {RECORD} B records: {c1:,.0f}/s one per message, "
              f"{c256:,.0f}/s 256 per message", flush=True)
        results.append({"transport": transport, "what": "raw_ceiling", "per_msg1": c1,
                        "per_msg256": c256})
        for replicas, durability in ((1, "os"), (2, "os"), (1, "fsync"), (2, "fsync")):
            r = med(log_throughput, transport, replicas, durability, n)
            print(f"[{transport}] log, policy first, {replicas} replicator(s), {durability:5}: "
                  f"{r['rate']:>12,.0f} records/s  ratio to batched ceiling {r['rate'] / c256:.3f}"
                  f"  ({r['records']} records, hash {r['hash']})", flush=True)
            results.append({"transport": transport, "what": "throughput", "replicas": replicas,
                            "durability": durability, **r, "ratio": r["rate"] / c256})
            if (replicas, durability) == (1, "os"):
                throughputs[transport] = r["rate"]
    latency_section(a, results, throughputs)
    print(json.dumps(results))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_push":
        if sys.argv[2] == "-":
            _open_loop_push(sys.argv[5], int(sys.argv[3]), int(sys.argv[4]))
        else:
            _push(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:8] or None)
    elif len(sys.argv) > 1 and sys.argv[1] == "_relay_a":
        _relay_a(*sys.argv[2:5])
    elif len(sys.argv) > 1 and sys.argv[1] == "_redis_produce":
        _redis_produce(*sys.argv[2:6])
    elif len(sys.argv) > 1 and sys.argv[1] == "_log_latency":
        gc.disable()
        print(json.dumps(log_latency(sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "_relay_b":
        _relay_b(*sys.argv[2:4])
    else:
        main()
