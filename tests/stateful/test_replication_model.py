"""The real master and the real replicator, explored by hypothesis over a simulated network.

What runs: the sequencer's own decision code (mq.sequencer.SequencerCore on mq.master.Master:
recovery, claim, adoption, reconciliation, resends, conflict handling, commit point, dedup,
stamping, time, backpressure), the replicator's own request handling
(replicator.server.Replicator.handle on replicator.store.Store, on a temporary LMDB directory),
and the replicators' own peer loop (replicator.peers.Peers: catch-up from a peer, comparison of
epoch histories and truncation of a stale tail, digest comparison of committed ranges and
repair from the peers), on the model's clock. Only the sockets are replaced: every message,
between a master and a replicator or between two replicators, is put on a simulated network
that loses, reorders and duplicates messages. Masters crash (a dead master's messages may
still arrive) and new ones start; replicators crash (keeping what LMDB committed) and restart;
bytes of a committed frame rot on a replicator's disk (its CRC fails); time passes, and the
wall clock steps back and jumps forward.

Invariants, checked after every step, under "quorum" and "all":
* no forwarded record is lost: whichever `need` replicators a future master recovers from, the
  log it adopts holds every forwarded record at its seq; a seq is never forwarded with two
  different records;
* a producer acknowledgement is true: every source_seq below an ACK's `next` is in the log a
  future master adopts, and every seq an ACK names holds that record;
* no two replicators hold different records at a seq at or below both their commit points;
* no record of a producer is in any replicator's log twice;
* along every replicator's log, ts_ns never goes backwards and moves by at most max_step;
* backpressure: a live master's uncommitted bytes stay below its bound plus one batch, and its
  resend window holds every uncommitted record;
* a record once committed on any replicator never changes there or anywhere (a damaged frame is
  read as it was before it rotted; a frame whose CRC holds is read as stored, so a repair that
  sealed wrong bytes shows), and no frame is stored past a replicator's last seq;
* liveness, once every replicator is up and the network delivers in order: the newest master
  commits everything it sequenced, every replicator's committed prefix equals the others', and
  the peers have repaired every damaged frame (none is left to serve).
A replicator that missed a failover may hold, above its commit point, a tail that no master
acknowledged and that differs from the new master's log; the new master truncates it when it
reaches that replicator (docs/log.md, "Failover").
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
import zlib

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import replicator.peers as peers_module
from mq import replication, wire
from mq.master import SequencerStale
from mq.record import HEADER_SIZE, FrameError, decode, pack, scan, trim
from mq.sequencer import SequencedClock, SequencerCore
from replicator.peers import Peers
from replicator.server import Replicator
from replicator.store import U64, CorruptFrame

N = 3
STREAM = "in.model"
MAX_STEP_NS = 1_000_000_000
MAX_UNCOMMITTED = 600          # bytes: a few records, so that backpressure engages
BATCH_MAX = 3                  # records of one producer batch
PAYLOAD = 8                    # bytes of one record's payload
EXAMPLES = int(os.environ.get("SEQEX_EXAMPLES", "0"))  # 0: the defaults below
_incarnations = itertools.count()


class ModelPeers(Peers):
    """The real peer logic (catch-up, epoch-history comparison, digests and repair); its
    requests go onto the simulated network instead of a DEALER per peer. Peer k of replicator
    i is replicator others(i)[k]."""

    def __init__(self, rep: ModelReplicator):
        super().__init__(rep.store, [], rep.stats)
        self.rep = rep
        self.socks = [None] * (N - 1)
        self.addrs = [f"rep{j}" for j in others(rep.i)]

    def _send(self, peer: int, msg: list[bytes]) -> bool:
        self.rep.model.net.append(("rep", self.rep.ident, others(self.rep.i)[peer], list(msg)))
        return True

    def on_answer(self, peer: int, msg: list[bytes]) -> None:
        """What Peers.on_events does with one answer read from a peer's socket."""
        try:
            self._on_answer(peer, msg)
        except (wire.WireError, FrameError, ValueError, KeyError, TypeError):
            pass   # logged by the loop
        except CorruptFrame:
            pass   # the comparison finds and repairs it

    def close(self) -> None:
        pass


def others(i: int) -> list[int]:
    return [j for j in range(N) if j != i]


class _ModelTime:
    """replicator.peers reads time.monotonic(): in the model it is the model's clock."""

    def __init__(self, model: Model):
        self.model = model

    def monotonic(self) -> float:
        return self.model.t


