"""The out stream heals after a fault of its mirror under load (real processes on 127.0.0.1).

in.ce.T -> 2 hot + 1 warm CrossEngine replicas -> out.ce.T (mirror, policy first). Orders go
in open-loop at about RATE a second. Mid-run the mirror is frozen (SIGSTOP) for FREEZE_S, as a
slow restart on a busy host leaves it, then killed with SIGKILL and started again, while the
load goes on (variants below). Frames the hot replicas sent into the dead connection, and
frames the old mirror took but never committed, are gone: the new mirror must get them again
from the replicas. A slow campaign runs the variants over ten seeds.

Proves: out.ce.T catches up with in.ce.T within a generous deadline, holds every seq once and
in order, equals byte for byte a fresh engine's outputs over the in stream's log, the mirror
saw no divergence, and the live replicas end with one state hash.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time

import pytest

from deploy.local import LogCluster
from deploy.procs import tcp
from mq import wire
from mq.control import call, ping, stats, wait_until
from mq.producer import Producer
from tests.process.test_replicas import commands, feed, read_out, reference_outputs, start_replica
from tests.seed import CAMPAIGN_SEEDS

SEED = int(os.environ.get("SEQEX_SEED", "20261122"))
RATE = int(os.environ.get("SEQEX_MIRROR_RATE", "2500"))   # orders a second, open-loop
SECONDS = 12
FREEZE_S = 3.0


def out_path(cluster: LogCluster, tmp: str) -> tuple:
    """out.ce.T's replicator and mirror (policy first), and 2 hot + 1 warm replicas of
    in.ce.T: (the out replicator's and the mirror's processes, the mirror's inputs and
    publisher, the out replicator's address, the replicas' control addresses and processes)."""
    mirror_in, mirror_pub, out_rep = tcp(), tcp(), tcp()
    out_replicator = cluster.group.spawn("out-replicator", [
        "replicator", "--data", os.path.join(tmp, "out-replicator"), "--bind", out_rep])
    wait_until(lambda: ping(out_rep), 30, "the out stream's replicator")
    mirror = cluster.group.spawn("mirror", [
        "mirror", "--stream", "out.ce.T", "--inputs", mirror_in, "--pub", mirror_pub,
        "--policy", "first", "--replicator", out_rep])
    wait_until(lambda: ping(mirror_in), 30, "the mirror")
    controls = {n: tcp() for n in ("hotA", "hotB", "warm")}
    procs = {n: start_replica(cluster, n, "warm" if n == "warm" else "hot", mirror_in, tmp,
                              controls[n]) for n in controls}
    for n in controls:
        for attempt in range(3):
            # A control port from tcp() lies in the kernel's ephemeral range, where an
            # outgoing connection of another process can take it before the replica binds
            # it (a CI run saw a replica not answer for 30 s): one that exited is started
            # again on another port, its last words printed.
            proc = procs[n]
            wait_until(lambda addr=controls[n], proc=proc: ping(addr) or not proc.alive, 90,
                       f"replica {n}")
            if proc.alive:
                break
            print(f"replica {n} exited at its start ({proc.popen.returncode}): "
                  f"{proc.log().strip().splitlines()[-1:]}; starting it on another port")
            assert attempt < 2, f"replica {n} exited at each of 3 starts"
            controls[n] = tcp()
            procs[n] = start_replica(cluster, n, "warm" if n == "warm" else "hot", mirror_in,
                                     tmp, controls[n])
    return out_replicator, mirror, mirror_in, mirror_pub, out_rep, controls, procs


def feed_open_loop(prod: Producer, cmds: list[tuple[int, bytes]], rate: int,
                   stop: threading.Event) -> None:
    """Submit cmds on a fixed schedule (command i due at start + i/rate), whatever is due as
    one batch, so that a stall downstream never slows the offered load."""
    start = time.monotonic()
    i = prod.next_ss - 1
    while i < len(cmds) and not stop.is_set():
        due = min(len(cmds), int((time.monotonic() - start) * rate))
        while i < due:
            j = min(due, i + 256)
            prod.submit_many(cmds[i:j])
            i = j
        prod.poll(5)
    while prod.outbox and not stop.is_set():
        prod.poll(50)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", ["two_hot", "one_hot", "promote_warm", "uncommitted"])
def test_out_stream_heals_after_mirror_freeze_and_sigkill_under_load(tmp_path, scenario):
    """two_hot: both hot replicas run throughout. one_hot: one hot replica was killed before
    the load, so the other alone must resend what was lost. promote_warm: once the mirror is
    back, both hot replicas are killed and the warm one is promoted: it resends from the
    mirror's commit point, far back (the mirror once died of RecursionError there).
    uncommitted: instead of the mirror, the out stream's replicator is frozen, so the mirror
    takes and acknowledges frames it cannot commit; then it is killed and restarted: it lacks
    what the replicas were told it had, and asks for it when their next frames arrive."""
    rng = random.Random(f"{SEED}-mirror-faults-{scenario}")
    freeze_at_s = rng.uniform(2.0, 4.0)
    print(f"seed {SEED}: {scenario}, {RATE} orders/s for {SECONDS} s; mirror frozen at "
          f"{freeze_at_s:.2f} s for {FREEZE_S} s, then SIGKILL and restart")
    tmp = str(tmp_path)
    cmds = (commands() * (RATE * SECONDS // 12_000 + 1))[:RATE * SECONDS]
    with LogCluster(tmp, stream="in.ce.T", replicators=1, policy="first") as cluster:
        cluster.start()
        (out_replicator, mirror, mirror_in, mirror_pub, out_rep, controls,
         procs) = out_path(cluster, tmp)
        if scenario == "one_hot":
            procs["hotB"].kill()
        prod = Producer(1, cluster.prod_addr)
        prod.connect()
        stop = threading.Event()
        feeder = threading.Thread(target=feed_open_loop, args=(prod, cmds, RATE, stop))
        started = time.monotonic()
        feeder.start()
        try:
            time.sleep(freeze_at_s)
            before = stats(mirror_in)["last"]
            frozen = out_replicator if scenario == "uncommitted" else mirror
            os.kill(frozen.popen.pid, signal.SIGSTOP)
            time.sleep(FREEZE_S)
            if scenario == "uncommitted":
                status = stats(mirror_in)
                print(f"mirror took up to {status['last']}, committed {status['committed']}")
            mirror.kill()   # SIGKILL reaches a stopped process
            if scenario == "uncommitted":
                os.kill(frozen.popen.pid, signal.SIGCONT)
            mirror.start()
            wait_until(lambda: ping(mirror_in), 60, "the restarted mirror")
            restarted = time.monotonic()
            target = cluster.stats()["last"]
            print(f"mirror frozen at out seq {before}; restarted at "
                  f"{restarted - started:.1f} s, in.ce.T then at {target}")
            if scenario == "promote_warm":
                procs["hotA"].kill()
                procs["hotB"].kill()
                _k, answer, _ = call(controls["warm"], wire.PROMOTE, timeout_s=30)
                assert answer.get("role") == "hot", answer
                print(f"warm promoted, resending from {answer['resent_from']}")
            wait_until(lambda: (ping(mirror_in) or {}).get("committed", 0) >= target, 120,
                       f"out.ce.T to pass {target}")
            print(f"out.ce.T passed {target} {time.monotonic() - restarted:.2f} s after the "
                  f"mirror answered again (load going on)")
            feeder.join(SECONDS * 20)
            assert not feeder.is_alive(), "the producer could not place its orders"
        finally:
            stop.set()
            feeder.join(30)
        prod.flush(120)
        # Stop the in stream (no more ticks); then the out stream must reach its end.
        cluster.drain()
        last = stats(cluster.rep_addrs[0])["streams"]["in.ce.T"]["last"]
        t0 = time.monotonic()
        try:
            wait_until(lambda: (ping(mirror_in) or {}).get("committed", 0) >= last, 120,
                       f"out.ce.T to catch up with in.ce.T at {last}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; the mirror: {ping(mirror_in)}") from None
        print(f"out.ce.T caught up at {last} {time.monotonic() - t0:.1f} s after the load ended")
        live = [n for n in controls if procs[n].alive]
        for n in live:
            wait_until(lambda n=n: (ping(controls[n]) or {}).get("seq") == last, 60,
                       f"{n} at {last}")
        hashes = {n: call(controls[n], wire.HASH)[1]["hash"] for n in live}
        assert len(set(hashes.values())) == 1, hashes
        status = stats(mirror_in)
        assert status["divergences"] == 0, status["alarms"]
        if scenario == "uncommitted":   # it said it was behind, from where, and when it healed
            assert "behind for" in mirror.log() and "caught up" in mirror.log(), mirror.log()
        got = read_out(mirror_pub, [out_rep], last)
        assert [r[0] for r in got] == list(range(1, last + 1))  # no gap, no duplicate
        assert [r[6] for r in got] == reference_outputs(cluster, last)
        print(f"mirror: held {status['held_frames']} frames, dropped {status['dropped_held']}, "
              f"gaps reported {status['gaps_reported']}; replicas: "
              + ", ".join(f"{n} resends {stats(controls[n])['resends']}" for n in live))
        prod.close()


@pytest.mark.timeout(300)
def test_hot_replicas_restarted_while_the_mirror_is_frozen_compute_what_it_lacks_again(
        tmp_path):
    """The mirror is frozen (SIGSTOP) and both hot replicas are SIGKILLed; the load goes on
    and the warm replica writes snapshots beyond the out stream's commit point; the hot
    replicas are restarted while the mirror is still frozen. They cannot learn how far it
    committed (it does not answer), restore from the newest snapshot, and hold none of the
    outputs between. Once the mirror is back, no replica sends them: the out stream stalled for good until an
    operator restarted or promoted a replica. Now each hot replica rebuilds its engine from a
    point the mirror holds (mq/replica.py REGENERATE_S) and computes them again: the out
    stream becomes whole, byte for byte a fresh engine's outputs."""
    tmp = str(tmp_path)
    cmds = commands()[:6000]
    with LogCluster(tmp, stream="in.ce.T", replicators=1, policy="first") as cluster:
        cluster.start()
        _out_replicator, mirror, mirror_in, mirror_pub, out_rep, controls, procs = \
            out_path(cluster, tmp)
        prod = Producer(1, cluster.prod_addr)
        prod.connect()
        feed(cluster, cmds, 2000, prod)
        prod.flush(120)
        first_last = cluster.stats()["last"]
        wait_until(lambda: (ping(mirror_in) or {}).get("committed", 0) >= first_last, 60,
                   f"out.ce.T at {first_last}")
        os.kill(mirror.popen.pid, signal.SIGSTOP)
        try:
            committed = first_last
            for n in ("hotA", "hotB"):
                procs[n].kill()
            feed(cluster, cmds, len(cmds), prod)
            prod.flush(120)
            wait_until(lambda: (ping(controls["warm"]) or {}).get("snapshot_seq", 0)
                       > committed + 1000, 60, "a warm snapshot beyond the out stream")
            for n in ("hotA", "hotB"):
                procs[n].start()
            for n in ("hotA", "hotB"):
                wait_until(lambda n=n: (ping(controls[n]) or {}).get("restored_from", 0)
                           > committed + 1000, 60, f"{n} restored beyond the out stream")
        finally:
            os.kill(mirror.popen.pid, signal.SIGCONT)
        cluster.drain()
        last = stats(cluster.rep_addrs[0])["streams"]["in.ce.T"]["last"]
        try:
            wait_until(lambda: (ping(mirror_in) or {}).get("committed", 0) >= last, 120,
                       f"out.ce.T to catch up with in.ce.T at {last}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; the mirror: {ping(mirror_in)}; the replicas: "
                                 f"{[ping(controls[n]) for n in ('hotA', 'hotB')]}") from None
        assert sum(stats(controls[n])["regenerated"] for n in ("hotA", "hotB")) >= 1
        for n in controls:
            wait_until(lambda n=n: (ping(controls[n]) or {}).get("seq") == last, 60,
                       f"{n} at {last}")
        hashes = {n: call(controls[n], wire.HASH)[1]["hash"] for n in controls}
        assert len(set(hashes.values())) == 1, hashes
        status = stats(mirror_in)
        assert status["divergences"] == 0, status["alarms"]
        got = read_out(mirror_pub, [out_rep], last)
        assert [r[0] for r in got] == list(range(1, last + 1))  # no gap, no duplicate
        assert [r[6] for r in got] == reference_outputs(cluster, last)
        prod.close()


