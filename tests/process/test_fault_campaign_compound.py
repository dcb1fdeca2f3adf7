"""The fault campaign's harder modes (slow: SEQEX_SLOW=1): what an independent tester tries
after the single short faults of test_fault_campaign.py.

The same cluster, load and final invariants as test_fault_campaign.py (three replicators at
quorum, the sequencer, the mirror, two hot and one warm CrossEngine replicas; replicator 2 on
a tmpfs of its own), plus the replicas' snapshot directories on a second tmpfs. A seeded
schedule of faults from the modes named in SEQEX_COMPOUND_MODES (comma-separated; all four
unless set): every variant below once per round, in a seeded order; SEQEX_COMPOUND_FAULTS=N
faults (one round unless set: 24 with all four modes):

* ``compound``: two faults at once on different processes: a replicator SIGKILLed while the
  sequencer is SIGSTOPped; the mirror and a hot replica SIGKILLed together; both hot replicas
  SIGKILLed; the sequencer and a replicator SIGKILLed together; the mirror SIGSTOPped while a
  hot replica is SIGKILLed; and quorum lost: two replicators SIGKILLed, two SIGSTOPped, one
  SIGSTOPped while replicator 2's disk is full, or two SIGKILLed with the sequencer (which
  restarts at once and must wait for a majority to claim an epoch from); and replicator 2's
  disk full for 5 .. 10 s, then another replicator SIGKILLed 0.2 .. 0.8 s after the room is
  back (the stream then waits on replicator 2 catching up; intake must move again within
  1 .. 2 s of the kill);
* ``long``: faults of 5 .. 15 s: SIGSTOP of any process, disk full on replicator 2;
* ``snapdisk``: the replicas' snapshot tmpfs full for 2 .. 15 s (sometimes with a SIGKILL of
  the warm or a hot replica in the middle). Only the warm replica writes snapshots (hot ones
  do not by default, and ``seqex replica`` has no flag to make them); a hot replica killed
  then restores from the warm one's directory on the full disk;
* ``delay``: SIGKILL of any process, restarted only after 2 .. 5 s (a supervisor's backoff).

What each fault must do, from what docs/log.md and docs/operations.md promise:
* after every fault healed, intake and results move again within STALL_TARGET_S (2 s), and
  the backlogs clear; nothing stalls for good (60 s);
* while quorum is lost (two replicators down), nothing new commits: the master's commit
  point goes no further than what a down replicator acknowledged before it went down (the
  survivor may ack that later), the down replicators' acks stand still (a full disk may
  still take a retried batch), with the sequencer down too nothing is written at all; and
  intake resumes within 2 s of the first replicator coming back;
* while only one replicator is down, frozen or full, intake and results keep moving; while a
  hot replica is down or frozen, results keep moving (the other publishes); while the
  mirror is down, intake keeps moving;
* while the snapshot disk is full, every live replica keeps applying and results keep moving,
  and the warm replica's PING names no snapshot that is not on disk; once there is room, it
  writes (and reports) a newer one.
At the end, the invariants of test_fault_campaign.check_after: every order once at its acked
seq, replicators byte-identical, the out stream equal to a fresh engine's outputs, one state
hash among the replicas.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable

import pytest

from deploy.procs import tcp
from mq.control import ping, wait_until
from mq.producer import Producer
from mq.replica import _snap_files, _snap_seq
from mq.sources import OPERATOR_SOURCE
from tests.process.test_fault_campaign import (
    PERMANENT_S,
    RATE,
    STALL_TARGET_S,
    TMPFS_SIZE,
    Cluster,
    Feeder,
    Monitor,
    Progress,
    check_after,
    heal_times,
    remount,
    settle,
    tmpfs_used,
)
from tests.process.test_replicas import commands, start_replica
from tests.seed import SEED

ALL_MODES = ("compound", "long", "snapdisk", "delay")
MODES = tuple(m.strip() for m in os.environ.get("SEQEX_COMPOUND_MODES", ",".join(ALL_MODES))
              .split(",") if m.strip())
ROLES = ("sequencer", "mirror", "replicator", "hot replica", "warm replica")
VARIANTS = {
    "compound": ("kill replicator, stop sequencer", "kill mirror and hot replica",
                 "kill both hot replicas", "kill sequencer and replicator",
                 "stop mirror, kill hot replica", "kill two replicators",
                 "stop two replicators", "kill sequencer and two replicators",
                 "stop replicator, disk full replicator2",
                 "disk full replicator2, then kill replicator"),
    "long": (*ROLES, "disk full"),
    "snapdisk": ("none", "warm", "hot"),
    "delay": ROLES,
}
SNAP_TMPFS_SIZE = "512m"
# one round: every variant of every mode once (24 faults with all four modes)
FAULTS = int(os.environ.get("SEQEX_COMPOUND_FAULTS", "0")) or sum(
    len(VARIANTS[m]) for m in MODES if m in VARIANTS)
GRACE_S = 0.5   # acks and frames in flight when a fault starts may still land


class Fault:
    """What one fault did: when it began and healed, and what was seen while it lasted."""

    def __init__(self, label: str, began: float):
        self.label = label
        self.began = began
        self.healed = began
        self.sent_at_heal = self.top_at_heal = 0
        self.checks: list[str] = []   # broken expectations, reported at once
        self.after: list[Callable[[], None]] = []   # run once the stall was measured


class Campaign:
    def __init__(self, tmp: str, disk: str, snapdisk: str, rng: random.Random):
        self.tmp, self.disk, self.snapdisk, self.rng = tmp, disk, snapdisk, rng
        self.stopped: set[int] = set()    # pids under SIGSTOP, resumed whatever happens
        self.full: set[str] = set()       # tmpfs mounts shrunk, given back whatever happens
        self.snap_faults = 0
        self.snap_resumed: list[float] = []

    # -- primitives ---------------------------------------------------------------------
    def name_of(self, role_prefix: str) -> list[str]:
        return sorted(n for n in self.procs if n.startswith(role_prefix))

    def sigstop(self, name: str) -> None:
        pid = self.procs[name][0].popen.pid
        os.kill(pid, signal.SIGSTOP)
        self.stopped.add(pid)

    def sigcont(self, name: str) -> None:
        pid = self.procs[name][0].popen.pid
        os.kill(pid, signal.SIGCONT)
        self.stopped.discard(pid)

    def kill(self, name: str) -> None:
        self.procs[name][0].kill()

    def restart(self, name: str) -> None:
        proc, _role, addr = self.procs[name]
        proc.start()
        wait_until(lambda: ping(addr, timeout_s=0.5), PERMANENT_S,
                   f"{name} to answer after its restart")
        if name == "sequencer":   # it answers once it took the stream over
            wait_until(lambda: (ping(addr, timeout_s=0.5) or {}).get("epoch"), PERMANENT_S,
                       "the sequencer to take over")

    def fill(self, path: str) -> None:
        for _ in range(20):   # a write between statvfs and remount makes the remount fail
            if remount(path, str(tmpfs_used(path) + (64 << 10 if path == self.disk
                                                     else 4 << 10))):
                self.full.add(path)
                return
            time.sleep(0.05)
        raise AssertionError(f"cannot remount {path} smaller")

    def unfill(self, path: str) -> None:
        size = TMPFS_SIZE if path == self.disk else SNAP_TMPFS_SIZE
        assert remount(path, size), f"cannot remount {path} back"
        self.full.discard(path)

    def heal(self, f: Fault) -> None:
        """The fault healed now: what was offered and committed by then is its backlog."""
        f.healed = time.monotonic()
        f.sent_at_heal = self.feeder.sent
        f.top_at_heal = self.committed()

    def release_all(self) -> None:
        for pid in list(self.stopped):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.stopped.clear()
        for path in list(self.full):
            self.unfill(path)

    def committed(self) -> int:
        return (ping(self.cluster.prod_addr, timeout_s=0.5) or {}).get("committed", -1)

    def links(self) -> dict[str, int]:
        """The master's view: each replicator's acknowledged seq, by name."""
        st = ping(self.cluster.prod_addr, timeout_s=0.5) or {}
        by_addr = {lk["addr"]: lk["acked"] for lk in st.get("replicators", [])}
        return {f"replicator{i}": by_addr.get(a, -1)
                for i, a in enumerate(self.cluster.rep_addrs)}

    def rep_last(self, i: int) -> int:
        st = ping(self.cluster.rep_addrs[i], timeout_s=0.5) or {}
        return st.get("streams", {}).get("in.ce.T", {}).get("last", -1)

    def replica_seq(self, name: str) -> int:
        return (ping(self.controls[name], timeout_s=0.5) or {}).get("seq", -1)

    def expect_moved(self, f: Fault, what: str, progress: Progress, a: float, b: float,
                     moved: bool) -> None:
        """Intake or results moved (or not) between a and b; judged only over 1 s or more."""
        if b - a < 1.0:
            return
        if progress.moved_between(a, b) != moved:
            f.checks.append(f"{what} {'did not move' if moved else 'moved'} during "
                            f"{a - f.began:.2f} .. {b - f.began:.2f} s of the fault")

    # -- the faults ---------------------------------------------------------------------
    def mode_compound(self, kind: str) -> Fault:
        rng = self.rng
        reps = self.name_of("replicator")
        f = Fault(kind, time.monotonic())
        if kind == "kill replicator, stop sequencer":
            rep = rng.choice(reps)
            hold = rng.uniform(0.5, 3.0)
            self.sigstop("sequencer")
            self.kill(rep)
            time.sleep(rng.uniform(0.0, hold))
            self.restart(rep)
            time.sleep(max(0.0, f.began + hold - time.monotonic()))
            self.expect_moved(f, "intake", self.intake, f.began + GRACE_S, time.monotonic(),
                              False)
            self.sigcont("sequencer")
        elif kind == "kill mirror and hot replica":
            hot = rng.choice(self.name_of("hot"))
            self.kill("mirror")
            self.kill(hot)
            self.restart("mirror")
            self.restart(hot)
            self.expect_moved(f, "intake", self.intake, f.began + GRACE_S, time.monotonic(),
                              True)
        elif kind == "kill both hot replicas":
            for n in self.name_of("hot"):
                self.kill(n)
            for n in self.name_of("hot"):
                self.restart(n)
            self.expect_moved(f, "intake", self.intake, f.began + GRACE_S, time.monotonic(),
                              True)
        elif kind == "kill sequencer and replicator":
            rep = rng.choice(reps)
            self.kill("sequencer")
            self.kill(rep)
            self.restart(rep)
            self.restart("sequencer")
        elif kind == "disk full replicator2, then kill replicator":
            # Replicator 2 behind after its disk was full, the room back, another replicator
            # SIGKILLed at once: the stream now waits on replicator 2, which must take writes
            # and catch up within a second or so, not a retry period or two later.
            self.fill(self.disk)
            time.sleep(rng.uniform(5.0, 10.0))
            self.unfill(self.disk)
            time.sleep(rng.uniform(0.2, 0.8))
            rep = rng.choice(["replicator0", "replicator1"])
            self.kill(rep)
            killed = time.monotonic()
            time.sleep(rng.uniform(2.5, 4.0))
            self.expect_moved(f, "intake", self.intake, killed + 1.0, killed + 2.0, True)
            self.restart(rep)
        elif kind == "stop mirror, kill hot replica":
            hot = rng.choice(self.name_of("hot"))
            hold = rng.uniform(0.5, 3.0)
            self.sigstop("mirror")
            self.kill(hot)
            self.restart(hot)
            time.sleep(max(0.0, f.began + hold - time.monotonic()))
            self.expect_moved(f, "intake", self.intake, f.began + GRACE_S, time.monotonic(),
                              True)
            self.sigcont("mirror")
        else:   # quorum lost: two replicators down, by two kills or a freeze and a full disk
            f.label = "quorum lost: " + kind
            if kind == "kill two replicators":
                down = rng.sample(reps, 2)
                for n in down:
                    self.kill(n)
            elif kind == "kill sequencer and two replicators":
                # the restarted master finds no majority to claim an epoch from
                down = rng.sample(reps, 2)
                self.kill("sequencer")
                for n in down:
                    self.kill(n)
                self.procs["sequencer"][0].start()   # at once; it cannot take over yet
            elif kind == "stop two replicators":
                down = rng.sample(reps, 2)
                for n in down:
                    self.sigstop(n)
            else:
                down = [rng.choice(["replicator0", "replicator1"]), "replicator2"]
                self.sigstop(down[0])
                self.fill(self.disk)
            hold = rng.uniform(1.5, 4.0)
            survivor = int(next(n for n in reps if n not in down)[-1])
            time.sleep(GRACE_S)
            acked, rep_last = self.intake.value, self.rep_last(survivor)
            links_then = self.links()
            time.sleep(max(0.0, f.began + hold - time.monotonic()))
            if "sequencer" in kind:
                # no master can claim an epoch: nothing is written, nothing acknowledged
                if (self.rep_last(survivor), self.intake.value) != (rep_last, acked):
                    f.checks.append(
                        f"written while quorum was lost: replicator{survivor} holds "
                        f"{rep_last} -> {self.rep_last(survivor)}, acknowledged {acked} -> "
                        f"{self.intake.value}")
            else:
                # What a master may still commit: the records that a down replicator had
                # acknowledged before it went down and the survivor acknowledges later (the
                # survivor may lag). So: the down replicators' acknowledgements stand still
                # (a full disk may still take a retried batch: LMDB reuses its free pages),
                # and nothing commits beyond the highest of them; the producer's acknowledged
                # position no further than that.
                links = self.links()
                committed = self.committed()
                frozen = [n for n in down if not ("disk full" in kind and n == "replicator2")]
                moved = {n: (links_then.get(n), links.get(n)) for n in frozen
                         if links_then.get(n) != links.get(n)}
                bound = max(links.get(n, 0) for n in down)
                if moved or committed > bound:
                    f.checks.append(
                        f"committed while quorum was lost: the master's commit point "
                        f"{committed}, the down replicators' acks {[links.get(n) for n in down]}"
                        f"; acks of down replicators that moved {moved}")
            first, second = rng.sample(down, 2)
            self.heal_replicator(first)
            self.heal(f)
            f.after.append(lambda: (time.sleep(rng.uniform(0.0, 1.5)),
                                    self.heal_replicator(second)))
            return f
        self.heal(f)
        return f

    def heal_replicator(self, name: str) -> None:
        pid = self.procs[name][0].popen.pid
        if pid in self.stopped:
            self.sigcont(name)
        elif name == "replicator2" and self.disk in self.full:
            self.unfill(self.disk)
        else:
            self.restart(name)

    def mode_long(self, role: str) -> Fault:
        rng = self.rng
        hold = rng.uniform(5.0, 15.0)
        if role == "disk full":
            f = Fault("long disk full replicator", time.monotonic())
            self.fill(self.disk)
            time.sleep(hold)
            self.unfill(self.disk)
            self.heal(f)
            self.expect_moved(f, "intake", self.intake, f.began + GRACE_S, f.healed, True)
            self.expect_moved(f, "results", self.results, f.began + GRACE_S, f.healed, True)
            return f
        name = rng.choice([n for n in sorted(self.procs) if self.procs[n][1] == role])
        f = Fault(f"long SIGSTOP {role}", time.monotonic())
        self.sigstop(name)
        time.sleep(hold)
        self.sigcont(name)
        self.heal(f)
        a = f.began + GRACE_S + 1.0   # a frozen peer is noticed by heartbeat within ~1.2 s
        if role in ("replicator", "hot replica", "warm replica"):
            self.expect_moved(f, "intake", self.intake, a, f.healed, True)
            self.expect_moved(f, "results", self.results, a, f.healed, True)
        elif role == "mirror":
            self.expect_moved(f, "intake", self.intake, a, f.healed, True)
        else:
            self.expect_moved(f, "intake", self.intake, a, f.healed, False)
        return f

    def mode_snapdisk(self, victim: str) -> Fault:
        rng = self.rng
        hold = rng.uniform(2.0, 15.0)
        victim = {"none": None, "hot": rng.choice(["hotA", "hotB"])}.get(victim, victim)
        f = Fault("snapshot disk full" + (f", SIGKILL {self.procs[victim][1]}" if victim else ""),
                  time.monotonic())
        self.snap_faults += 1
        self.fill(self.snapdisk)
        seqs = {n: self.replica_seq(n) for n in self.controls}
        if victim:
            time.sleep(rng.uniform(0.0, hold / 2))
            self.kill(victim)
            self.restart(victim)
            seqs[victim] = self.replica_seq(victim)   # restored from a snapshot: from here
            time.sleep(1.0)
        time.sleep(max(0.0, f.began + hold - time.monotonic()))
        after = {n: self.replica_seq(n) for n in self.controls}
        stuck = [n for n in self.controls if after[n] <= seqs[n]]
        if stuck:
            f.checks.append(f"replicas stopped applying while the snapshot disk was full: "
                            f"{stuck} ({seqs} -> {after})")
        self.expect_moved(f, "intake", self.intake, f.began + GRACE_S, time.monotonic(), True)
        self.expect_moved(f, "results", self.results, f.began + GRACE_S, time.monotonic(), True)
        warm_dir = os.path.join(self.snapdisk, "warm")

        def on_disk() -> int:
            return max(map(_snap_seq, _snap_files(warm_dir, "in.ce.T")), default=0)

        # what the warm replica reports (PING, hence the metrics) is a snapshot on disk
        st = ping(self.controls["warm"], timeout_s=0.5) or {}
        newest = on_disk()
        if st.get("snapshot_seq", 0) > newest:
            f.checks.append(f"the warm replica reports snapshot {st.get('snapshot_seq')} "
                            f"(age {st.get('snapshot_age_s')} s) while the newest on disk is "
                            f"{newest}")
        warm_seq = self.replica_seq("warm")
        self.unfill(self.snapdisk)
        self.heal(f)

        def resumed() -> None:
            wait_until(lambda: on_disk() > warm_seq and (ping(
                self.controls["warm"], timeout_s=0.5) or {}).get("snapshot_seq", 0) > warm_seq,
                PERMANENT_S, "the warm replica to write (and report) a snapshot again")
            self.snap_resumed.append(time.monotonic() - f.healed)
        f.after.append(resumed)
        return f

    def mode_delay(self, role: str) -> Fault:
        rng = self.rng
        name = rng.choice([n for n in sorted(self.procs) if self.procs[n][1] == role])
        f = Fault(f"SIGKILL {role}, restart after 2-5 s", time.monotonic())
        self.kill(name)
        time.sleep(rng.uniform(2.0, 5.0))
        a, b = f.began + GRACE_S + 1.0, time.monotonic()
        if role == "sequencer":
            self.expect_moved(f, "intake", self.intake, a, b, False)
        else:
            self.expect_moved(f, "intake", self.intake, a, b, True)
        if role in ("replicator", "hot replica", "warm replica"):
            self.expect_moved(f, "results", self.results, a, b, True)
        self.restart(name)
        self.heal(f)
        return f

    # -- the run ------------------------------------------------------------------------
    def run(self) -> None:
        rng = self.rng
        cmds = commands()
        tmp = self.tmp
        with Cluster(tmp, self.disk, stream="in.ce.T", replicators=3,
                     policy="quorum") as cluster:
            self.cluster = cluster
            cluster.start()
            mirror_in, mirror_pub = tcp(), tcp()
            mirror = cluster.group.spawn("mirror", [
                "mirror", "--stream", "out.ce.T", "--inputs", mirror_in, "--pub", mirror_pub,
                "--policy", "first", *sum((["--replicator", a] for a in cluster.rep_addrs),
                                          [])])
            wait_until(lambda: ping(mirror_in), 30, "the mirror")
            self.controls = controls = {n: tcp() for n in ("hotA", "hotB", "warm")}
            replicas = {n: start_replica(cluster, n, "warm" if n == "warm" else "hot",
                                         mirror_in, tmp, controls[n]) for n in controls}
            for n, addr in controls.items():
                wait_until(lambda addr=addr: ping(addr), 30, f"replica {n}")
            self.procs = procs = {f"replicator{i}": (p, "replicator", cluster.rep_addrs[i])
                                  for i, p in enumerate(cluster.replicators)}
            procs["sequencer"] = (cluster.sequencer, "sequencer", cluster.prod_addr)
            procs["mirror"] = (mirror, "mirror", mirror_in)
            for n in controls:
                procs[n] = (replicas[n], "warm replica" if n == "warm" else "hot replica",
                            controls[n])
            self.intake, self.results = intake, results = Progress(), Progress()
            prod = Producer(OPERATOR_SOURCE, cluster.prod_addr)
            prod.connect()
            self.feeder = feeder = Feeder(prod, cmds, intake)
            monitor = Monitor(mirror_in, results)
            feeder.start()
            monitor.start()
            stalls: dict[str, list[tuple]] = defaultdict(list)
            during: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
            worst: list[tuple[float, str, int]] = []
            broken: list[str] = []
            started = time.monotonic()
            try:
                wait_until(lambda: results.value > 0 and intake.value > 1, 60, "first results")
                schedule: list[tuple[str, str]] = []
                for k in range(FAULTS):
                    if feeder.error:
                        raise feeder.error
                    if not schedule:   # every variant once per round, in a seeded order
                        schedule = [(m, v) for m in MODES for v in VARIANTS[m]]
                        rng.shuffle(schedule)
                    mode, variant = schedule.pop()
                    f = getattr(self, f"mode_{mode}")(variant)
                    healed, sent_at_heal, top_at_heal = f.healed, f.sent_at_heal, f.top_at_heal
                    s_in, s_out, c_in, c_out = heal_times(
                        intake, results, healed, sent_at_heal, top_at_heal,
                        f"fault {k} ({f.label})",
                        cluster.prod_addr, mirror_in)
                    stalls[f.label].append((s_in, s_out, healed - f.began, c_in, c_out))
                    if healed - f.began > 1.0:
                        during[f.label].append(
                            (intake.moved_between(f.began + GRACE_S, healed),
                             results.moved_between(f.began + GRACE_S, healed)))
                    for then in f.after:
                        then()
                    worst.append((max(s_in, s_out), f.label, k))
                    broken += [f"fault {k} ({f.label}): {c}" for c in f.checks]
                    print(f"  fault {k}: {f.label}: lasted {healed - f.began:.1f} s, stall "
                          f"{s_in:.3f}/{s_out:.3f} s, backlog {c_in:.2f}/{c_out:.2f} s"
                          + (f"; BROKEN: {f.checks}" if f.checks else ""), flush=True)
                    settle(cluster, procs, controls)
                    time.sleep(rng.uniform(0.2, 0.8))
            finally:
                self.release_all()
                feeder.stop.set()
                feeder.join(400)
                monitor.stop.set()
                monitor.join(10)
            if feeder.error:
                raise feeder.error
            elapsed = time.monotonic() - started
            print_table(stalls, during, FAULTS, elapsed, feeder.sent)
            failed_snaps = procs["warm"][0].log().count("could not write the snapshot")
            print(f"snapshot-disk faults {self.snap_faults}: the warm replica failed to write "
                  f"{failed_snaps} snapshots; wrote again within "
                  f"{max(self.snap_resumed, default=0):.2f} s of the room coming back (worst)")
            full = cluster.replicators[2].log().count("disk full at")
            print(f"replicator2 found its disk full {full} times")
            check_after(cluster, feeder, controls, mirror_in, mirror_pub)
            assert not broken, "\n".join(broken)
            over = [(round(s, 2), what, k) for s, what, k in worst if s > STALL_TARGET_S]
            assert not over, f"stalls after a fault healed beyond {STALL_TARGET_S} s: {over}"


def print_table(stalls: dict, during: dict, faults: int, elapsed: float, sent: int) -> None:
    """test_fault_campaign's table, as Markdown (the labels are long)."""
    print(f"\n{faults} faults in {elapsed:.0f} s, {sent} orders at {RATE}/s; seconds, max "
          "over the faults of each kind\n")
    print("| fault | n | lasted | intake stall | results stall | intake backlog | "
          "results backlog | moved (in, out) |\n|---|---|---|---|---|---|---|---|")
    every = []
    for label in sorted(stalls):
        rows = stalls[label]
        every += rows
        top = [max(r[i] for r in rows) for i in range(5)]
        moved = during.get(label, [])
        what = (f"{sum(a for a, _b in moved)}/{len(moved)}, {sum(b for _a, b in moved)}/"
                f"{len(moved)}") if moved else "-"
        print(f"| {label} | {len(rows)} | {top[2]:.2f} | {top[0]:.3f} | {top[1]:.3f} | "
              f"{top[3]:.2f} | {top[4]:.2f} | {what} |")
    top = [max(r[i] for r in every) for i in range(5)]
    print(f"| all | {faults} | {top[2]:.2f} | {top[0]:.3f} | {top[1]:.3f} | {top[3]:.2f} | "
          f"{top[4]:.2f} | |", flush=True)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fault_campaign_compound(tmp_path):
    unknown = set(MODES) - set(ALL_MODES)
    assert not unknown, f"SEQEX_COMPOUND_MODES: unknown {unknown}; modes are {ALL_MODES}"
    rng = random.Random(f"{SEED}-fault-campaign-compound")
    tmp = str(tmp_path)
    disk = os.path.join(tmp, "small")
    snapdisk = os.path.join(tmp, "snap")
    os.makedirs(disk)
    os.makedirs(snapdisk)
    mounted = []
    try:
        for path, size in ((disk, TMPFS_SIZE), (snapdisk, SNAP_TMPFS_SIZE)):
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                               capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the campaign's "
                            "disk-full faults (replicator 2, the replicas' snapshots) need "
                            "root")
            mounted.append(path)
        print(f"\nseed {SEED}: {FAULTS} faults of {','.join(MODES)}, {RATE} orders/s")
        Campaign(tmp, disk, snapdisk, rng).run()
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", path], capture_output=True)