class ModelReplicator(Replicator):
    """The real replicator; its replies go onto the simulated network."""

    def __init__(self, path: str, model: Model, i: int):
        # No integrity check in a child process: the model opens replicators thousands of times.
        super().__init__(path, f"inproc://model-rep-{uuid.uuid4().hex}", map_size=1 << 24,
                         check=False)
        self.model = model
        self.i = i
        self.ident = b"r%d:%d" % (i, next(_incarnations))  # a peer's DEALER identity
        self.peers = ModelPeers(self)
        self.peers.on_disk_full = self._disk_full
        # The stream is opened at start, as a read: a replicator whose first request for a
        # stream is a CLAIM fails in LMDB (the database opened inside the CLAIM's write
        # transaction is not usable by the read that builds the answer). The master sends a
        # STATE before every CLAIM for that reason, but this network may reorder them.
        self.store.stream(STREAM)

    def _send(self, replies: list[list[bytes]]) -> None:
        for reply in replies:
            if reply[0].startswith(b"r"):   # an answer to a peer's request
                self.model.net.append(("peer", reply[0], self.i, reply[1:]))
            else:
                self.model.net.append(("master", reply[0], self.i, reply[1:]))

    def shut(self) -> None:
        self.peers.close()
        self.sock.close(0)
        self.store.close()


class ModelMaster(SequencerCore):
    """The real sequencer core; its messages go onto the simulated network."""

    def __init__(self, model: Model, ident: bytes):
        super().__init__(STREAM, [f"rep{i}" for i in range(N)], model.policy, tick_ms=100,
                         max_uncommitted_bytes=MAX_UNCOMMITTED, startup_grace_s=0.5,
                         clock=SequencedClock(MAX_STEP_NS, wall=model.wall_ns,
                                              mono=model.mono_ns),
                         mono=model.mono)
        self.model = model
        self.ident = ident
        self.alive = True
        self.ready = False
        self.producer_replies: list[tuple[bytes, dict]] = []

    def _try_send(self, link, msg):
        self.model.net.append(("rep", self.ident, self.links.index(link), list(msg)))
        return True

    def _publish(self, frame):
        self.model.on_published(frame)

    def _reply(self, ident, kind, body):
        self.model.on_producer_reply(kind, body)

    def _peer_alive(self, ident):
        return True


