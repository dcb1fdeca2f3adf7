"""Three faults of the log, on real processes on 127.0.0.1, each under continuous load.

The last round fixed three faults with unit and model tests; these play them with real
processes: replicators, sequencers, `seqex produce` producers sending continuously and
subscribers (tests/process/digest_tail.py) that check contiguity and keep a digest of every
record they are given.

1. Two masters started together, both claiming the next epoch (3 replicators, quorum):
   at most one master serves an epoch, and the stream goes on under the survivor.
2. A replaying producer: its outbox holds records the master committed but whose ACK it
   never read (the master SIGKILLed after the commit); replayed to the new master, they are
   acknowledged (with their seqs, where the new master remembers them), nothing stalls, and
   new records follow without a gap. Twice: an outbox within the new master's tail, and one
   that starts further back than the tail.
3. A rotten copy: a byte flipped on disk in a frame of the tail, on the replicator whose log
   a new master adopts: the new master reads the tail from a good copy, serves, and the
   rotten frame is repaired from the peers.

Each run takes 7-16 s on two busy cores. The first test found nothing; the second found that
a producer reported records the new master remembered with seq None (fixed in mq/producer.py).

After every run, `check_run` checks: every replicator's log and every subscriber's feed is
contiguous from 1; no seq has two different records anywhere (replicators' stores and
subscribers); every record of every producer is in the log exactly once with its payload;
every acknowledged record is there at the seq its ACK named.

Kill points are seeded: the seed is printed, and SEQEX_SEED=N replays one (tests/seed.py).
"""
from __future__ import annotations

import os
import random
import re
import signal
import struct
import subprocess
import sys
import time

import pytest

from deploy.local import LogCluster
from deploy.procs import tcp
from mq import wire
from mq.control import ping, stats, wait_until
from mq.master import TAIL_RECORDS
from mq.producer import Producer
from mq.record import decode
from replicator.store import Store
from tests.process.digest_tail import record_digest
from tests.process.test_log_processes import lines, producer_args
from tests.seed import SEED

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC_PAYLOAD = struct.Struct("<QQ")   # deploy.cli produce: (source_seq, send time ns), padding


