"""The rules of replication and failover, on an abstract model, played both ways.

This file keeps the abstract model that first found the protocol's rules (the own-epoch commit
rule, the previous-epoch check, and why "first" can lose an acknowledged record), and plays each
scripted case with the rule and without it, so that the reason for every rule stays visible.
The real master and replicator code is explored by tests/stateful/test_replication_model.py,
over the same kind of network; the hypothesis machine here explores the abstract rules.

Three replicators and any number of master incarnations exchange messages through a network
that loses, reorders and duplicates them; masters and replicators crash and restart (a
replicator keeps what it persisted; a dead master's messages may still arrive). Masters take
their decisions with mq.replication. Replicators follow the rules of replicator/store.py:
refuse lower epochs, refuse gaps, compare overlaps, truncate only above their commit point.

Invariants, checked after every step, under "quorum" and "all":
* no acknowledged record is lost: whichever `need` replicators a future master recovers from,
  the log it adopts holds every acknowledged record at its seq;
* no two replicators hold different records at a seq at or below their commit points;
* a seq is never acknowledged with two different records (never reused across epochs).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mq import replication

N = 3


@dataclass
class Rep:
    log: list[tuple[int, str]] = field(default_factory=list)  # seq i+1 -> (epoch, value)
    epoch: int = 0
    commit: int = 0
    up: bool = True

    def history(self) -> list[list[int]]:
        out: list[list[int]] = []
        for i, (epoch, _v) in enumerate(self.log):
            if not out or out[-1][0] != epoch:
                out.append([epoch, i + 1])
        return out

    def state(self) -> dict:
        return {"last": len(self.log), "epoch": self.epoch, "commit": self.commit,
                "last_epoch": self.log[-1][0] if self.log else 0, "history": self.history()}

    def append(self, epoch: int, first: int, records: list, commit: int,
               prev_epoch: int | None) -> tuple:
        if epoch < self.epoch:
            return ("fenced", self.epoch)
        if first > len(self.log) + 1:
            return ("gap", len(self.log))
        if prev_epoch is not None and first > 1 and self.log[first - 2][0] != prev_epoch:
            return ("conflict", len(self.log))
        for k, rec in enumerate(records):
            seq = first + k
            if seq <= len(self.log):
                if self.log[seq - 1] != rec:
                    return ("conflict", len(self.log))
            else:
                self.log.append(rec)
        self.epoch = max(self.epoch, epoch)
        self.commit = max(self.commit, min(commit, len(self.log)))
        return ("ok", len(self.log))

    def truncate(self, epoch: int, after: int) -> tuple:
        if epoch < self.epoch or after < self.commit:
            return ("refused", len(self.log))
        del self.log[after:]
        self.epoch = max(self.epoch, epoch)
        return ("ok", len(self.log))


@dataclass
class Master:
    epoch: int
    log: list[tuple[int, str]]
    history: list[tuple[int, int]]
    first_own: int
    committed: int
    acked: dict[int, int]
    known: dict[int, bool]
    alive: bool = True


class Replication(RuleBasedStateMachine):
    policy = "quorum"

    def __init__(self):
        super().__init__()
        self.reps = [Rep() for _ in range(N)]
        self.masters: list[Master] = []
        self.net: list[tuple] = []  # (to, message)
        self.acknowledged: dict[int, tuple[int, str]] = {}
        self.values = 0

    # -- masters ------------------------------------------------------------------------
    own_epoch_rule = True  # commit counts only from the master's first own-epoch record
    prev_check = True      # an APPEND names the epoch of the record before it (Raft)

    @rule(data=st.data())
    def start_master(self, data):
        """A new master takes over from the replicators it can reach (at least `need`)."""
        need = replication.needed(self.policy, N)
        up = [i for i in range(N) if self.reps[i].up]
        if len(up) < need:
            return
        self.start(sorted(data.draw(st.lists(st.sampled_from(up), min_size=need, unique=True))))

    def start(self, chosen: list[int]) -> Master:
        epoch = max(self.reps[i].epoch for i in chosen) + 1
        for i in chosen:  # CLAIM
            self.reps[i].epoch = max(self.reps[i].epoch, epoch)
        states = [self.reps[i].state() for i in chosen]
        best_i = chosen[replication.best_log(states)]
        log = list(self.reps[best_i].log)
        history = [tuple(h) for h in self.reps[best_i].history()] + [(epoch, len(log) + 1)]
        m = Master(epoch, log, history, len(log) + 1,
                   max(self.reps[i].commit for i in chosen), {}, {})
        for i in chosen:
            st_ = self.reps[i].state()
            agreed = min(replication.common_prefix(st_["history"], st_["last"], history,
                                                   len(log)), st_["last"])
            if agreed < st_["last"]:
                self.net.append((i, ("truncate", m, epoch, agreed)))
            m.acked[i] = agreed
            m.known[i] = True
        self.masters.append(m)
        self._new_record(m)  # the first record of the epoch
        return m

    def _new_record(self, m: Master) -> None:
        self.values += 1
        m.log.append((m.epoch, f"v{self.values}"))
        for i in range(N):
            self._send_from(m, i)

    def _send_from(self, m: Master, i: int) -> None:
        """One APPEND per record, as the sequencer sends its adopted tail and each new frame
        separately: a replicator can acknowledge an older-epoch record on its own."""
        if m.known.get(i):
            for seq in range(m.acked[i] + 1, len(m.log) + 1):
                prev = m.log[seq - 2][0] if seq > 1 and self.prev_check else None
                self.net.append((i, ("append", m, m.epoch, seq, [m.log[seq - 1]],
                                     m.committed, prev)))

    @rule(data=st.data())
    def master_appends(self, data):
        live = [m for m in self.masters if m.alive]
        if live:
            self._new_record(data.draw(st.sampled_from(live)))

    @rule(data=st.data())
    def master_resends(self, data):
        live = [m for m in self.masters if m.alive]
        if live:
            m = data.draw(st.sampled_from(live))
            i = data.draw(st.integers(0, N - 1))
            if not m.known.get(i):  # the probe: claim and reconcile a replicator it lost
                if self.reps[i].up:
                    if self.reps[i].epoch > m.epoch:
                        m.alive = False
                        return
                    self.reps[i].epoch = m.epoch
                    st_ = self.reps[i].state()
                    agreed = min(replication.common_prefix(st_["history"], st_["last"],
                                                           m.history, len(m.log)), st_["last"])
                    if agreed < st_["last"]:
                        self.net.append((i, ("truncate", m, m.epoch, agreed)))
                    m.acked[i] = agreed
                    m.known[i] = True
            self._send_from(m, i)

    @rule(data=st.data())
    def master_crashes(self, data):
        live = [m for m in self.masters if m.alive]
        if live:
            data.draw(st.sampled_from(live)).alive = False

    # -- replicators ----------------------------------------------------------------------
    @rule(i=st.integers(0, N - 1))
    def replicator_crashes(self, i):
        self.reps[i].up = False
        self.net = [(to, msg) for to, msg in self.net if to != i]

    @rule(i=st.integers(0, N - 1))
    def replicator_restarts(self, i):
        self.reps[i].up = True

    # -- the network ----------------------------------------------------------------------
    @precondition(lambda self: self.net)
    @rule(data=st.data())
    def deliver(self, data):
        self.deliver_at(data.draw(st.integers(0, len(self.net) - 1)))

    def deliver_at(self, k: int) -> None:
        to, msg = self.net.pop(k)
        if msg[0] == "ack":
            _, m, i, status, last = msg
            if not m.alive:
                return
            if status == "fenced":
                m.alive = False
            elif status == "ok":
                m.acked[i] = max(m.acked[i], last)
            else:  # gap, conflict, refused: claim and reconcile it again
                m.known[i] = False
            self._advance_commit(m)
            return
        rep = self.reps[to]
        if not rep.up:
            return
        if msg[0] == "append":
            _, m, epoch, first, records, commit, prev = msg
            status, value = rep.append(epoch, first, records, commit, prev)
        else:
            _, m, epoch, after = msg
            status, value = rep.truncate(epoch, after)
        if status == "fenced":
            self.net.append((None, ("ack", m, to, "fenced", value)))
        else:
            self.net.append((None, ("ack", m, to, status, value)))

    def _advance_commit(self, m: Master) -> None:
        point = replication.commit_point([a for i, a in m.acked.items() if m.known.get(i)],
                                         N, self.policy)
        if (point >= m.first_own or not self.own_epoch_rule) and point > m.committed:
            m.committed = point
            for seq in range(1, point + 1):  # forwarded: acknowledged to clients
                rec = m.log[seq - 1]
                old = self.acknowledged.setdefault(seq, rec)
                assert old == rec, f"seq {seq} acknowledged as {old} and as {rec}"

    @precondition(lambda self: self.net)
    @rule(k=st.integers(0, 10_000))
    def lose(self, k):
        self.net.pop(k % len(self.net))

    @precondition(lambda self: self.net)
    @rule(k=st.integers(0, 10_000))
    def duplicate(self, k):
        self.net.append(self.net[k % len(self.net)])

    # -- invariants -----------------------------------------------------------------------
    @invariant()
    def acknowledged_records_survive_any_failover(self):
        """Whichever replicators a future master recovers from (any `need` of them), the log it
        adopts holds every acknowledged record at its seq."""
        need = replication.needed(self.policy, N)
        for seq, rec in self.acknowledged.items():
            holders = sum(1 for r in self.reps if len(r.log) >= seq and r.log[seq - 1] == rec)
            assert holders >= need, f"acknowledged seq {seq} held by {holders} replicators"
        for size in range(need, N + 1):
            for subset in itertools.combinations(range(N), size):
                states = [self.reps[i].state() for i in subset]
                adopted = self.reps[subset[replication.best_log(states)]].log
                for seq, rec in self.acknowledged.items():
                    assert len(adopted) >= seq and adopted[seq - 1] == rec, (
                        f"a master recovering from {subset} would lose acknowledged seq {seq}")

    @invariant()
    def committed_prefixes_agree(self):
        top = max([m.committed for m in self.masters] + [r.commit for r in self.reps] + [0])
        for seq in range(1, top + 1):
            held = {r.log[seq - 1] for r in self.reps if len(r.log) >= seq and r.commit >= seq}
            assert len(held) <= 1, f"two different committed records at seq {seq}: {held}"


class ReplicationAll(Replication):
    policy = "all"


TestQuorum = Replication.TestCase
TestQuorum.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
TestAll = ReplicationAll.TestCase
TestAll.settings = settings(max_examples=80, stateful_step_count=60, deadline=None)


def test_first_loses_a_record_when_master_and_its_only_acker_are_lost():
    """Under "first", the record is acknowledged on one replica's word; lose that replica
    together with the master and the next master resumes without it."""
    reps = [Rep() for _ in range(3)]
    reps[0].append(1, 1, [(1, "a")], 0, None)  # only replicator 0 acknowledged: committed under first
    acknowledged = {1: (1, "a")}
    reps[0].up = False  # master and replicator 0 are lost together
    chosen = [1, 2]
    states = [reps[i].state() for i in chosen]
    best = reps[chosen[replication.best_log(states)]]
    assert len(best.log) == 0  # the new master starts from an empty log: seq 1 is lost
    assert acknowledged[1] not in best.log


def _deliver(model: Replication, master: Master, to: int | None, kind: str = "append") -> None:
    """Deliver the first message of `kind` from `master` to replicator `to` (None: its acks)."""
    for k, (dest, msg) in enumerate(model.net):
        if dest == to and msg[0] == kind and (msg[1] is master):
            model.deliver_at(k)
            return
    raise AssertionError(f"no {kind} message from that master to {to}")


def _figure_8(own_epoch_rule: bool) -> Replication:
    """Raft's Figure 8 with three replicators. M1 (epoch 1) writes v1 to replicator 0 and
    dies; M2 (epoch 2) writes v2 to replicator 2 and dies; M3 (epoch 3) adopts replicator 0's
    log and copies v1 to replicator 1: v1 is on a majority. Replicators 1 and 2 could elect a
    master that adopts replicator 2's log (last epoch 2 > 1), which lacks v1."""
    model = Replication()
    model.own_epoch_rule = own_epoch_rule
    m1 = model.start([0, 1])
    _deliver(model, m1, 0)
    m1.alive = False
    m2 = model.start([1, 2])
    _deliver(model, m2, 2)
    m2.alive = False
    model.net.clear()
    m3 = model.start([0, 1])
    _deliver(model, m3, 1)          # v1 (epoch 1) reaches replicator 1 on its own
    _deliver(model, m3, None, "ack")
    return model