class Model(RuleBasedStateMachine):
    policy = "quorum"

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="seqex-model-")
        self.reps: list[ModelReplicator | None] = [self._open(i) for i in range(N)]
        self.masters: dict[bytes, ModelMaster] = {}
        self.net: list[tuple] = []
        self.t = 1000.0                  # monotonic seconds
        self.wall_offset_ns = 1_700_000_000 * 10**9
        self.published: dict[int, tuple] = {}
        self.produced = 0                # source 1: source_seqs 1..produced were created
        self.acked_next = 1              # source 1: every source_seq below it was ACKed
        self.acked_seqs: dict[int, int] = {}   # source_seq -> seq, from ACK runs
        self.truth: dict[tuple[int, bytes], bytes] = {}  # (replicator, key) -> undamaged value
        self.down_damaged: dict[int, bool] = {}  # a down replicator held a damaged frame
        self.committed: dict[int, tuple] = {}  # seq -> the record some replicator committed
        self._time = peers_module.time
        peers_module.time = _ModelTime(self)

    def teardown(self):
        for rep in self.reps:
            if rep is not None:
                rep.shut()
        peers_module.time = self._time
        shutil.rmtree(self.dir, ignore_errors=True)

    def _open(self, i: int) -> ModelReplicator:
        return ModelReplicator(f"{self.dir}/r{i}", self, i)

    # -- clocks ---------------------------------------------------------------------------
    def mono(self) -> float:
        return self.t

    def mono_ns(self) -> int:
        return int(self.t * 1e9)

    def wall_ns(self) -> int:
        return self.wall_offset_ns + int(self.t * 1e9)

    @rule(dt=st.sampled_from([0.01, 0.3, 0.6, 1.5, 3.0]))
    def time_passes(self, dt):
        self.t += dt

    @rule(step_s=st.sampled_from([-3600, -2, 5, 3600]))
    def wall_clock_steps(self, step_s):
        self.wall_offset_ns += step_s * 10**9

    # -- masters ----------------------------------------------------------------------------
    def live(self) -> list[ModelMaster]:
        return [m for m in self.masters.values() if m.alive]

    @initialize()
    def first_master(self):
        self.start_master()
        self.settle(self.masters[b"m0"], 4)

    @precondition(lambda self: len(self.live()) < 2)
    @rule()
    def start_master(self):
        ident = b"m%d" % len(self.masters)
        m = self.masters[ident] = ModelMaster(self, ident)
        m.begin_recovery(deadline_s=30.0)
        self._guard(m, m.recovery_step)

    def _guard(self, m: ModelMaster, fn, *args) -> None:
        """Run a master's code; a fenced or timed-out master dies, as the process would."""
        try:
            fn(*args)
        except (SequencerStale, TimeoutError):
            m.alive = False

    @rule(data=st.data())
    def master_works(self, data):
        """The loop's periodic work: recovery while starting, then probes, resends, commit."""
        live = self.live()
        if not live:
            return
        self.master_work(data.draw(st.sampled_from(live)))

    def master_work(self, m: ModelMaster) -> None:
        if not m.ready:
            def step():
                if m.recovery_step():
                    m.ready = True
                    m._emit_tick(self.mono_ns())
            self._guard(m, step)
        else:
            self._guard(m, m._pump_all)
            self._guard(m, m._forward)

    @rule(data=st.data(), rounds=st.integers(1, 8))
    def master_settles(self, data, rounds):
        """A master works and its messages (both ways) are delivered in order, for a few
        rounds: how recoveries and commits get done among the faults of the other rules."""
        live = self.live()
        if not live:
            return
        self.settle(data.draw(st.sampled_from(live)), rounds)

    def settle(self, m: ModelMaster, rounds: int) -> None:
        for _ in range(rounds):
            if not m.alive:
                return
            self.master_work(m)
            mine = [n for n in self.net if n[1] == m.ident]
            self.net = [n for n in self.net if n[1] != m.ident]
            for n in mine:
                self.net.append(n)
                self.deliver_at(len(self.net) - 1)
            for n in [n for n in self.net if n[1] == m.ident]:  # the replies
                self.net.remove(n)
                self.net.append(n)
                self.deliver_at(len(self.net) - 1)
            self.t += 0.1

    @rule(data=st.data(), counts=st.lists(st.integers(1, BATCH_MAX), min_size=1, max_size=4))
    def producer_sends(self, data, counts):
        """Source 1 sends batches in one turn: its next records, or resends from an earlier
        number (duplicates, or beyond what the master expects)."""
        ready = [m for m in self.live() if m.ready]
        if not ready:
            return
        m = data.draw(st.sampled_from(ready))
        messages = []
        for count in counts:
            if self.produced and data.draw(st.booleans()):
                first = data.draw(st.integers(1, self.produced))
            else:
                first = self.produced + 1
            last = first + count - 1
            self.produced = max(self.produced, last)
            batch = pack(1, first, 32, [b"%08d" % ss for ss in range(first, last + 1)])
            messages.append((b"p1", wire.DATA, [b"p1", wire.DATA, b"\x80", batch]))
        self._guard(m, m.sequence_turn, messages)

    @rule(data=st.data())
    def master_ticks(self, data):
        ready = [m for m in self.live() if m.ready]
        if ready:
            m = data.draw(st.sampled_from(ready))
            if m.tick_due(self.mono_ns()):
                self._guard(m, m._emit_tick, self.mono_ns())

    @rule(data=st.data())
    def master_crashes(self, data):
        live = self.live()
        if live:
            data.draw(st.sampled_from(live)).alive = False

    # -- replicators ------------------------------------------------------------------------
    @rule(i=st.integers(0, N - 1))
    def replicator_crashes(self, i):
        if self.reps[i] is not None:
            # a copy that rotted stays rotten while its replicator is down: frame_damaged
            # must still see it (one damaged copy at a time)
            self.down_damaged[i] = bool(self.damaged_frames(i, self.reps[i]))
            self.reps[i].shut()
            self.reps[i] = None
            self.net = [n for n in self.net if not (n[0] == "rep" and n[2] == i)]

    @rule(i=st.integers(0, N - 1))
    def replicator_restarts(self, i):
        if self.reps[i] is None:
            self.reps[i] = self._open(i)

    # -- the replicators' peer loops -------------------------------------------------------
    @rule(i=st.integers(0, N - 1), due=st.booleans())
    def peer_loop_runs(self, i, due):
        """A replicator's loop turn: fetches time out; when the second is up (or `due`), it
        asks its peers for their streams, states and digests (catch-up, epoch-history
        comparison, digest comparison, repair follow from the answers)."""
        rep = self.reps[i]
        if rep is not None:
            if due:
                rep.peers.check_at = 0.0
            rep.peers.tick()

    @rule(i=st.integers(0, N - 1), data=st.data())
    def frame_damaged(self, i, data):
        """Bytes of a committed frame rot on a replicator's disk: its CRC fails from now on.
        The replicator must refuse to serve it and repair it from its peers."""
        rep = self.reps[i]
        if rep is None or any(self.damaged_frames(j, r) if r is not None
                              else self.down_damaged.get(j, False)
                              for j, r in enumerate(self.reps) if j != i):
            return  # two damaged copies at once: a scripted test below
        log = rep.store.stream(STREAM)
        with rep.store.env.begin(write=True) as txn:
            frames = []
            for key, value in txn.cursor(db=log.log_db):
                if _sound(value) and scan(value[4:])[2] <= log.commit:
                    frames.append((key, value))
            if not frames:
                return
            key, value = data.draw(st.sampled_from(frames))
            at = data.draw(st.integers(4, len(value) - 1))
            bad = bytearray(value)
            bad[at] ^= data.draw(st.integers(1, 255))
            txn.put(key, bytes(bad), db=log.log_db)
        self.truth[(i, key)] = value

    def damaged_frames(self, i: int, rep: ModelReplicator) -> list[int]:
        log = rep.store.stream(STREAM)
        with rep.store.env.begin() as txn:
            return [U64.unpack(key)[0] for key, value in txn.cursor(db=log.log_db)
                    if not _sound(value)]

    def peer_rounds(self, rounds: int) -> None:
        """Every replicator's peer loop runs once a second and the peers' messages are
        delivered in order."""
        for _ in range(rounds):
            self.t += peers_module.CHECK_EVERY_S
            for rep in self.reps:
                if rep is not None:
                    rep.peers.tick()
            for _ in range(10_000):
                k = next((k for k, n in enumerate(self.net)
                          if n[0] == "peer" or n[1].startswith(b"r")), None)
                if k is None:
                    break
                self.deliver_at(k)

    @rule()
    def faults_heal(self):
        """Liveness: once every replicator is up and the network delivers in order, the newest
        master commits everything it sequenced and every replicator ends with its log (a
        refusal as a conflict is reconciled; nothing stalls for good)."""
        for i in range(N):
            self.replicator_restarts(i)
        self.net.clear()
        live = self.live()
        m = live[-1] if live else None
        if m is None or not m.ready:
            if m is None:
                self.start_master()
                m = self.live()[-1]
        for k in range(80):
            self.settle(m, 1)
            if k % 8 == 7:     # the replicators' peer loops run meanwhile (repairs included)
                self.peer_rounds(1)
            if not m.alive:
                return  # fenced by a newer claim that was in flight: nothing to prove here
            if m.ready and m.committed == m.next_seq - 1 and all(
                    lk.known and lk.acked == m.next_seq - 1 for lk in m.links):
                break
        assert m.ready, f"the master did not recover: {m.recovery}"
        top = m.next_seq - 1
        assert m.committed == top and all(lk.known and lk.acked == top for lk in m.links), (
            f"stalled: committed {m.committed} of {top}; links "
            f"{[(lk.known, lk.acked) for lk in m.links]}")
        logs = [x[0] for x in self.logs()]
        assert all(len(log) >= m.next_seq - 1 for log in logs)
        assert logs[0][:m.next_seq - 1] == logs[1][:m.next_seq - 1] == logs[2][:m.next_seq - 1]
        # The peers compare and repair: no damaged frame is left, and the committed prefixes
        # are one. A COMMIT lost above (the network was cleared) is not resent: the next
        # APPEND carries the commit point, as the loop's next Tick does.
        self._guard(m, m._emit_tick, self.mono_ns())
        self.settle(m, 4)
        for _ in range(20):
            self.peer_rounds(1)
            if not any(self.damaged_frames(i, rep) for i, rep in enumerate(self.reps)):
                break
        damaged = {i: self.damaged_frames(i, rep) for i, rep in enumerate(self.reps)}
        assert not any(damaged.values()), f"damaged frames not repaired: {damaged}"
        held = self.logs()
        commits = [commit for _recs, commit in held]
        assert all(c >= top for c in commits), f"commit points {commits} below {top}"
        low = min(commits)
        assert held[0][0][:low] == held[1][0][:low] == held[2][0][:low]

    # -- the network ------------------------------------------------------------------------
    @precondition(lambda self: self.net)
    @rule(data=st.data())
    def deliver(self, data):
        self.deliver_at(data.draw(st.integers(0, len(self.net) - 1)))

    def deliver_at(self, k: int) -> None:
        where, ident, i, parts = self.net.pop(k)
        if where == "peer":    # replicator i answers a peer's request
            asker = int(ident[1:].split(b":")[0])
            rep = self.reps[asker]
            if rep is not None and rep.ident == ident:  # a restarted one has a new socket
                rep.peers.on_answer(others(asker).index(i), parts)
            return
        if where == "rep":
            rep = self.reps[i]
            if rep is not None:
                rep.handle([[ident, *parts]])
            return
        m = self.masters.get(ident)
        if m is not None and m.alive:
            self._guard(m, m._on_reply, m.links[i], parts)

    @precondition(lambda self: self.net)
    @rule(k=st.integers(0, 10_000))
    def lose(self, k):
        self.net.pop(k % len(self.net))

    @precondition(lambda self: self.net)
    @rule(k=st.integers(0, 10_000))
    def duplicate(self, k):
        self.net.append(self.net[k % len(self.net)])

    # -- what the outside world saw ---------------------------------------------------------
    def on_published(self, frame: bytes) -> None:
        for rec in decode(frame):
            old = self.published.setdefault(rec[0], rec)
            assert old == rec, f"seq {rec[0]} forwarded as {old} and as {rec}"

    def on_producer_reply(self, kind: bytes, body: dict) -> None:
        if kind == wire.ACK:
            self.acked_next = max(self.acked_next, body["next"])
            for ss_first, ss_last, seq_first in body["runs"]:
                for k in range(ss_last - ss_first + 1):
                    seq = self.acked_seqs.setdefault(ss_first + k, seq_first + k)
                    assert seq == seq_first + k, f"source_seq {ss_first + k} acked at two seqs"

    # -- invariants -------------------------------------------------------------------------
    def logs(self) -> list[tuple[list, int] | None]:
        return [None if rep is None else self.held(i, rep) for i, rep in enumerate(self.reps)]

    def held(self, i: int, rep: ModelReplicator) -> tuple[list, int]:
        """The records a replicator holds, and its commit point. A frame whose CRC fails is
        read as it was before a rule damaged it (the replicator itself never serves it); a
        frame whose CRC passes is read as it is, so a repair that sealed wrong bytes shows."""
        log = rep.store.stream(STREAM)
        frames = []
        with rep.store.env.begin() as txn:
            for key, value in txn.cursor(db=log.log_db):
                assert U64.unpack(key)[0] <= log.last, (
                    f"replicator {i}: a frame stored at {U64.unpack(key)[0]}, past last "
                    f"{log.last}")
                if not _sound(value):
                    value = self.truth.get((i, key))
                    assert value is not None, (
                        f"replicator {i}: the frame at {U64.unpack(key)[0]} fails its CRC and "
                        f"no rule damaged it")
                frames.append(value[4:])
        recs = decode(b"".join(frames)) if frames else []
        assert [r[0] for r in recs] == list(range(1, log.last + 1)), (
            f"replicator {i} holds seqs {[r[0] for r in recs]} with last {log.last}")
        for rec in recs[:log.commit]:
            old = self.committed.setdefault(rec[0], rec)
            assert old == rec, f"committed seq {rec[0]} was {old} and is {rec} on replicator {i}"
        return recs, log.commit

    def states(self) -> list[dict | None]:
        return [None if rep is None else rep.store.stream(STREAM).state() for rep in self.reps]

    @invariant()
    def forwarded_and_acknowledged_records_survive_any_failover(self):
        need = replication.needed(self.policy, N)
        logs = self.logs()
        # a crashed replicator keeps its log: read it from disk for the check
        for i in range(N):
            if logs[i] is None:
                rep = self._open(i)
                logs[i] = self.held(i, rep)
                rep.shut()
        states = []
        for recs, _commit in logs:
            history: list[list[int]] = []
            for r in recs:
                if not history or history[-1][0] != r[4]:
                    history.append([r[4], r[0]])
            states.append({"last": len(recs), "last_epoch": recs[-1][4] if recs else 0,
                           "history": history})
        for size in range(need, N + 1):
            for subset in itertools.combinations(range(N), size):
                adopted = logs[subset[replication.best_log([states[i] for i in subset])]][0]
                for seq, rec in self.published.items():
                    assert len(adopted) >= seq and adopted[seq - 1] == rec, (
                        f"a master recovering from {subset} would lose forwarded seq {seq}")
                ss_held = {r[3]: r[0] for r in adopted if r[2] == 1}
                for ss in range(1, self.acked_next):
                    assert ss in ss_held, (
                        f"a master recovering from {subset} would lose acked source_seq {ss}")
                for ss, seq in self.acked_seqs.items():
                    assert ss_held.get(ss) == seq, f"acked source_seq {ss} is not at seq {seq}"

    @invariant()
    def committed_prefixes_agree_and_logs_are_sound(self):
        logs = [x for x in self.logs() if x is not None]
        for (a, ca), (b, cb) in itertools.combinations(logs, 2):
            top = min(ca, cb, len(a), len(b))
            assert a[:top] == b[:top], "two replicators differ at or below their commit points"
        for recs, _commit in logs:
            seen = set()
            for prev, rec in zip(recs, recs[1:], strict=False):
                assert prev[1] <= rec[1] <= prev[1] + MAX_STEP_NS, (
                    f"ts goes from {prev[1]} to {rec[1]} at seq {rec[0]}")
            for r in recs:
                if r[2] == 1:
                    assert r[3] not in seen, f"source_seq {r[3]} sequenced twice"
                    seen.add(r[3])

    @invariant()
    def backpressure_bounds_what_is_uncommitted(self):
        batch_bytes = BATCH_MAX * (HEADER_SIZE + PAYLOAD) + HEADER_SIZE  # one batch and a Tick
        for m in self.live():
            if not m.ready:
                continue
            assert m.pending_bytes < m.max_uncommitted_bytes + batch_bytes
            for seq in range(m.committed + 1, m.next_seq):
                assert m.window.frame_from(seq) is not None, f"uncommitted seq {seq} evicted"