# -- helpers -------------------------------------------------------------------------------------
class Subscribers:
    """digest_tail subscriber processes; every one is killed at the end of the test."""

    def __init__(self, tmp: str):
        self.tmp = tmp
        self.procs: list[tuple[subprocess.Popen, str, str]] = []

    def start(self, cluster: LogCluster, pub: str, name: str) -> str:
        out = os.path.join(self.tmp, f"{name}.txt")
        log = open(os.path.join(self.tmp, f"{name}.log"), "ab")
        popen = subprocess.Popen(
            [sys.executable, "-m", "tests.process.digest_tail", cluster.stream, pub, out,
             *cluster.rep_addrs], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
        self.procs.append((popen, out, name))
        return out

    def reached(self, seq: int) -> bool:
        for popen, out, name in self.procs:
            assert popen.poll() in (None, 0), \
                f"subscriber {name} exited {popen.returncode}: {self.log(name)}"
            if _last_seq(out) < seq:
                return False
        return True

    def log(self, name: str) -> str:
        with open(os.path.join(self.tmp, f"{name}.log"), errors="replace") as f:
            return f.read()[-2000:]

    def stop(self) -> None:
        for popen, _out, _name in self.procs:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
                try:
                    popen.wait(10)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait()

    @property
    def outputs(self) -> list[str]:
        return [out for _p, out, _n in self.procs]


def _last_seq(path: str) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read()
    except OSError:
        return 0
    end = tail.rfind(b"\n")
    if end < 0:
        return 0
    start = tail.rfind(b"\n", 0, end) + 1
    return int(tail[start:end].split()[0])


def acked_prefix(path: str) -> int:
    """The highest source_seq up to which a producer's acks file is contiguous from 1."""
    top = 0
    if not os.path.exists(path):
        return 0
    for ss_first, ss_last, _seq in sorted(lines(path)):
        if ss_first > top + 1:
            break
        top = max(top, ss_last)
    return top


def stream_last(addr: str, stream: str) -> int:
    return ((ping(addr) or {}).get("streams", {}).get(stream, {}) or {}).get("last", -1)


def wait_replicated(cluster: LogCluster, timeout_s: float = 60) -> int:
    """Every replicator holds the same last seq (after the drain); that seq."""
    def equal():
        lasts = {stream_last(a, cluster.stream) for a in cluster.rep_addrs}
        return lasts.pop() if len(lasts) == 1 and -1 not in lasts else None
    return wait_until(equal, timeout_s, "equal replicators")


def sequencer_args(cluster: LogCluster, prod: str, pub: str) -> list[str]:
    args = ["sequencer", "--stream", cluster.stream, "--producers", prod, "--pub", pub,
            "--policy", cluster.policy, "--tick-ms", str(cluster.tick_ms)]
    for addr in cluster.rep_addrs:
        args += ["--replicator", addr]
    return args


def served_epochs(log: str) -> set[int]:
    """The epochs a sequencer took the stream over with (its 'ready ... epoch N' lines)."""
    return {int(m) for m in re.findall(r"^sequencer ready \S+ \S+ epoch (\d+)$", log, re.M)}


def check_run(cluster: LogCluster, tmp: str, subs: list[str], counts: dict[int, int],
              extra_acks: dict[int, list] | None = None) -> list:
    """The invariants of every run (call after cluster.stop()). counts: source -> how many
    records it submitted (source_seqs 1..count). Acks: each source's acks file
    (acks<src>.txt, all its incarnations) plus extra_acks (runs an in-process producer got)."""
    digests: dict[int, str] = {}
    where: dict[int, str] = {}

    def note(seq: int, digest: str, what: str) -> None:
        if digests.setdefault(seq, digest) != digest:
            raise AssertionError(f"seq {seq} holds two different records: in {where[seq]} "
                                 f"and in {what}")
        where.setdefault(seq, what)

    logs = []
    for i in range(len(cluster.rep_addrs)):
        store = Store(cluster.data_dir(i), map_size=1 << 30)
        recs = decode(store.stream(cluster.stream).read(1))
        store.close()
        assert [r[0] for r in recs] == list(range(1, len(recs) + 1)), \
            f"replicator {i}: its log is not contiguous from 1"
        for r in recs:
            note(r[0], record_digest(r), f"replicator {i}")
        logs.append(recs)
    log = max(logs, key=len)
    assert all(len(x) == len(log) for x in logs), \
        f"replicators end at different seqs: {[len(x) for x in logs]}"
    epochs = [r[4] for r in log]
    assert epochs == sorted(epochs), "epochs go down along the log"
    for path in subs:
        got = [line.split() for line in open(path)]
        seqs = [int(g[0]) for g in got]
        assert seqs == list(range(1, len(seqs) + 1)), f"{path}: not contiguous from 1"
        assert len(seqs) >= len(log), f"{path}: ends at {len(seqs)}, the log at {len(log)}"
        for g in got:
            note(int(g[0]), g[4], os.path.basename(path))
    at: dict[tuple[int, int], int] = {}
    for seq, _ts, src, ss, _ep, _kind, payload, _route in log:
        if src == 0:
            continue
        assert (src, ss) not in at, f"record {src}:{ss} is in the log twice"
        assert SRC_PAYLOAD.unpack_from(payload)[0] == ss, f"record {src}:{ss}: other payload"
        at[(src, ss)] = seq
    for src, count in counts.items():
        held = sorted(ss for s, ss in at if s == src)
        assert held == list(range(1, count + 1)), \
            f"source {src}: the log holds {len(held)} records, not 1..{count} once"
        runs = list((extra_acks or {}).get(src, []))
        path = os.path.join(tmp, f"acks{src}.txt")
        if os.path.exists(path):
            runs += [tuple(x) for x in lines(path)]
        acked = set()
        for ss_first, ss_last, seq_first in runs:
            for k in range(ss_last - ss_first + 1):
                assert (src, ss_first + k) in at, f"acknowledged {src}:{ss_first + k} is lost"
                if seq_first is not None and seq_first >= 0:
                    assert at[(src, ss_first + k)] == seq_first + k, \
                        f"the ACK of {src}:{ss_first + k} named seq {seq_first + k}, " \
                        f"the log holds it at {at[(src, ss_first + k)]}"
                acked.add(ss_first + k)
        assert acked == set(range(1, count + 1)), \
            f"source {src}: {count - len(acked)} records never acknowledged"
    return log


def established_to(pid: int, ports: set[int]) -> set[int]:
    """Which of `ports` (on 127.0.0.1) process pid holds an established TCP connection to."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        with open(f"/proc/{pid}/net/tcp") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return set()
    found = set()
    for row in rows:
        cols = row.split()
        if cols[3] == "01" and cols[9] in inodes:   # ESTABLISHED, one of its sockets
            found.add(int(cols[2].split(":")[1], 16))
    return found & ports


# -- 1. two masters claim one epoch ---------------------------------------------------------------
COUNT1, RATE1, ROUNDS1 = 12_000, 1_500, 3


def _race(cluster: LogCluster, tmp: str, subs: Subscribers, prods: dict, rnd: int) -> tuple:
    """The current master is SIGKILLed (by the caller); two masters start at once, A on the
    cluster's endpoints (producer 1 and subscriber subA follow them), B on new ones (producer
    2 is restarted against it, resending from its first unacknowledged record, and a
    subscriber follows B's feed). The replicators are frozen until both masters are
    connected, and both masters are then frozen and thawed together, so that both ask their
    STATE before either can CLAIM. Returns the masters,
    their producer endpoints and the survivor's name once one master alone is left serving."""
    group = cluster.group
    for rep in cluster.replicators:
        rep.popen.send_signal(signal.SIGSTOP)
    prod_b, pub_b = tcp(), tcp()
    masters = {"A": group.spawn(f"masterA{rnd}", sequencer_args(
                   cluster, cluster.prod_addr, cluster.pub_addr)),
               "B": group.spawn(f"masterB{rnd}", sequencer_args(cluster, prod_b, pub_b))}
    addrs = {"A": cluster.prod_addr, "B": prod_b}
    subs.start(cluster, pub_b, f"subB{rnd}")
    prods[2].kill()
    args = producer_args(cluster, tmp, 2, COUNT1, RATE1)
    args[args.index("--sequencer") + 1] = prod_b
    resend = acked_prefix(os.path.join(tmp, "acks2.txt")) + 1
    prods[2] = group.spawn(f"producer2-B{rnd}", args + ["--timeout", "90", "--resend-from",
                                                        str(resend)])
    ports = {int(a.rsplit(":", 1)[1]) for a in cluster.rep_addrs}
    try:
        wait_until(lambda: all(established_to(m.popen.pid, ports) == ports
                               for m in masters.values()), 60,
                   "both masters connected to every replicator")
        # Both masters wait for their handshakes; thawed together, they ask at once.
        for m in masters.values():
            m.popen.send_signal(signal.SIGSTOP)
    finally:
        for rep in cluster.replicators:
            rep.popen.send_signal(signal.SIGCONT)
        for m in masters.values():
            m.popen.send_signal(signal.SIGCONT)

    def one_left():
        serving = {k: (ping(addrs[k], timeout_s=0.5) or {}).get("epoch")
                   for k, m in masters.items() if m.alive}
        if serving.get("A") and serving.get("A") == serving.get("B"):
            raise AssertionError(f"round {rnd}: both masters serve epoch {serving['A']}")
        if len(serving) == 1 and all(serving.values()):
            return next(iter(serving))
        return None
    survivor = wait_until(one_left, 90, "one master left serving")
    loser = "B" if survivor == "A" else "A"
    print(f"round {rnd}: master {survivor} serves epoch {stats(addrs[survivor])['epoch']}; "
          f"master {loser} exited {masters[loser].popen.returncode}")
    return masters, addrs, survivor


@pytest.mark.timeout(300)
def test_two_masters_started_together_never_serve_one_epoch(tmp_path):
    rng = random.Random(f"{SEED}-two-masters")
    gaps = [rng.randint(500, 1_500) for _ in range(ROUNDS1)]
    print(f"seed {SEED}: {ROUNDS1} rounds; each kills the serving master {gaps} seqs after "
          "the last takeover and starts two at once")
    tmp = str(tmp_path)
    subs = Subscribers(tmp)
    try:
        with LogCluster(tmp, replicators=3, policy="quorum") as cluster:
            cluster.start()
            group = cluster.group
            subs.start(cluster, cluster.pub_addr, "subA")
            prods = {s: group.spawn(f"producer{s}", producer_args(cluster, tmp, s, COUNT1, RATE1)
                                    + ["--timeout", "90"]) for s in (1, 2)}
            current, addr, all_masters = cluster.sequencer, cluster.prod_addr, []
            for rnd, gap in enumerate(gaps):
                at = (ping(addr) or {}).get("last", 0) + gap
                wait_until(lambda at=at, addr=addr: (ping(addr) or {}).get("last", 0) >= at,
                           60, f"seq {at}")
                current.kill()
                masters, addrs, survivor = _race(cluster, tmp, subs, prods, rnd)
                all_masters += masters.values()
                current, addr = masters[survivor], addrs[survivor]
            # The loser's producer moves to the survivor, resending what it lacks acks for.
            victim = 1 if survivor == "B" else 2
            prods[victim].kill()
            resend = acked_prefix(os.path.join(tmp, f"acks{victim}.txt")) + 1
            args = producer_args(cluster, tmp, victim, COUNT1, RATE1 * 2)
            args[args.index("--sequencer") + 1] = addr
            prods[victim] = group.spawn(f"producer{victim}-again",
                                        args + ["--timeout", "90", "--resend-from", str(resend)])
            for p in prods.values():
                assert p.wait(150) == 0, p.log()[-3000:]
            call_stop(addr)
            current.wait(60)
            top = wait_replicated(cluster)
            wait_until(lambda: subs.reached(top), 60, f"subscribers to reach seq {top}")
            subs.stop()
            logs = {m.name: m.log() for m in all_masters}
            cluster.stop()
        epochs = {name: served_epochs(text) for name, text in logs.items()}
        print(f"epochs served: {epochs}")
        owner: dict[int, str] = {}
        for name, served in epochs.items():
            for e in served:
                assert owner.setdefault(e, name) == name, \
                    f"epoch {e} served by {owner[e]} and by {name}"
        log = check_run(cluster, tmp, subs.outputs, {1: COUNT1, 2: COUNT1})
        # every epoch of the log past the first master's was announced by one master alone
        assert {r[4] for r in log} - {1} <= set(owner), (sorted({r[4] for r in log}), owner)
    finally:
        subs.stop()


def call_stop(addr: str) -> None:
    from mq import wire
    from mq.control import call
    call(addr, wire.STOP, timeout_s=60)    # (a master just restarted answers once recovered)


def at_seq(log: list, src: int, ss: int) -> int:
    return next(r[0] for r in log if r[2] == src and r[3] == ss)


# -- 2. a replaying producer ----------------------------------------------------------------------
COUNT2, RATE2 = 9_000, 2_000   # each background producer
VICTIM, BATCH2 = 3, 20


def _payloads(first: int, n: int) -> list[bytes]:
    return [SRC_PAYLOAD.pack(ss, 0) + b"r" * 16 for ss in range(first, first + n)]


def _raw_acks(prod: Producer, timeout_ms: int) -> int:
    """Take the master's answers off the producer's socket without letting the producer see
    them (its process is about to die with them unread): the highest ACK 'next'."""
    top = 0
    while prod.sock.poll(timeout_ms):
        timeout_ms = 0
        kind, body = prod.sock.recv_multipart()[:2]
        if kind == wire.ACK:
            top = max(top, wire.unpack(body)["next"])
    return top


@pytest.mark.timeout(300)
@pytest.mark.parametrize("outbox", ["recent", "older_than_the_tail"])
def test_a_replaying_producer_is_told_what_is_committed_and_never_stalls(tmp_path, outbox):
    """outbox "recent": the persisted outbox starts a little below the producer's last ACK,
    inside the tail the new master reads, so every replayed record comes back with its seq.
    "older_than_the_tail": it starts among the producer's first records, more than
    TAIL_RECORDS (10,000) seqs before the end of the log: the new master does not remember
    their seqs, the producer asks, and reports those it asked for with seq None after a
    second (docs/log.md, Producer), and the rest, which the master remembers, with their
    seqs. The replay is paced (slower than that second), so records are still queued after
    the answer. Before e316ef4 such records waited in the outbox forever (flush timed out
    here); before 84b3400 they were all reported with seq None (this test found it)."""
    rng = random.Random(f"{SEED}-replaying-producer-{outbox}")
    old = outbox != "recent"
    kill_at = rng.randint(13_000, 15_000) if old else rng.randint(2_000, 4_000)
    burst = rng.randint(5, 25)         # batches committed whose ACK the producer never reads
    print(f"seed {SEED}: the master is killed at seq {kill_at} after committing {burst} "
          f"batches of source {VICTIM} it never acknowledged; the persisted outbox is "
          f"{outbox}")
    tmp = str(tmp_path)
    subs = Subscribers(tmp)
    acks: list[tuple] = []
    try:
        with LogCluster(tmp, replicators=3, policy="quorum") as cluster:
            cluster.start()
            group = cluster.group
            for i in range(2):
                subs.start(cluster, cluster.pub_addr, f"sub{i}")
            prods = [group.spawn(f"producer{s}", producer_args(cluster, tmp, s, COUNT2, RATE2)
                                 + ["--timeout", "90"]) for s in (1, 2)]
            # The victim producer runs here, sending continuously until the kill point.
            victim = Producer(VICTIM, cluster.prod_addr)
            victim.connect()
            while cluster.status().get("last", 0) < kill_at:
                victim.submit(32, _payloads(victim.next_ss, BATCH2))
                acks += victim.poll(10)
            # A last burst that the master commits; its ACKs are taken off the socket
            # unread, and then the master is SIGKILLed: committed, never acknowledged.
            known = victim.acked_next
            for _ in range(burst):
                victim.submit(32, _payloads(victim.next_ss, BATCH2))
            end = victim.next_ss - 1
            wait_until(lambda: _raw_acks(victim, 50) > end, 30,
                       "the master to commit the burst")
            cluster.sequencer.kill()
            assert victim.acked_next == known and victim.outbox, "the producer saw the ACK"
            victim.close()   # the producer process dies with its outbox persisted
            cluster.start_sequencer()
            # Its next incarnation replays the persisted outbox from `start`.
            start = rng.randint(1, 200) if old else max(1, known - rng.randint(0, 300))
            print(f"acknowledged before the kill: {known - 1}; committed: {end}; "
                  f"replayed from {start}")
            again = Producer(VICTIM, cluster.prod_addr, next_ss=start)
            got: list[tuple] = []   # what it reports acknowledged, with the seqs
            # at its own pace (a batch every 8 ms, as `seqex produce --rate` would): the
            # replay outlasts the producer's 1 s wait for the seqs it asks for
            paced = time.monotonic()
            while again.next_ss <= end:
                again.submit(32, _payloads(again.next_ss, min(BATCH2, end - again.next_ss + 1)))
                paced += 0.008
                while (left := paced - time.monotonic()) > 0:
                    got += again.poll(max(1, int(left * 1000)))
            got += again.flush(30)   # the outbox empties: nothing waits for an ACK in vain
            # new records follow without a gap
            for _ in range(10):
                again.submit(32, _payloads(again.next_ss, BATCH2))
            got += again.flush(30)
            total = again.next_ss - 1
            again.close()
            for p in prods:
                assert p.wait(150) == 0, p.log()[-3000:]
            cluster.drain()
            top = wait_replicated(cluster)
            wait_until(lambda: subs.reached(top), 60, f"subscribers to reach seq {top}")
            subs.stop()
            cluster.stop()
        log = check_run(cluster, tmp, subs.outputs, {1: COUNT2, 2: COUNT2, VICTIM: total},
                        extra_acks={VICTIM: acks + got})
        unacked_committed = [r for r in log if r[2] == VICTIM and known <= r[3] <= end]
        assert unacked_committed and all(r[4] == 1 for r in unacked_committed), \
            "the precondition: records the first master committed and never acknowledged"
        reported = sorted(ss for a, b, _s in got for ss in range(a, b + 1))
        assert reported == list(range(start, total + 1)), "the replay's reports have gaps"
        adopted = min(r[0] for r in log if r[4] == 2) - 1
        for a, b, seq in got:
            if seq is None:   # only records older than the tail the new master read
                assert old and all(at_seq(log, VICTIM, ss) <= adopted - TAIL_RECORDS
                                   for ss in (a, b)), (a, b, adopted)
        assert any(s is None for _a, _b, s in got) == old, got[:5]
    finally:
        subs.stop()


# -- 3. a rotten copy on the replicator a new master reads its tail from --------------------------
COUNT3, RATE3 = 9_000, 2_000


def flip_a_byte_on_disk(data_dir: str, stream: str, key: bytes) -> int:
    """Flip one byte of the frame stored under `key`, in data.mdb itself (the replicator is
    stopped): every copy of the value's bytes in the file (pages LMDB has since copied keep old
    copies, which are harmless). Returns how many copies were changed."""
    store = Store(data_dir, map_size=1 << 30)
    log = store.stream(stream)
    with store.env.begin() as txn:
        value = bytes(txn.get(key, db=log.log_db))
    store.close()
    name = os.path.join(data_dir, "data.mdb")
    with open(name, "r+b") as f:
        data = f.read()
        at, hits = data.find(value), 0
        while at >= 0:
            f.seek(at + 4 + (len(value) - 4) // 2)   # past the CRC, in the records
            f.write(bytes([data[at + 4 + (len(value) - 4) // 2] ^ 0x5A]))
            hits += 1
            at = data.find(value, at + 1)
    return hits


@pytest.mark.timeout(300)
def test_a_rotten_copy_where_the_new_master_reads_its_tail(tmp_path):
    rng = random.Random(f"{SEED}-rotten-copy")
    kill_at = rng.randint(4_000, 7_000)
    print(f"seed {SEED}: the master is killed at seq {kill_at}; a frame of the adopted log "
          "rots on disk")
    tmp = str(tmp_path)
    subs = Subscribers(tmp)
    try:
        with LogCluster(tmp, replicators=3, policy="quorum") as cluster:
            cluster.start()
            group, stream = cluster.group, cluster.stream
            for i in range(2):
                subs.start(cluster, cluster.pub_addr, f"sub{i}")
            prods = [group.spawn(f"producer{s}", producer_args(cluster, tmp, s, COUNT3, RATE3)
                                 + ["--timeout", "90"]) for s in (1, 2)]
            wait_until(lambda: cluster.status().get("last", 0) >= kill_at, 60, f"seq {kill_at}")
            cluster.sequencer.kill()
            seen: list = []

            def settled():   # the replicators' positions stay the same for 20 looks
                now = [(ping(a) or {}).get("streams", {}).get(stream) for a in cluster.rep_addrs]
                seen[:] = (seen + [now])[-20:] if seen and seen[-1] == now else [now]
                return len(seen) == 20 and all(now) and now
            states = wait_until(settled, 60, "the replicators to settle")
            lasts = [st["last"] for st in states]
            best = lasts.index(max(lasts))   # the log a new master adopts (lowest index wins)
            others = min(x for i, x in enumerate(lasts) if i != best)
            tail_from = max(1, min(max(st["commit"] for st in states) + 1,
                                   lasts[best] - TAIL_RECORDS + 1))
            cluster.replicators[best].kill()
            store = Store(cluster.data_dir(best), map_size=1 << 30)
            log = store.stream(stream)
            with store.env.begin() as txn:
                keys = [bytes(k) for k, _v in txn.cursor(db=log.log_db)]
            store.close()
            firsts = [struct.unpack(">Q", k)[0] for k in keys]
            ends = [b - 1 for b in firsts[1:]] + [lasts[best]]
            candidates = [k for k, a, b in zip(keys, firsts, ends, strict=True)
                          if a >= tail_from and b <= others]
            key = rng.choice(candidates)
            assert flip_a_byte_on_disk(cluster.data_dir(best), stream, key) >= 1
            print(f"replicator {best} (lasts {lasts}) rots the frame at seq "
                  f"{struct.unpack('>Q', key)[0]}; the new master reads from {tail_from}")
            # Back without its peers for now, so that nothing repairs the frame before the
            # new master reads its tail.
            rotten = cluster.replicators[best]
            with_peers = list(rotten.args)
            rotten.args = [a for i, a in enumerate(with_peers)
                           if a != "--peer" and (i == 0 or with_peers[i - 1] != "--peer")]
            cluster.restart_replicator(best)
            cluster.start_sequencer()
            master_log = cluster.sequencer.log()
            # it moved on at the damaged copy's error, not after waiting on it
            assert re.search(rf"{re.escape(cluster.rep_addrs[best])} did not serve the tail "
                             r"from \d+ \(an error\)", master_log), master_log[-3000:]
            assert stats(cluster.rep_addrs[best])["damaged_reads"] >= 1
            assert "damaged frames in" in rotten.log(), "the damage was not reported"
            # Its peers back: the rotten frame is repaired from them.
            rotten.kill()
            rotten.args = with_peers
            cluster.restart_replicator(best)
            wait_until(lambda: (ping(cluster.rep_addrs[best]) or {}).get("repaired_records"),
                       90, "the rotten frame to be repaired from the peers")
            for p in prods:
                assert p.wait(150) == 0, p.log()[-3000:]
            cluster.drain()
            top = wait_replicated(cluster)
            wait_until(lambda: subs.reached(top), 60, f"subscribers to reach seq {top}")
            subs.stop()
            cluster.stop()
        check_run(cluster, tmp, subs.outputs, {1: COUNT3, 2: COUNT3})
    finally:
        subs.stop()