@pytest.mark.timeout(300)
def test_restarted_mirror_gets_what_it_lacks_at_idle_from_a_lone_hot_replica(tmp_path):
    """A mirror without replicators (policy none) is killed once it holds every output, and
    comes back empty (from seq 1). No new input arrives (no ticks: tick_ms is ten minutes), so
    only the replica's probe can tell it what the mirror lacks: the lone hot replica resends
    its kept outputs and the out stream is whole again."""
    tmp = str(tmp_path)
    cmds = commands()[:3000]
    with LogCluster(tmp, stream="in.ce.T", replicators=1, policy="first",
                    tick_ms=600_000) as cluster:
        cluster.start()
        mirror_in, mirror_pub = tcp(), tcp()
        mirror = cluster.group.spawn("mirror", [
            "mirror", "--stream", "out.ce.T", "--inputs", mirror_in, "--pub", mirror_pub,
            "--policy", "none"])
        wait_until(lambda: ping(mirror_in), 30, "the mirror")
        control = tcp()
        start_replica(cluster, "hotA", "hot", mirror_in, tmp, control)
        wait_until(lambda: ping(control), 30, "the replica")
        prod = Producer(1, cluster.prod_addr)
        prod.connect()
        for i in range(0, len(cmds), 200):
            prod.submit_many(cmds[i:i + 200])
        prod.flush(120)
        last = cluster.stats()["last"]
        wait_until(lambda: (ping(mirror_in) or {}).get("last") == last, 60,
                   f"the out stream at {last}")
        mirror.kill()
        mirror.start()
        wait_until(lambda: ping(mirror_in), 30, "the restarted mirror")
        try:
            wait_until(lambda: (ping(mirror_in) or {}).get("last") == last, 60,
                       f"the restarted mirror to get 1..{last} again")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; the mirror: {ping(mirror_in)}; "
                                 f"the replica: {ping(control)}") from None
        status = stats(mirror_in)
        assert status["divergences"] == 0 and status["held_now"] == 0
        assert stats(control)["resends"] >= 1
        prod.close()