def _sound(value: bytes) -> bool:
    """A stored value (CRC-32, then the frame) whose CRC holds."""
    return len(value) >= 4 and zlib.crc32(value[4:]) == int.from_bytes(value[:4], "little")


class ModelAll(Model):
    policy = "all"


# SEQEX_EXAMPLES=2000 for a long run (the defaults keep the suite fast)
TestQuorum = Model.TestCase
TestQuorum.settings = settings(max_examples=EXAMPLES or 100, stateful_step_count=100,
                               deadline=None)
TestAll = ModelAll.TestCase
TestAll.settings = settings(max_examples=EXAMPLES // 2 or 40, stateful_step_count=100,
                            deadline=None)


def _drive(model: Model, m: ModelMaster, rounds: int, drop=lambda entry: False) -> None:
    """Let m work and deliver every message in order, dropping those `drop` picks."""
    for _ in range(rounds):
        model.master_work(m)
        while model.net:
            entry = model.net.pop(0)
            if not drop(entry):
                model.net.insert(0, entry)
                model.deliver_at(0)
        model.t += 0.1


def test_a_conflict_is_reconciled_and_the_replicator_catches_up():
    """A replicator keeps an older epoch's record where the new master writes its own, and the
    TRUNCATE that would remove it is lost: the master's APPEND is refused as a conflict. The
    master claims and reconciles that replicator again (common prefix, TRUNCATE, resend), and
    the replicator ends with the master's log. Before the fix, the master kept the replicator
    as reconciled, resent into the conflict every second, and never counted it again."""
    model = Model()
    try:
        model.first_master()
        m1 = model.masters[b"m0"]
        assert m1.ready and m1.committed == 1
        batch = pack(1, 1, 32, [b"%08d" % 1])
        m1.sequence_turn([(b"p1", wire.DATA, [b"p1", wire.DATA, b"\x80", batch])])
        # the record reaches replicator 2 only; then the master dies
        for entry in [e for e in model.net if e[0] == "rep" and e[2] != 2]:
            model.net.remove(entry)
        _drive(model, m1, 1)
        m1.alive = False
        assert model.reps[2].store.stream(STREAM).last == 2
        model.replicator_crashes(2)
        model.start_master()
        m2 = model.masters[b"m1"]
        _drive(model, m2, 20)
        assert m2.ready and m2.committed == 2
        model.replicator_restarts(2)
        lost = []

        def drop_first_truncate(entry):
            if entry[0] == "rep" and entry[3][0] == wire.TRUNCATE and not lost:
                lost.append(entry)
                return True
            return False
        _drive(model, m2, 40, drop_first_truncate)
        assert lost, "the master should have truncated replicator 2's tail"
        top = m2.next_seq - 1
        assert all(lk.known and lk.acked == top for lk in m2.links), \
            [(lk.known, lk.acked) for lk in m2.links]
        logs = [x[0] for x in model.logs()]
        assert logs[0] == logs[1] == logs[2]
        assert logs[2][1][4] == m2.epoch  # the older epoch's record is gone
    finally:
        model.teardown()


