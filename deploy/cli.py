"""`seqex`: the one command of the exchange core.

Process verbs (what a supervisor starts): ``replicator``, ``sequencer``, ``mirror``,
``replica``.
Client verbs: ``produce`` (load generator / feeder), ``tail`` (durable subscriber),
``replay`` (print any range of a stream), ``ping``, ``stop``.
``demo``: a local log cluster on loopback with live figures (the main job for now).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time

SRC_PAYLOAD = "<QQ"  # produce's payload prefix: (source_seq, send time ns), then padding


def _pin() -> None:
    cpu = os.environ.get("SEQEX_CPU")
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(cpu) % (os.cpu_count() or 1)})
        except OSError as exc:
            logging.warning("could not pin to cpu %s: %s", cpu, exc)


def cmd_replicator(a: argparse.Namespace) -> int:
    from replicator.server import main
    main(a.data, a.bind, a.durability, a.peer)
    return 0


def cmd_sequencer(a: argparse.Namespace) -> int:
    from mq.sequencer import main
    main(a.stream, a.producers, a.pub, a.replicator, a.policy, a.tick_ms, a.upstream,
         window_bytes=a.window_bytes, max_uncommitted_bytes=a.max_uncommitted_bytes,
         max_step_ms=a.max_step_ms)
    return 0


def cmd_replica(a: argparse.Namespace) -> int:
    from mq.replica import main
    main(a)
    return 0


def cmd_mirror(a: argparse.Namespace) -> int:
    from mq.mirror import main
    main(a.stream, a.inputs, a.pub, a.replicator, a.policy, a.from_seq)
    return 0


def cmd_produce(a: argparse.Namespace) -> int:
    """Send --count records of --payload-bytes as source --source and append every
    acknowledged run to --acks as 'ss_first ss_last seq_first' lines.

    With --rate R the load is open-loop: record i is due at start + i/R, its payload carries
    that scheduled time (not the moment it left), and whatever is due goes out as one batch
    of at most --batch; so queueing anywhere shows up as latency. Without --rate, batches of
    --batch go out as fast as the --window of unacknowledged records allows."""
    import struct

    from mq.producer import Producer
    prefix = struct.Struct(SRC_PAYLOAD)
    # --resend-from: a producer restarted with a persisted outbox resends it unchanged
    # from that number; the sequencer drops what it already holds.
    prod = Producer(a.source, a.sequencer, max_inflight=a.window, next_ss=a.resend_from)
    prod.connect(a.timeout)
    acks = open(a.acks, "a") if a.acks else None
    pad = b"\0" * max(0, a.payload_bytes - prefix.size)
    first_ss = prod.next_ss
    if first_ss > a.count:
        print(f"source {a.source}: all {a.count} records already sequenced", flush=True)
    start_ns = time.time_ns()
    step_ns = 1_000_000_000 / a.rate if a.rate else 0.0

    def record_acks(runs: list) -> None:
        if acks and runs:
            acks.write("".join(f"{x} {y} {'-' if s is None else s}\n" for x, y, s in runs))
            acks.flush()

    ss = first_ss
    while ss <= a.count:
        if prod.unacked >= a.window:
            record_acks(prod.poll(1))
            continue
        if a.rate:
            now = time.time_ns()
            due = min(a.count, first_ss + int((now - start_ns) / step_ns))
            if due < ss:
                # Sleep until the next record is due: never spin, the core is shared.
                wait_s = (start_ns + (ss - first_ss) * step_ns - now) / 1e9
                if wait_s >= 0.002:
                    record_acks(prod.poll(int(wait_s * 1000) - 1))
                else:
                    time.sleep(max(0.0, wait_s))
                    record_acks(prod.poll(0))
                continue
            n = min(a.batch, due - ss + 1)
            payloads = [prefix.pack(i, int(start_ns + (i - first_ss) * step_ns)) + pad
                        for i in range(ss, ss + n)]
        else:
            n = min(a.batch, a.count - ss + 1)
            now = time.time_ns()
            payloads = [prefix.pack(i, now) + pad for i in range(ss, ss + n)]
        prod.submit(a.kind, payloads)
        ss += n
        record_acks(prod.poll(0))
    record_acks(prod.flush(a.timeout))
    print(f"source {a.source}: {a.count} records acknowledged", flush=True)
    return 0


def cmd_tail(a: argparse.Namespace) -> int:
    """Print records, or with --out append 'seq source source_seq kind' lines to a file and,
    after a crash, resume right after the last complete line (exactly once, in order)."""
    from mq.record import decode
    from mq.subscriber import Subscriber
    next_seq = a.from_seq
    out = None
    if a.out:
        next_seq = _resume_point(a.out)
        out = open(a.out, "a")
    sub = Subscriber(a.stream, a.pub, a.replicator, next_seq)
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    while running[0] and (a.to is None or sub.next_seq <= a.to):
        for _first, _last, frame in sub.poll(200):
            recs = decode(frame)
            if out:
                out.write("".join(f"{r[0]} {r[2]} {r[3]} {r[5]}\n" for r in recs))
                out.flush()
            else:
                for r in recs:
                    print(f"{r[0]} ts={r[1]} src={r[2]}:{r[3]} kind={r[5]} len={len(r[6])}")
    sub.close()
    return 0


def _resume_point(path: str) -> int:
    """1 + the seq of the last complete line; a torn last line is cut off."""
    if not os.path.exists(path):
        return 1
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        f.truncate(end)
        lines = data[:end].splitlines()
    return int(lines[-1].split()[0]) + 1 if lines else 1


def cmd_up(a: argparse.Namespace) -> int:
    from deploy import topology
    from deploy.supervisor import Supervisor
    topo = topology.load(a.topology, a.data, a.base_port)
    print(f"seqex up: {a.topology or 'the default topology (one machine, loopback)'}")
    Supervisor(topo, a.host).up()
    return 0


def cmd_down(a: argparse.Namespace) -> int:
    from deploy.supervisor import down
    return down(a.data)


def cmd_status(a: argparse.Namespace) -> int:
    from deploy.supervisor import print_table, read_state, status_rows
    topo, _pid = read_state(a.data)
    print_table(status_rows(topo))
    return 0


def cmd_submit(a: argparse.Namespace) -> int:
    """One order into in.ce.SYMBOL; prints the seq it was sequenced at."""
    from deploy.api import Cluster
    cluster = Cluster(a.data, a.source)
    try:
        seq = cluster.submit(a.symbol, a.side, a.qty, a.price, a.account, a.market, a.tif,
                             a.client_order_id)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        cluster.close()
    print(f"order sequenced in in.ce.{a.symbol} at seq {seq}")
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    from mq.control import replay
    from mq.record import decode
    if a.replicator is None:
        from deploy.supervisor import read_state
        topo, _pid = read_state(a.data)
        a.replicator = topo.replicator_addrs()[0]
    if a.rebuild:
        return _rebuild(a)
    from mq.record import scan
    progress = sys.stderr.isatty() and not sys.stdout.isatty()
    for frame in replay(a.replicator, a.stream, a.from_seq, a.to):
        if progress:  # output goes to a file or pipe: show how far it got
            print(f"\r  replayed up to seq {scan(frame)[2]:,}", end="", file=sys.stderr)
        for seq, ts, src, ss, epoch, kind, payload in decode(frame):
            if a.json:
                print(json.dumps({"seq": seq, "ts_ns": ts, "source": src, "source_seq": ss,
                                  "epoch": epoch, "kind": kind, "payload": payload.hex()}))
            else:
                print(f"{seq:>10} {ts} {src:>5}:{ss:<10} e{epoch} kind={kind} {payload[:24].hex()}")
    return 0


def _rebuild(a: argparse.Namespace) -> int:
    """Apply the stream from seq 1 to a fresh engine; print the state hash at the last seq
    (and, for an engine that keeps books, that its audit balances there)."""
    from mq.control import replay
    from mq.record import scan
    from mq.replica import ENGINES
    engine = a.engine or {"in.ce.": "crossengine", "in.te.": "tradingengine"}.get(a.stream[:6])
    if engine not in ENGINES:
        raise SystemExit(f"--rebuild: name the engine of {a.stream} with --engine "
                         f"({', '.join(sorted(ENGINES))})")
    config = json.loads(a.engine_config) if a.engine_config else {}
    if not config and engine == "crossengine" and a.data:
        try:
            from deploy.supervisor import read_state
            topo, _pid = read_state(a.data)
            config = topo.symbols.get(a.stream[len("in.ce."):], {}).get("engine", {})
        except SystemExit:
            pass
    eng, _restore = ENGINES[engine](config)
    last, started = 0, time.monotonic()
    for frame in replay(a.replicator, a.stream, 1, a.to):
        eng.apply_frame(frame)
        last = scan(frame)[2]
        if sys.stderr.isatty():
            print(f"\r  rebuilt up to seq {last:,}", end="", file=sys.stderr)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    result = {"stream": a.stream, "seq": last, "state_hash": eng.state_hash().hex(),
              "seconds": round(time.monotonic() - started, 3)}
    if hasattr(eng, "audit"):
        eng.audit()     # raises with its report if the books do not balance
        result["audit"] = "balanced"
    print(json.dumps(result))
    return 0


def cmd_ping(a: argparse.Namespace) -> int:
    from mq.control import ping
    stats = ping(a.addr, a.timeout)
    if stats is None:
        print(f"{a.addr}: no answer", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=2, sort_keys=True))
    return 0


def cmd_stop(a: argparse.Namespace) -> int:
    from mq import wire
    from mq.control import call
    call(a.addr, wire.STOP, timeout_s=a.timeout)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """Two replicators, a sequencer (quorum), three producers and a live subscriber on
    loopback; prints throughput, end-to-end latency and the log position every second."""
    import struct

    from deploy.local import LogCluster
    from mq.record import decode
    from mq.subscriber import Subscriber

    data = a.data or tempfile.mkdtemp(prefix="seqex-demo-")
    stream = "in.demo"
    prefix = struct.Struct(SRC_PAYLOAD)
    print(f"seqex demo: data and logs in {data}")
    with LogCluster(data, stream, replicators=2, policy="quorum") as cluster:
        cluster.start()
        group, reps, prod_addr = cluster.group, cluster.rep_addrs, cluster.prod_addr
        sub = Subscriber(stream, cluster.pub_addr, reps)
        per_source = a.rate // 3
        count = per_source * a.seconds
        for src in (1, 2, 3):
            group.spawn(f"producer{src}", ["produce", "--sequencer", prod_addr,
                                           "--source", str(src), "--count", str(count),
                                           "--rate", str(per_source), "--batch", "16"])
        print(f"{'t':>4} {'seq':>10} {'records/s':>10} {'p50 us':>8} {'p99 us':>8} {'ticks':>6}")
        t0 = time.monotonic()
        next_report = t0 + 1
        lat: list[int] = []
        n = ticks = 0
        while time.monotonic() - t0 < a.seconds + 2:
            for _f, _l, frame in sub.poll(100):
                now = time.time_ns()
                for r in decode(frame):
                    if r[2] == 0:
                        ticks += 1
                    else:
                        lat.append(now - prefix.unpack_from(r[6])[1])
                        n += 1
            if time.monotonic() >= next_report:
                lat.sort()
                p50 = lat[len(lat) // 2] / 1000 if lat else 0
                p99 = lat[int(len(lat) * 0.99)] / 1000 if lat else 0
                print(f"{time.monotonic() - t0:4.0f} {sub.next_seq - 1:>10} {n:>10} "
                      f"{p50:8.0f} {p99:8.0f} {ticks:>6}", flush=True)
                lat, n, ticks = [], 0, 0
                next_report += 1
        sub.close()
        print(f"log holds {sub.next_seq - 1} records; replay them with:\n"
              f"  seqex replay {stream} --replicator {reps[0]} --from 1 --to 20")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("SEQEX_LOG", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(prog="seqex", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    from deploy import keys
    keys.register(p, sub)   # --keys/--key/--insecure and `seqex keys` (docs/security.md)

    s = sub.add_parser("replicator", help="run a replicator process")
    s.add_argument("--data", required=True, help="LMDB directory")
    s.add_argument("--bind", required=True, help="ZeroMQ endpoint, e.g. tcp://127.0.0.1:7001")
    s.add_argument("--durability", choices=["os", "fsync"], default="os")
    s.add_argument("--peer", action="append", default=[],
                   help="another replicator, for catch-up and comparison (repeat)")
    s.set_defaults(fn=cmd_replicator)

    s = sub.add_parser("sequencer", help="run the sequencer master of one stream")
    s.add_argument("--stream", required=True)
    s.add_argument("--producers", required=True, help="endpoint producers connect to")
    s.add_argument("--pub", required=True, help="endpoint subscribers connect to")
    s.add_argument("--replicator", action="append", required=True, help="repeat per replicator")
    s.add_argument("--policy", choices=["first", "quorum", "all"], default="quorum")
    s.add_argument("--tick-ms", type=int, default=100)
    s.add_argument("--window-bytes", type=int, default=256 << 20,
                   help="recent frames kept to resend to replicators")
    s.add_argument("--max-uncommitted-bytes", type=int, default=None,
                   help="backpressure: refuse new batches beyond this (default window/4)")
    s.add_argument("--max-step-ms", type=int, default=1000,
                   help="sequenced time moves by at most this from one record to the next")
    s.add_argument("--upstream", action="append", default=[], help=(
        "take another stream as a source (repeat): 'stream=NAME,source=ID,pub=ADDR,"
        "replicators=ADDR|ADDR,kinds=K|K'"))
    s.set_defaults(fn=cmd_sequencer)

    s = sub.add_parser("replica", help="run an engine replica (hot or warm) on its in stream")
    s.add_argument("--name", required=True)
    s.add_argument("--engine", default="crossengine")
    s.add_argument("--engine-config", default="{}", help="JSON: the engine's parameters")
    s.add_argument("--stream", required=True, help="the input stream, e.g. in.ce.BTCUSDT")
    s.add_argument("--pub", required=True, help="the input stream's live feed")
    s.add_argument("--replicator", action="append", required=True)
    s.add_argument("--control", required=True, help="endpoint for PING/HASH/PROMOTE/STOP")
    s.add_argument("--role", choices=["hot", "warm"], default="hot")
    s.add_argument("--mirror", help="the out stream's mirror master (inputs endpoint)")
    s.add_argument("--snapshots", help="this replica's snapshot directory")
    s.add_argument("--shared-snapshots", help="a snapshot directory shared by the replicas")
    s.add_argument("--snapshot-every", type=int, default=100_000)
    s.add_argument("--snapshot-s", type=float, default=30.0)
    s.add_argument("--keep", type=int, default=3)
    s.set_defaults(fn=cmd_replica)

    s = sub.add_parser("mirror", help="run the mirror master of an out.* stream")
    s.add_argument("--stream", required=True)
    s.add_argument("--inputs", required=True, help="endpoint the hot engine replicas send to")
    s.add_argument("--pub", required=True, help="endpoint subscribers connect to")
    s.add_argument("--replicator", action="append", default=[], help="repeat per replicator")
    s.add_argument("--policy", choices=["none", "first", "quorum", "all"], default="none")
    s.add_argument("--from-seq", type=int, default=1,
                   help="with policy none: the first seq of the stream this mirror serves")
    s.set_defaults(fn=cmd_mirror)

    s = sub.add_parser("produce", help="send records into a stream")
    s.add_argument("--sequencer", required=True)
    s.add_argument("--source", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--rate", type=int, default=0)
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--window", type=int, default=100_000)
    s.add_argument("--kind", type=int, default=16)
    s.add_argument("--payload-bytes", type=int, default=64)
    s.add_argument("--acks", help="append acknowledged runs to this file")
    s.add_argument("--resend-from", type=int, help="resend from this source_seq on")
    s.add_argument("--timeout", type=float, default=120)
    s.set_defaults(fn=cmd_produce)

    s = sub.add_parser("tail", help="follow a stream (exactly once, resumable with --out)")
    s.add_argument("stream")
    s.add_argument("--pub", required=True)
    s.add_argument("--replicator", action="append", required=True)
    s.add_argument("--from", dest="from_seq", type=int, default=1)
    s.add_argument("--to", type=int)
    s.add_argument("--out")
    s.set_defaults(fn=cmd_tail)

    s = sub.add_parser("replay", help="print records of a stream from a replicator")
    s.add_argument("stream")
    s.add_argument("--replicator", help="default: the first replicator of the running cluster")
    s.add_argument("--data", default="seqex-data")
    s.add_argument("--rebuild", action="store_true",
                   help="rebuild the engine from the log and print its state hash")
    s.add_argument("--engine", help="with --rebuild: the engine (default: by the stream's name)")
    s.add_argument("--engine-config", help="with --rebuild: JSON of the engine's parameters "
                   "(a TradingEngine's specs, shard and n_shards)")
    s.add_argument("--from", dest="from_seq", type=int, default=1)
    s.add_argument("--to", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_replay)

    for verb, fn in (("ping", cmd_ping), ("stop", cmd_stop)):
        s = sub.add_parser(verb, help=f"{verb} a seqex server")
        s.add_argument("addr")
        s.add_argument("--timeout", type=float, default=2.0)
        s.set_defaults(fn=fn)

    s = sub.add_parser("up", help="start and supervise this host's processes")
    s.add_argument("--topology", help="TOML file (default: one machine over loopback)")
    s.add_argument("--data", help="data directory (default: the topology's, ./seqex-data)")
    s.add_argument("--base-port", type=int, help="first port (default: the topology's)")
    s.add_argument("--host", help="start only this host's processes")
    s.set_defaults(fn=cmd_up)

    for verb, fn, text in (("down", cmd_down, "stop a running `seqex up`"),
                           ("status", cmd_status, "the table of processes")):
        s = sub.add_parser(verb, help=text)
        s.add_argument("--data", default="seqex-data")
        s.set_defaults(fn=fn)

    s = sub.add_parser("submit", help="put one order into in.ce.SYMBOL")
    s.add_argument("--data", default="seqex-data")
    s.add_argument("--symbol", default="BTCUSDT")
    s.add_argument("--side", choices=["buy", "sell"], required=True)
    s.add_argument("--price", type=int, default=0, help="price in ticks")
    s.add_argument("--qty", type=int, required=True, help="quantity in lots")
    s.add_argument("--account", type=int, default=1)
    s.add_argument("--market", action="store_true")
    s.add_argument("--tif", choices=["gtc", "ioc", "fok"], default="gtc")
    s.add_argument("--client-order-id", type=int)
    s.add_argument("--source", type=int,
                   help="producer source id (default: from the pid; each client needs its own)")
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("demo", help="run a local log cluster with live figures")
    s.add_argument("--seconds", type=int, default=10)
    s.add_argument("--rate", type=int, default=30_000, help="records/s offered in total")
    s.add_argument("--data", help="directory for data and logs (default: a new temp dir)")
    s.set_defaults(fn=cmd_demo)

    args = p.parse_args(argv)
    keys.setup(args)
    _pin()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