def test_figure_8_is_safe_with_the_own_epoch_rule():
    model = _figure_8(own_epoch_rule=True)
    assert model.acknowledged == {}  # v1 waits for a record of epoch 3 to commit it
    model.acknowledged_records_survive_any_failover()


def test_figure_8_loses_a_record_without_the_own_epoch_rule():
    model = _figure_8(own_epoch_rule=False)
    assert model.acknowledged == {1: (1, "v1")}
    try:
        model.acknowledged_records_survive_any_failover()
    except AssertionError as exc:
        assert "would lose acknowledged seq 1" in str(exc)
    else:
        raise AssertionError("counting old-epoch acks should have lost seq 1")


def _append_outruns_truncate(prev_check: bool) -> Replication:
    """Found by the quorum model above. M1 (epoch 1) writes v1 to replicator 2 only; M2
    (epoch 2) commits v2 at seq 1 on replicators 0 and 1. M3 (epoch 3) adopts [v2] from
    replicators 0 and 2 and sends replicator 2 a TRUNCATE (its v1 diverges) and then seq 1
    and 2. If seq 2 arrives while the TRUNCATE is late (or lost on a reconnect), replicator 2
    holds [v1, v3]: its last record has the highest epoch, so a master recovering from
    replicators 0 and 2 would adopt it and lose the committed v2."""
    model = Replication()
    model.prev_check = prev_check
    m1 = model.start([0, 2])
    m2 = model.start([0, 1])
    _deliver(model, m1, 0)                  # fenced: replicator 0 is at epoch 2
    _deliver(model, m1, 2)                  # v1 at seq 1 on replicator 2
    _deliver(model, m2, 0)
    _deliver(model, m2, 1)
    _deliver(model, m2, None, "ack")
    _deliver(model, m2, None, "ack")
    assert model.acknowledged == {1: (2, "v2")}
    m3 = model.start([0, 2])
    k = next(k for k, (dest, msg) in enumerate(model.net)
             if dest == 2 and msg[0] == "append" and msg[1] is m3 and msg[3] == 2)
    model.deliver_at(k)                     # seq 2 before the TRUNCATE and seq 1
    return model


def test_an_append_that_outruns_a_truncate_is_refused_by_the_previous_epoch_check():
    model = _append_outruns_truncate(prev_check=True)
    assert model.reps[2].log == [(1, "v1")]
    model.acknowledged_records_survive_any_failover()


def test_without_the_previous_epoch_check_a_committed_record_is_lost():
    model = _append_outruns_truncate(prev_check=False)
    assert model.reps[2].log == [(1, "v1"), (3, "v3")]
    try:
        model.acknowledged_records_survive_any_failover()
    except AssertionError as exc:
        assert "would lose acknowledged seq 1" in str(exc)
    else:
        raise AssertionError("the append should have landed on the divergent record")