def test_a_gap_answer_does_not_count_a_stale_tail_as_acknowledged():
    """Replicator 2 comes back holding records 2..4 of an older epoch. The master reconciles it
    (agreed up to 1) but the TRUNCATE and the APPENDs of 2..5 are lost; the APPEND of 6 is
    refused as a gap with last = 4. Those 4 records are not the master's: its ack for that
    replicator must stay at 1 (before the fix it jumped to 4, so under quorum it could commit
    seqs 2..4 on one real copy and one stale one)."""
    model = Model()
    try:
        model.first_master()
        m1 = model.masters[b"m0"]
        for ss in (1, 2, 3):
            m1.sequence_turn([(b"p1", wire.DATA, [b"p1", wire.DATA, b"\x80",
                                                  pack(1, ss, 32, [b"%08d" % ss])])])
        for entry in [e for e in model.net if e[0] == "rep" and e[2] != 2]:
            model.net.remove(entry)
        _drive(model, m1, 1)
        m1.alive = False
        assert model.reps[2].store.stream(STREAM).last == 4
        model.replicator_crashes(2)
        model.start_master()
        m2 = model.masters[b"m1"]
        _drive(model, m2, 20)
        for ss in (1, 2, 3, 4):   # the new master's own records 3..6, one frame each
            m2.sequence_turn([(b"p1", wire.DATA, [b"p1", wire.DATA, b"\x80",
                                                  pack(1, ss, 32, [b"%08d" % ss])])])
        _drive(model, m2, 2)
        top = m2.next_seq - 1
        assert top == 6
        model.replicator_restarts(2)
        seen: list[tuple[bool, int]] = []
        on_appended = m2._on_appended

        def watch(link, body):
            on_appended(link, body)
            if link is m2.links[2]:
                seen.append((link.known, link.acked))
        m2._on_appended = watch

        def drop(entry):
            if entry[0] == "peer" or entry[1].startswith(b"r"):
                return True   # no catch-up from the peers: the master's accounting alone
            if entry[0] != "rep" or entry[2] != 2:
                return False
            kind = entry[3][0]
            if kind == wire.TRUNCATE:
                return True
            if kind != wire.APPEND:
                return False
            head = wire.unpack(entry[3][1])
            if head["first"] >= top:
                return False
            if head["last"] < top:
                return True
            # the master resends in runs (Window.run_from): of the run 2..6, only 6 arrives
            entry[3][2] = trim(entry[3][2], head["first"], top)
            entry[3][1] = wire.pack({**head, "first": top})
            return False
        _drive(model, m2, 8, drop)
        assert seen, "replicator 2 never answered"
        assert all(acked <= 1 for known, acked in seen if known), seen
        _drive(model, m2, 40)
        assert all(lk.known and lk.acked == m2.next_seq - 1 for lk in m2.links)
    finally:
        model.teardown()