@pytest.mark.timeout(300)
def test_a_replicator_restarted_after_a_mirror_failover_is_taken_back(tmp_path):
    """A fault campaign found this: after a failover of a mirror (its successor claims a new
    epoch), the out stream's replicator, killed and restarted with its file intact, reported
    the history of its records, which carry the engine's epochs, not the mirror's. The mirror
    saw a divergent tail where its own epoch began, sent a TRUNCATE below the replicator's
    commit point (refused: committed) and left the replicator out for good; with one
    replicator (policy first) the out stream never committed again. It must catch up with
    the in stream and equal a fresh engine's outputs."""
    tmp = str(tmp_path)
    cmds = commands()[:6000]
    with LogCluster(tmp, stream="in.ce.T", replicators=1, policy="first") as cluster:
        cluster.start()
        (out_replicator, mirror, mirror_in, mirror_pub, out_rep, controls,
         procs) = out_path(cluster, tmp)
        prod = Producer(1, cluster.prod_addr)
        prod.connect()

        def caught_up(what: str) -> int:
            prod.flush(120)
            last = cluster.stats()["last"]
            try:
                wait_until(lambda: (ping(mirror_in) or {}).get("committed", 0) >= last, 90,
                           f"out.ce.T to commit {last} ({what})")
            except TimeoutError as exc:
                raise AssertionError(f"{exc}; the mirror: {ping(mirror_in)}") from None
            return last

        feed(cluster, cmds, 2000, prod)
        caught_up("before the faults")
        epoch = stats(mirror_in)["epoch"]
        mirror.kill()
        mirror.start()
        wait_until(lambda: ping(mirror_in), 60, "the restarted mirror")
        assert stats(mirror_in)["epoch"] > epoch    # the successor's own epoch
        feed(cluster, cmds, 4000, prod)
        caught_up("records of the mirror's new epoch committed")
        # The replicator's file as it is now (records of the mirror's new epoch, committed),
        # kept aside; more is committed; then it comes back with that older file: fewer
        # records than it acknowledged, so the mirror reconciles it (as after a rebuild
        # from its peers that has not caught up yet)
        data = os.path.join(tmp, "out-replicator")
        out_replicator.kill()
        shutil.copytree(data, data + ".kept")
        out_replicator.start()
        wait_until(lambda: ping(out_rep), 60, "the restarted replicator")
        feed(cluster, cmds, 5000, prod)
        caught_up("more committed")
        reconciled = stats(mirror_in)["reconciled"]
        out_replicator.kill()
        shutil.rmtree(data)
        os.rename(data + ".kept", data)
        out_replicator.start()
        wait_until(lambda: ping(out_rep), 60, "the replicator with its older file")
        feed(cluster, cmds, 6000, prod)
        last = caught_up("after the replicator's restart")
        status = stats(mirror_in)
        assert status["reconciled"] > reconciled, status
        assert status["divergences"] == 0, status["alarms"]
        got = [r for r in read_out(mirror_pub, [out_rep], last) if r[0] <= last]
        assert [r[0] for r in got] == list(range(1, last + 1))
        assert [r[6] for r in got] == reference_outputs(cluster, last)
        prod.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", CAMPAIGN_SEEDS)
@pytest.mark.parametrize("scenario", ["two_hot", "one_hot", "promote_warm", "uncommitted"])
def test_mirror_fault_campaign(tmp_path, monkeypatch, seed, scenario):
    """The mirror fault scenarios over many seeds (freeze points), each a fresh cluster."""
    monkeypatch.setattr(__import__(__name__, fromlist=["SEED"]), "SEED", seed)
    test_out_stream_heals_after_mirror_freeze_and_sigkill_under_load(tmp_path, scenario)