def _damage(model: Model, i: int, seq: int, at: int) -> None:
    """Flip byte `at` of the stored frame whose key is `seq` on replicator i (0: the CRC)."""
    rep = model.reps[i]
    log = rep.store.stream(STREAM)
    with rep.store.env.begin(write=True) as txn:
        value = txn.get(U64.pack(seq), db=log.log_db)
        bad = bytearray(value)
        bad[4 + at] ^= 0x02
        txn.put(U64.pack(seq), bytes(bad), db=log.log_db)
    model.truth[(i, U64.pack(seq))] = value


def test_a_frame_with_a_damaged_header_is_repaired_from_the_peers():
    """Bytes of the header of a committed frame rot (its record count). The comparison finds
    the range damaged and fetches the peers' bytes; the repair must take the damaged frame's
    extent from the keys around it, not from its own damaged header. Before the fix the repair
    either failed for good ("reaches past the repaired range") or sealed a piece of the
    damaged bytes as a new frame past the log's end, so the next APPEND failed in LMDB."""
    model = Model()
    try:
        model.first_master()
        m = model.masters[b"m0"]
        batch = pack(1, 1, 32, [b"%08d" % 1])
        m.sequence_turn([(b"p1", wire.DATA, [b"p1", wire.DATA, b"\x80", batch])])
        _drive(model, m, 4)
        assert all(rep.store.stream(STREAM).commit == 2 for rep in model.reps)
        _damage(model, 0, 1, 0)
        model.peer_rounds(6)
        assert model.damaged_frames(0, model.reps[0]) == []
        assert model.reps[0].stats["repaired_records"] >= 1
        model.logs()  # the invariants' reader: seqs 1..last, committed records unchanged
        batch = pack(1, 2, 32, [b"%08d" % 2])
        m.sequence_turn([(b"p1", wire.DATA, [b"p1", wire.DATA, b"\x80", batch])])
        _drive(model, m, 4)
        assert m.committed == 3
        logs = [x[0] for x in model.logs()]
        assert logs[0] == logs[1] == logs[2]
    finally:
        model.teardown()


def test_two_damaged_copies_are_repaired_from_the_third():
    """The same committed frame rots on two replicators; the third holds it intact. A damaged
    replicator's DIGEST request gets an ERROR from the other damaged one, so a comparison that
    waits for every peer's digest never ends and neither copy is ever repaired. A replicator
    whose own copy is damaged repairs from the first peer that sends a digest."""
    model = Model()
    try:
        model.first_master()
        m = model.masters[b"m0"]
        batch = pack(1, 1, 32, [b"%08d" % 1])
        m.sequence_turn([(b"p1", wire.DATA, [b"p1", wire.DATA, b"\x80", batch])])
        _drive(model, m, 4)
        assert all(rep.store.stream(STREAM).commit == 2 for rep in model.reps)
        _damage(model, 0, 1, 20)
        _damage(model, 1, 1, 20)
        model.peer_rounds(8)
        assert [model.damaged_frames(i, rep) for i, rep in enumerate(model.reps)] == [[], [], []]
        logs = [x[0] for x in model.logs()]
        assert logs[0] == logs[1] == logs[2]
    finally:
        model.teardown()


def _deliver_all(model: Model, keep=lambda entry: True) -> None:
    """Deliver every message in order (those that `keep` refuses are lost), replies included."""
    while model.net:
        entry = model.net.pop(0)
        if keep(entry):
            model.net.insert(0, entry)
            model.deliver_at(0)


def _two_masters_claiming(model: Model):
    """The first master dies; two start at once, both learn epoch 1 and both claim epoch 2."""
    model.first_master()
    model.masters[b"m0"].alive = False
    model.start_master()
    model.start_master()
    a, b = model.masters[b"m1"], model.masters[b"m2"]
    _deliver_all(model)                 # both learn epoch 1
    for m in (a, b):
        model.master_work(m)            # both claim epoch 2
    return a, b


def test_two_masters_that_start_together_never_share_an_epoch():
    """Two masters start at once and both learn epoch 1 from the replicators, so both claim
    epoch 2. Only one may win it: a replicator that granted epoch 2 to one master must refuse
    it to the other. Otherwise both take the stream over with one epoch, each stamps its own
    record at seq 2, and log matching (same epoch at the same seq, same records) reconciles
    the loser's conflicting record as agreed: seq 2 was forwarded twice with different bytes
    (hypothesis found it as seq 59, after repairs and wall clock steps that only shuffled the
    timing). Whatever the order, no seq is forwarded with two records, and at most one master
    serves an epoch."""
    model = Model()
    try:
        a, b = _two_masters_claiming(model)
        assert a.recovery.phase == b.recovery.phase == "claim"
        assert a.recovery.epoch == b.recovery.epoch == 2
        _deliver_all(model)                 # a's claims land first, then b's
        for _ in range(20):
            for m in (a, b):                # each stamps and forwards what it can
                if m.alive:
                    model.master_work(m)
                    if m.ready and m.tick_due(model.mono_ns()):
                        model._guard(m, m._emit_tick, model.mono_ns())
                    _deliver_all(model)     # Model.on_published: one record per seq
                model.t += 0.05             # so that their records differ
        ready = [m for m in (a, b) if m.alive and m.ready]
        assert len({m.epoch for m in ready}) == len(ready), \
            [(m.ident, m.epoch) for m in ready]
        model.forwarded_and_acknowledged_records_survive_any_failover()
        model.committed_prefixes_agree_and_logs_are_sound()
        model.faults_heal()
    finally:
        model.teardown()


def test_a_state_answer_is_not_taken_for_a_granted_claim():
    """A master claims with a STATE before each CLAIM (a restarted replicator opens the stream
    on the read). When another master already holds the epoch being claimed, the STATE's
    answer carries that very epoch: it must not count as a claim granted to this master, or
    it takes the stream over at an epoch that another master serves."""
    model = Model()
    try:
        a, b = _two_masters_claiming(model)
        assert a.recovery.epoch == b.recovery.epoch == 2
        # a's STATE and CLAIM arrive; of b's, only the STATEs (its CLAIMs are lost)
        _deliver_all(model, keep=lambda e: not (e[1] == b.ident and e[3][0] == wire.CLAIM))
        for _ in range(3):
            model.master_work(b)
            _deliver_all(model, keep=lambda e: not (e[1] == b.ident and e[3][0] == wire.CLAIM))
        assert b.recovery is not None and b.recovery.phase in ("state", "claim"), \
            "a STATE answer was taken for a granted claim"
    finally:
        model.teardown()


def test_a_new_master_reads_its_tail_from_another_replicator_when_one_cannot_serve_it():
    """The new master reads the tail of the log it adopted from one replicator that holds it
    (replicator 0 wins a tie). There a frame has rotted (its CRC fails), and the peers do not
    repair it soon: their comparison window has passed it, and waits for the digest of a
    replicator that missed the last commit point, which only a master can move. Every REPLAY
    of the tail is answered with an error. Replicator 2 holds the same log; the master must
    read the tail from it. Before the fix it asked replicator 0 again every 2 s until its
    recovery deadline, and the stream stood still (the model found it with seed 3)."""
    model = Model()
    try:
        model.first_master()
        model.faults_heal()          # seq 2 committed everywhere; the peers compared 1..2
        m0 = model.masters[b"m0"]
        model.t += 1
        m0._emit_tick(model.mono_ns())
        model.settle(m0, 1)          # seq 3 on every replicator, committed on none
        model.replicator_crashes(1)
        model.settle(m0, 1)          # the commit point 3 reaches replicators 0 and 2 only
        _damage(model, 0, 1, 0)
        m0.alive = False
        model.faults_heal()          # a new master recovers, commits, and the peers repair
        m = model.live()[-1]
        assert m.ready and m.epoch == 2
    finally:
        model.teardown()
