"""The sequencer's decisions, without sockets (mq.sequencer.SequencerCore, mq.master.Master).

Each test builds a core whose I/O hooks record what it sends, feeds it replies by hand, and
checks one rule: the sequenced clock, the epoch width, how much of the tail a new master reads,
backpressure and the resend window, cheap duplicates, and source ownership.
"""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as hst

from mq import wire
from mq.master import FRAME_OVERHEAD, MAX_EPOCH, EpochExhausted, Window
from mq.record import decode, encode, pack, scan
from mq.sequencer import SequencedClock, SequencerCore, Upstream

STREAM = "in.unit"
SEC = 1_000_000_000


class FakeClock:
    def __init__(self, wall_ns: int = 1_700_000_000 * SEC):
        self.wall_ns = wall_ns
        self.mono_ns = 10 * SEC

    def advance(self, ns: int) -> None:
        self.wall_ns += ns
        self.mono_ns += ns


class Core(SequencerCore):
    def __init__(self, replicators: int = 3, policy: str = "quorum", clock: FakeClock | None = None,
                 **kw):
        self.fake = clock or FakeClock()
        super().__init__(STREAM, [f"r{i}" for i in range(replicators)], policy,
                         clock=SequencedClock(kw.pop("max_step_ns", SEC),
                                              wall=lambda: self.fake.wall_ns,
                                              mono=lambda: self.fake.mono_ns),
                         mono=lambda: self.fake.mono_ns / 1e9, startup_grace_s=0.0, **kw)
        self.sent: list[tuple[int, list[bytes]]] = []
        self.published: list[bytes] = []
        self.replies: list[tuple[bytes, bytes, dict]] = []
        self.alive: set[bytes] = set()

    def _try_send(self, link, msg):
        self.sent.append((self.links.index(link), msg))
        return True

    def _publish(self, frame):
        self.published.append(frame)

    def _reply(self, ident, kind, body):
        self.replies.append((ident, kind, body))

    def _peer_alive(self, ident):
        return ident in self.alive

    def take(self, kind: bytes) -> list[tuple[int, dict, list[bytes]]]:
        out = [(i, wire.unpack(m[1]), m) for i, m in self.sent if m[0] == kind]
        self.sent = [(i, m) for i, m in self.sent if m[0] != kind]
        return out


def state(last=0, epoch=0, commit=0, history=(), ts=0, sources=(), ok=True,
          claimant=None) -> list[bytes]:
    """A STATE answer; with `claimant`, a CLAIM's answer (whom the epoch was granted to)."""
    body = {"stream": STREAM, "last": last, "epoch": epoch, "commit": commit, "ts": ts,
            "last_epoch": history[-1][0] if history and last else 0,
            "history": [list(h) for h in history], "sources": [list(s) for s in sources],
            "ok": ok}
    if claimant is not None:
        body["claimant"] = claimant
    return [wire.STATE, wire.pack(body)]


def recover(core: Core, states: list[list[bytes]], tail: bytes = b"") -> None:
    """Run a recovery where replicator i answers states[i] (its CLAIM with the claimed epoch,
    granted to this master)."""
    core.begin_recovery()
    core.recovery_step()
    for i, st in enumerate(states):
        core._on_reply(core.links[i], st)
    core.recovery_step()  # -> claim
    for i, st in enumerate(states):
        body = wire.unpack(st[1])
        body["epoch"] = core.recovery.epoch
        body["claimant"] = core.claimant
        core._on_reply(core.links[i], [wire.STATE, wire.pack(body)])
    while not core.recovery_step():
        for i, body, _m in core.take(wire.REPLAY):
            seq_to = body["to"]
            frame = b"".join(f for f in [tail] if f)
            recs = [r for r in decode(frame) if body["from"] <= r[0] <= seq_to]
            core._on_reply(core.links[i], [wire.RECORDS, wire.pack(
                {"stream": STREAM, "from": body["from"], "req": body["req"]}), encode(recs)])


def records(first: int, last: int, epoch: int = 1, ts: int = 1) -> bytes:
    return encode([(s, ts, 9, s, epoch, 32, b"x" * 10) for s in range(first, last + 1)])


def ack_all(core: Core) -> None:
    """Every replicator acknowledges everything sent to it."""
    for i, body, _m in core.take(wire.APPEND):
        core._on_reply(core.links[i], [wire.APPENDED, wire.pack(
            {"stream": STREAM, "ok": True, "last": body["last"], "epoch": core.epoch})])
    core._forward()


def data(src: int, first: int, count: int, ident: bytes = b"p") -> tuple:
    batch = pack(src, first, 32, [b"%08d" % ss for ss in range(first, first + count)])
    return (ident, wire.DATA, [ident, wire.DATA, b"\x80", batch])


# -- the sequenced clock ----------------------------------------------------------------------

def test_clock_follows_the_wall_clock_when_it_behaves():
    fake = FakeClock()
    clock = SequencedClock(SEC, wall=lambda: fake.wall_ns, mono=lambda: fake.mono_ns)
    first = clock.now()
    assert first == fake.wall_ns
    fake.advance(100_000_000)
    assert clock.now() == fake.wall_ns


def test_clock_keeps_moving_when_the_wall_clock_steps_back():
    """A step back of an hour neither stops time (Ticks, funding and the dead-man's switch go
    on, at half speed at least) nor makes it go backwards."""
    fake = FakeClock()
    clock = SequencedClock(SEC, wall=lambda: fake.wall_ns, mono=lambda: fake.mono_ns)
    stamps = [clock.now()]
    fake.wall_ns -= 3600 * SEC
    for _ in range(50):
        fake.advance(100_000_000)
        stamps.append(clock.now())
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert all(50_000_000 <= s <= 100_000_000 for s in steps), steps


def test_clock_bounds_a_forward_jump_to_double_speed_and_one_step_a_record():
    """A jump of a day moves time at most twice as fast as the monotonic clock, and each record
    by at most max_step: no record crosses two funding intervals, and a brief forward step of
    the wall clock leaves time at most as far ahead as the step lasted."""
    fake = FakeClock()
    clock = SequencedClock(SEC, wall=lambda: fake.wall_ns, mono=lambda: fake.mono_ns)
    last = clock.now()
    fake.wall_ns += 86_400 * SEC
    for _ in range(10):
        fake.advance(1_000_000)
        now = clock.now()
        assert now - last == 2_000_000
        last = now
    fake.advance(10 * SEC)
    assert clock.now() - last == SEC       # one record: at most max_step
    assert clock.lag_ns() > 0


def test_a_brief_forward_step_of_the_wall_clock_leaves_time_barely_ahead():
    """The wall clock jumps a day ahead for 10 s at 1,000 readings a second, then is set right:
    sequenced time is then at most 10 s ahead, and back in line within 20 s."""
    fake = FakeClock()
    clock = SequencedClock(SEC, wall=lambda: fake.wall_ns, mono=lambda: fake.mono_ns)
    clock.now()
    fake.wall_ns += 86_400 * SEC
    for _ in range(10_000):
        fake.advance(1_000_000)
        clock.now()
    fake.wall_ns -= 86_400 * SEC
    ahead = clock.now() - fake.wall_ns
    assert 0 < ahead <= 10 * SEC + 2_000_000
    for _ in range(20_000):
        fake.advance(1_000_000)
        clock.now()
    assert clock.now() - fake.wall_ns <= 2_000_000


def test_clock_resumes_after_the_last_record_of_the_adopted_log():
    """A new master whose wall clock is behind the log's last ts starts just after it, and one
    whose wall clock is far ahead starts just after it too, then catches up at double speed."""
    fake = FakeClock()
    clock = SequencedClock(SEC, wall=lambda: fake.wall_ns, mono=lambda: fake.mono_ns)
    clock.resume(fake.wall_ns + 3600 * SEC)
    assert clock.now() == fake.wall_ns + 3600 * SEC + 1
    clock = SequencedClock(SEC, wall=lambda: fake.wall_ns, mono=lambda: fake.mono_ns)
    start = fake.wall_ns - 3600 * SEC
    clock.resume(start)
    assert clock.now() == start + 1
    fake.advance(SEC // 4)
    assert clock.now() == start + 1 + SEC // 2


def test_ticks_go_on_and_stamps_never_go_back_when_the_wall_clock_steps_back():
    """Driven through the core: after the wall clock steps back an hour, idle Ticks are still
    due every tick_ms (they are timed on the monotonic clock) and carry increasing times."""
    core = Core()
    recover(core, [state(), state(), state()])
    core._emit_tick(core.fake.mono_ns)
    ack_all(core)
    core.fake.wall_ns -= 3600 * SEC
    for _ in range(5):
        core.fake.mono_ns += 100_000_000
        assert core.tick_due(core.fake.mono_ns)
        core._emit_tick(core.fake.mono_ns)
        ack_all(core)
    ts = [r[1] for f in core.published for r in decode(f)]
    assert len(ts) == 6 and ts == sorted(set(ts))


def test_a_lagging_clock_ticks_ten_times_as_often_until_it_caught_up():
    """A master that takes over a log stamped 5 s ago (the stream was down) moves time at
    double speed, ticking every tick_ms / 10 until sequenced time reached the wall clock."""
    core = Core()
    assert core.tick_interval_ns() == core.tick_ns  # a new stream has nothing to catch up
    recover(core, [state(ts=core.fake.wall_ns - 5 * SEC, last=0)] * 3)
    assert core.tick_interval_ns() == core.tick_ns // 10
    stamps = []
    for _ in range(2_000):
        core._emit_tick(core.fake.mono_ns)
        stamps.append(core.ts_ns)
        if core.tick_interval_ns() == core.tick_ns:
            break
        core.fake.advance(core.tick_interval_ns())
    assert core.tick_interval_ns() == core.tick_ns
    step = 2 * core.tick_ns // 10
    assert all(0 < b - a <= step for a, b in zip(stamps, stamps[1:], strict=False))
    assert 300 < len(stamps) < 600   # 5 s of lag closed at one extra second a second


# -- epochs ----------------------------------------------------------------------------------

def test_the_last_u32_epoch_is_claimed():
    core = Core()
    recover(core, [state(epoch=MAX_EPOCH - 1)] * 3)
    assert core.epoch == MAX_EPOCH


def test_an_epoch_beyond_u32_is_refused_with_the_next_step_and_nothing_is_claimed():
    """Before the fix the master claimed 2**32 and then died of OverflowError on every record,
    for good, since the replicators had persisted the epoch."""
    core = Core()
    core.begin_recovery()
    core.recovery_step()
    for i in range(3):
        core._on_reply(core.links[i], state(epoch=MAX_EPOCH))
    core.take(wire.STATE)
    with pytest.raises(EpochExhausted, match="Next step"):
        core.recovery_step()
    assert not core.take(wire.CLAIM)


def claiming_core() -> Core:
    """A recovering master that learnt epoch 1 from all three replicators and claims 2."""
    core = Core()
    core.begin_recovery()
    core.recovery_step()
    for i in range(3):
        core._on_reply(core.links[i], state(1, 1, 1, [(1, 1)]))
    core.recovery_step()
    return core


def test_only_a_claim_granted_to_this_master_takes_the_stream_over():
    """In the claim phase a STATE's answer that names the epoch claimed (another master was
    granted it: the STATE goes out before each CLAIM) grants nothing, nor does a CLAIM's
    answer granted to another claimant; a refusal at that epoch sends the master back to
    claim above it. Before the fix such STATE answers counted as granted claims, and two
    masters served one epoch."""
    core = claiming_core()
    assert core.recovery.phase == "claim" and core.recovery.epoch == 2
    claims = core.take(wire.CLAIM)
    assert [b["claimant"] for _i, b, _m in claims] == [core.claimant] * 3
    for i in range(3):   # answers to the STATEs: epoch 2 is held, by someone
        core._on_reply(core.links[i], state(1, 2, 1, [(1, 1)]))
        core._on_reply(core.links[i], state(1, 2, 1, [(1, 1)], claimant=core.claimant + 2))
    core.recovery_step()
    assert core.recovery.phase == "claim" and not core.recovery.answers
    for i in range(3):   # the CLAIMs' answers: refused, epoch 2 is another master's
        core._on_reply(core.links[i], state(1, 2, 1, [(1, 1)], ok=False,
                                            claimant=core.claimant + 2))
    core.recovery_step()
    assert core.recovery.phase == "state"
    recover(core, [state(1, 2, 1, [(1, 1)])] * 3, tail=records(1, 1))
    assert core.epoch == 3


def test_a_log_holding_records_of_the_epoch_claimed_is_not_adopted():
    """Records of the epoch just granted mean another master stamped with it; the master
    never adopts that log (it would share the epoch), and claims again above it."""
    core = claiming_core()
    for i in range(3):
        core._on_reply(core.links[i], state(2, 2, 1, [(1, 1), (2, 2)],
                                            claimant=core.claimant))
    core.recovery_step()
    assert core.recovery.phase == "state" and core.epoch == 0


# -- the tail a new master reads ---------------------------------------------------------------

def test_an_empty_replicator_does_not_make_recovery_read_the_whole_log():
    """Two replicators hold 1..50,000 (committed up to 49,990), the third is empty. The new
    master reads only the uncommitted tail and the last TAIL_RECORDS records from the most
    advanced replicator, not the log from seq 1 (before the fix: all 50,000)."""
    last = 50_000
    full = state(last, 1, 49_990, [(1, 1)], ts=5)
    core = Core()
    recover(core, [state(), full, full], tail=records(1, last))
    assert core.stats["tail_records"] == core.tail_records
    assert core.window.lowest() == last - core.tail_records + 1
    assert core.next_seq == last + 1


def test_the_uncommitted_tail_is_read_however_long():
    last = 30_000
    full = state(last, 1, 5_000, [(1, 1)], ts=5)
    core = Core()
    recover(core, [full, full, state()], tail=records(1, last))
    assert core.stats["tail_records"] == last - 5_000


# -- backpressure and the window ----------------------------------------------------------------

def test_the_window_never_evicts_an_uncommitted_frame():
    unit = 40 + FRAME_OVERHEAD     # what a frame of 40 bytes counts
    window = Window(6 * unit + unit // 4)
    for seq in range(1, 11):
        window.add(seq, seq, b"x" * 40, keep_from=3)
    assert window.lowest() == 3 and window.frame_from(3) is not None
    window.add(11, 11, b"x" * 40, keep_from=11)
    assert window.lowest() == 6 and window.bytes <= window.max_bytes
    assert window.evicted_uncommitted == 0


@given(hst.lists(hst.tuples(hst.integers(1, 4), hst.integers(1, 3)), min_size=1, max_size=30),
       hst.integers(0, 200), hst.integers(1, 4000))
def test_a_run_from_the_window_is_the_records_from_seq_in_frames_of_one_epoch(sizes, at, cap):
    """run_from joins whole frames after the one holding seq while they fit in max_bytes and
    hold one epoch; its bytes are the window's records seq..last (what read() gives), never
    less than the rest of the first frame, and the newest frame comes as it is."""
    window, seq, epoch = Window(1 << 30), 1, 1
    for n, epoch_step in sizes:
        epoch += epoch_step == 3   # now and then a new epoch
        window.add(seq, seq + n - 1, records(seq, seq + n - 1, epoch=epoch))
        seq += n
    top = seq - 1
    start = 1 + at % top
    first, last, frame = window.run_from(start, cap)
    assert first == start and frame == window.read(start, last)[0]
    assert scan(frame)[1:] == (start, last)
    assert len({r[4] for r in decode(frame)}) == 1
    held = window.frame_from(start)
    assert last >= held[1]
    if last > held[1]:
        assert len(frame) <= cap
    if last < top:   # it stopped for a reason: the next frame did not fit, or another epoch
        _f, nxt_last, nxt = window.frame_from(last + 1)
        assert len(frame) + len(nxt) > cap or decode(nxt)[0][4] != decode(frame)[0][4]


def test_a_run_from_a_seq_that_left_the_window_is_none():
    window = Window(100)
    for seq in range(1, 11):
        window.add(seq, seq, records(seq, seq))
    assert window.lowest() > 1 and window.run_from(1, 1 << 20) is None
    assert window.run_from(11, 1 << 20) is None


def test_a_window_without_backpressure_still_has_a_memory_bound():
    """A master that does not push back (a mirror) keeps at most twice the window."""
    window = Window(2 * (40 + FRAME_OVERHEAD))
    for seq in range(1, 21):
        window.add(seq, seq, b"x" * 40, keep_from=1)
    assert window.bytes <= 2 * window.max_bytes and window.evicted_uncommitted > 0


def test_backpressure_refuses_new_batches_once_the_uncommitted_bound_is_reached():
    """With one replicator of three down under "all", nothing commits: the core sequences up
    to the bound, then refuses (REFUSE busy, nothing acknowledged) instead of letting the
    uncommitted bytes, and the window, grow; once the replicator is back, it sequences again."""
    core = Core(policy="all", window_bytes=9 << 20, max_uncommitted_bytes=4000)
    recover(core, [state()] * 3)
    core._emit_tick(core.fake.mono_ns)
    ack_all(core)
    for _ in range(40):
        core.sequence_turn([data(1, core.next_ss.get(1, 1), 10)])
        for i, body, _m in core.take(wire.APPEND):
            if i != 2:   # replicator 2 is down
                core._on_reply(core.links[i], [wire.APPENDED, wire.pack(
                    {"stream": STREAM, "ok": True, "last": body["last"], "epoch": core.epoch})])
        core._forward()
    assert core.stats["busy"] > 0
    assert core.pending_bytes < 4000 + 10 * 60
    refusals = [b for _i, k, b in core.replies if k == wire.REFUSE]
    assert refusals and all(b["busy"] for b in refusals)
    assert not [b for _i, k, b in core.replies if k == wire.ACK]
    nxt = refusals[-1]["next"]
    core._on_reply(core.links[2], [wire.APPENDED, wire.pack(
        {"stream": STREAM, "ok": True, "last": core.next_seq - 1, "epoch": core.epoch})])
    core.links[2].sent = core.next_seq - 1
    core._on_reply(core.links[2], [wire.APPENDED, wire.pack(
        {"stream": STREAM, "ok": True, "last": core.next_seq - 1, "epoch": core.epoch})])
    core._forward()
    assert core.pending_bytes == 0
    core.sequence_turn([data(1, nxt, 10)])
    assert core.next_ss[1] == nxt + 10


# -- duplicates --------------------------------------------------------------------------------

def test_a_resent_outbox_gets_one_ack_a_turn():
    """A producer that resends 500 batches it already had sequenced gets one ACK for all of
    them in that turn, with every seq, and nothing is sequenced again."""
    core = Core()
    recover(core, [state()] * 3)
    for k in range(500):
        core.sequence_turn([data(1, 1 + 4 * k, 4)])
    ack_all(core)
    core.replies.clear()
    last = core.next_seq
    core.sequence_turn([data(1, 1 + 4 * k, 4) for k in range(500)])
    assert core.next_seq == last
    acks = [b for _i, kind, b in core.replies if kind == wire.ACK]
    assert len(acks) == 1 and acks[0]["next"] == 2001
    covered = sum(b - a + 1 for a, b, _s in acks[0]["runs"])
    assert covered == 2000
    assert acks[0]["dups"] == [[1 + 4 * k, 4 + 4 * k] for k in range(500)]   # what it answers


def test_the_answer_to_a_duplicate_says_what_it_covers_known_or_not():
    """A duplicate whose seqs the master no longer remembers is answered with ``dups`` and
    no run: the producer reports it as None on that answer, not on a timer. A batch that is
    partly a duplicate names the duplicate part in its commit's ACK."""
    from mq import master as master_mod
    core = Core()
    recover(core, [state()] * 3)
    core.sequence_turn([data(1, 1, 4)])
    ack_all(core)
    core.recent[1] = master_mod.RecentRuns()   # forgotten (as when older than RECENT_RUNS)
    core.replies.clear()
    core.sequence_turn([data(1, 1, 4)])
    (_i, kind, body), = core.replies
    assert kind == wire.ACK and body["runs"] == [] and body["dups"] == [[1, 4]]
    core.replies.clear()
    core.sequence_turn([data(1, 3, 4)])        # 3..4 again, 5..6 new
    ack_all(core)
    acks = [b for _i, kind, b in core.replies if kind == wire.ACK]
    assert acks[-1]["next"] == 7 and acks[-1]["dups"] == [[3, 4]]
    assert acks[-1]["runs"][-1][:2] == [5, 6]


def test_recent_runs_are_found_without_walking_every_run():
    from mq.master import RecentRuns
    runs = RecentRuns()
    for k in range(4096):
        runs.append(1 + 2 * k, 2 + 2 * k, 100 + 2 * k)
    assert runs.known(4001, 4004) == [[4001, 4002, 4100], [4003, 4004, 4102]]
    assert runs.known(9000, 9001) == []


# -- source ownership --------------------------------------------------------------------------

def test_a_second_live_connection_for_a_source_is_refused_with_a_reason():
    core = Core()
    recover(core, [state()] * 3)
    core.alive = {b"first"}
    core.sequence_turn([(b"first", wire.HELLO, [b"first", wire.HELLO, wire.pack({"src": 5})])])
    core.sequence_turn([(b"second", wire.HELLO, [b"second", wire.HELLO, wire.pack({"src": 5})]),
                        data(5, 1, 3, ident=b"second")])
    errors = [b for ident, k, b in core.replies if k == wire.ERROR and ident == b"second"]
    assert len(errors) == 2 and all(e["reason"] == "source_clash" and e["src"] == 5
                                    for e in errors)
    assert core.next_ss.get(5, 1) == 1, "nothing of the clashing connection is sequenced"
    core.alive = {b"second"}   # the first connection is gone: the newcomer takes over
    core.sequence_turn([data(5, 1, 3, ident=b"second")])
    assert core.next_ss[5] == 4


def test_hello_with_a_source_out_of_range_gets_an_error():
    core = Core()
    recover(core, [state()] * 3)
    core.sequence_turn([(b"p", wire.HELLO, [b"p", wire.HELLO, wire.pack({"src": 1 << 32})])])
    assert core.replies[-1][1] == wire.ERROR


def test_frames_carry_the_records_in_order():
    core = Core()
    recover(core, [state()] * 3)
    core.sequence_turn([data(1, 1, 3), data(2, 1, 2)])
    ack_all(core)
    n, first, last = scan(core.published[0])
    assert (n, first, last) == (5, 1, 5)


def test_a_refused_truncate_below_the_commit_point_is_an_alarm_with_the_next_step(caplog):
    """A replicator whose committed records differ from the master's log cannot be reconciled:
    it is left out (its acks stop counting) and the log says what the operator does."""
    core = Core()
    recover(core, [state()] * 3)
    core._on_reply(core.links[1], [wire.APPENDED, wire.pack(
        {"stream": STREAM, "ok": False, "last": 5, "epoch": core.epoch, "reason": "committed",
         "seq": 5})])
    assert not core.links[1].known
    assert "Next step" in caplog.text


def test_a_replicator_that_refused_a_truncate_below_its_commit_point_is_not_claimed_in_a_loop():
    """A refused TRUNCATE is settled by no reconciliation: claiming the replicator again at
    once (as after a conflict) ran claim, reconcile, TRUNCATE, refusal round the master's loop
    (40,198 reconciliations in 90 s of a process test, a core's worth of CPU). It is claimed
    again every PROBE_EVERY_S, as a replicator that is down."""
    from mq.master import PROBE_EVERY_S
    core = Core()
    recover(core, [state(epoch=4)] * 3)
    core._emit_tick(core.fake.mono_ns)
    core._pump_all()
    core.take(wire.CLAIM)
    core._on_reply(core.links[1], [wire.APPENDED, wire.pack(
        {"stream": STREAM, "ok": False, "last": 5, "epoch": core.epoch, "reason": "committed",
         "seq": 5})])
    core._pump_all()
    assert core.take(wire.CLAIM) == []
    core.fake.advance(int(PROBE_EVERY_S * 1e9) + 1)
    core._pump_all()
    assert [i for i, _b, _m in core.take(wire.CLAIM)] == [1]


def test_conflict_makes_the_master_claim_the_replicator_again_at_once():
    core = Core()
    recover(core, [state(epoch=4)] * 3)
    core._emit_tick(core.fake.mono_ns)
    core.take(wire.APPEND)
    core.take(wire.STATE)
    core.take(wire.CLAIM)
    core._on_reply(core.links[2], [wire.APPENDED, wire.pack(
        {"stream": STREAM, "ok": False, "last": 1, "epoch": core.epoch, "reason": "conflict",
         "seq": 1})])
    assert not core.links[2].known
    core._pump_all()
    claims = core.take(wire.CLAIM)
    assert [i for i, _b, _m in claims] == [2]
    # its answer: it holds seq 1 of epoch 1 (another master's); the master's seq 1 is its own
    core._on_reply(core.links[2], state(1, core.epoch, 0, [(3, 1)]))
    assert core.links[2].known and core.links[2].acked == 0
    truncates = core.take(wire.TRUNCATE)
    assert [(i, b["after"]) for i, b, _m in truncates] == [(2, 0)]


def test_the_tail_is_read_from_another_holder_when_one_answers_an_error_or_nothing():
    """The replicator whose log was adopted answers the tail REPLAY with an error (a damaged
    frame), the next holder does not answer at all: the master asks the next holder each
    time. A replicator whose log is the adopted one only up to seq 8 serves 1..8, and the
    rest comes from a replicator that holds it. Before the fix the master asked the first
    one again until its recovery deadline."""
    full = state(10, 1, 5, [(1, 1)], ts=5)
    short = state(8, 1, 5, [(1, 1)], ts=5)
    core = Core(replicators=4)
    core.begin_recovery()
    core.recovery_step()
    for i, st in enumerate([full, full, short, full]):
        core._on_reply(core.links[i], st)
    core.recovery_step()
    for i, st in enumerate([full, full, short, full]):
        body = wire.unpack(st[1])
        body.update(epoch=core.recovery.epoch, claimant=core.claimant)
        core._on_reply(core.links[i], [wire.STATE, wire.pack(body)])
    core.recovery_step()
    assert core.recovery.phase == "tail"

    def asked():
        (i, body, _m), = core.take(wire.REPLAY)
        return i, body

    assert asked()[0] == 0
    core._on_reply(core.links[0], [wire.ERROR, wire.pack(
        {"error": "in.unit: the frame stored at seq 1 is damaged"})])
    core.recovery_step()
    assert asked()[0] == 1
    core.fake.advance(3 * SEC)   # no answer
    core.recovery_step()
    i, body = asked()
    assert (i, body["from"], body["to"]) == (2, 1, 8)
    core._on_reply(core.links[2], [wire.RECORDS, wire.pack(
        {"stream": STREAM, "from": 1, "req": body["req"]}), records(1, 8)])
    core.recovery_step()
    i, body = asked()
    assert (i, body["from"], body["to"]) == (3, 9, 10)
    core._on_reply(core.links[3], [wire.RECORDS, wire.pack(
        {"stream": STREAM, "from": 9, "req": body["req"]}), records(9, 10)])
    assert core.recovery_step()
    assert core.stats["tail_records"] == 10 and core.next_seq == 11
    assert core.window.read(1, 10)[0] == records(1, 10)


def test_a_recovery_that_starts_over_reads_the_tail_afresh():
    """The replicators that hold the adopted log answer the tail REPLAY with nothing, each in
    turn (they lost what they claimed to hold): the master starts over, and its window holds
    each frame once."""
    full = state(100, 1, 50, [(1, 1)], ts=5)
    core = Core()
    core.begin_recovery()
    core.recovery_step()
    for i in range(3):
        core._on_reply(core.links[i], full)
    core.recovery_step()
    for i in range(3):
        core._on_reply(core.links[i], state(100, core.recovery.epoch, 50, [(1, 1)], ts=5,
                                            claimant=core.claimant))
    core.recovery_step()
    (i, body, _m), = core.take(wire.REPLAY)
    core._on_reply(core.links[i], [wire.RECORDS, wire.pack(
        {"stream": STREAM, "from": body["from"], "req": body["req"]}), records(1, 10)])
    core.recovery_step()
    for _ in range(3):   # each holder in turn has lost what it claimed
        (i, body, _m), = core.take(wire.REPLAY)
        core._on_reply(core.links[i], [wire.RECORDS, wire.pack(
            {"stream": STREAM, "from": body["from"], "req": body["req"]}), b""])
        core.recovery_step()
    assert core.recovery.phase == "state"
    core.sent.clear()
    recover(core, [full] * 3, tail=records(1, 100))
    assert core.window.firsts == sorted(set(core.window.firsts))
    assert core.stats["tail_records"] == 100 and core.next_seq == 101


def test_welcome_names_the_seqs_of_what_it_acknowledges_after_a_failover():
    """A new master knows the seqs of the tail it read; a producer that says where its
    acknowledgements stopped (HELLO.from) learns them in WELCOME instead of seq -1."""
    tail = encode([(s, 5, 1, s - 10, 1, 32, b"x") for s in range(11, 21)])
    core = Core()
    recover(core, [state(20, 1, 20, [(1, 1)], ts=5, sources=[(1, 11, 20)])] * 3,
            tail=records(1, 10) + tail)
    core._emit_tick(core.fake.mono_ns)
    ack_all(core)
    core.sequence_turn([(b"p", wire.HELLO, [b"p", wire.HELLO, wire.pack({"src": 1, "from": 7})])])
    _i, kind, body = core.replies[-1]
    assert kind == wire.WELCOME and body["durable"] == 11
    assert body["runs"] == [[7, 10, 17]]
    core.sequence_turn([(b"p", wire.HELLO, [b"p", wire.HELLO, wire.pack({"src": 1})])])
    assert "runs" not in core.replies[-1][2]


def test_a_replicator_is_never_told_a_commit_point_beyond_what_it_acknowledged():
    """A replicator reconciled over a stale tail (records of an older epoch, never committed)
    whose TRUNCATE was lost (a full send queue, a restart) still holds that tail. A COMMIT
    naming the master's commit point would make it mark the stale records committed (it takes
    min(commit, its last)) and serve them; TRUNCATE is then refused below that point for good.
    So each replicator is told at most what it acknowledged of this master's log."""
    core = Core()
    recover(core, [state(epoch=4)] * 3)
    core._emit_tick(core.fake.mono_ns)
    core.take(wire.APPEND)
    core.take(wire.STATE)
    core.take(wire.CLAIM)
    core._on_reply(core.links[2], [wire.APPENDED, wire.pack(
        {"stream": STREAM, "ok": False, "last": 3, "epoch": core.epoch, "reason": "conflict",
         "seq": 1})])
    core._pump_all()
    core.take(wire.CLAIM)
    # it holds seqs 1..3 of epoch 3 (a dead master's, never committed)
    core._on_reply(core.links[2], state(3, core.epoch, 0, [(3, 1)]))
    assert core.take(wire.TRUNCATE)   # ... and this TRUNCATE never reaches it
    for _ in range(3):
        core.fake.advance(SEC)
        core._emit_tick(core.fake.mono_ns)
        core._pump_all()
        for i, body, _m in core.take(wire.APPEND):
            if i != 2:
                core._on_reply(core.links[i], [wire.APPENDED, wire.pack(
                    {"stream": STREAM, "ok": True, "last": body["last"], "epoch": core.epoch})])
            else:
                assert body["commit"] <= body["last"], body
        core._forward()
    assert core.committed >= 3
    told = [b["commit"] for i, b, _m in core.take(wire.COMMIT) if i == 2]
    assert all(c <= core.links[2].acked for c in told), (told, core.links[2].acked)


def test_hello_for_sources_that_never_sent_anything_keeps_no_per_source_runs():
    """A HELLO with `from` asks which seqs the master remembers; for a source it has never
    sequenced there is nothing to name, and nothing may be kept for it either (a client
    cycling through source ids must not grow the master's memory)."""
    core = Core()
    recover(core, [state()] * 3)
    for src in range(1, 2001):
        core._control(b"p%d" % src, wire.HELLO, {"src": src, "from": 1})
    assert len(core.recent) == 0
    assert all(kind == wire.WELCOME for _i, kind, _b in core.replies)


UP = "stream=out.te.0,source=1001,pub=tcp://h:1,replicators=tcp://a:2|tcp://b:3"


@pytest.mark.parametrize("tail, kinds, route", [
    ("", [], 0),
    (",kinds=16|17", [16, 17], 0),
    (",route=0x3", [], 3),
    (",route=12", [], 12),
    (",kinds=76,route=0x8000000000000000", [76], 1 << 63),
])
def test_an_upstream_spec_names_kinds_and_a_route_mask(tail, kinds, route):
    up = Upstream.parse(UP + tail)
    assert (up.stream, up.source, up.replicators) == ("out.te.0", 1001, ["tcp://a:2", "tcp://b:3"])
    assert (up.kinds, up.route) == (kinds, route)


@pytest.mark.parametrize("tail, message", [
    (",route=0x", "invalid literal"),
    (",route=three", "invalid literal"),
    (",route=0", "route must be a mask in 1 .. 2\\*\\*64-1"),
    (",route=-1", "route must be a mask"),
    (",route=0x10000000000000000", "route must be a mask"),
])
def test_a_bad_route_mask_is_one_clear_error(tail, message):
    with pytest.raises(ValueError, match="bad upstream spec .*" + message):
        Upstream.parse(UP + tail)


@pytest.mark.parametrize("spec, message", [
    ("garbage", "'garbage' is not KEY=VALUE \\(stream=S,source=N,"),
    (UP + ",x", "'x' is not KEY=VALUE"),
    ("stream=x,source=1", "no pub, replicators \\(stream=S,"),
])
def test_a_malformed_upstream_spec_says_what_it_should_look_like(spec, message):
    """`--upstream garbage` answered "dictionary update sequence element #0 has length 1; 2 is
    required" (Python's words); a part without '=' or a missing key is named, with the form."""
    with pytest.raises(ValueError, match="bad upstream spec .*" + message):
        Upstream.parse(spec)
# -- dedup state that expires ---------------------------------------------------------------

def hello(src: int, ident: bytes = b"p") -> tuple:
    return (ident, wire.HELLO, [ident, wire.HELLO, wire.pack({"src": src})])


def errors(core: Core) -> list[dict]:
    return [b for _i, kind, b in core.replies if kind == wire.ERROR]


def test_a_source_idle_past_the_retention_is_forgotten_and_its_resend_refused():
    """Expiry in sequenced time: source 1 sends, then stays idle while source 2 keeps time
    moving for longer than the retention. Source 1 is forgotten (its table entries go), the
    floor rises above its numbers, a resend of its old records is refused with
    source_expired (neither acknowledged as a duplicate nor sequenced again), and its HELLO
    says to go on from the floor, where it is sequenced as new."""
    core = Core(source_retention_ns=10 * SEC)
    recover(core, [state()] * 3)
    core._emit_tick(core.fake.mono_ns)
    ack_all(core)
    core.sequence_turn([data(1, 1, 5)])
    ack_all(core)
    for k in range(30):   # 15 s of sequenced time from source 2 only
        core.fake.advance(SEC // 2)
        core.sequence_turn([data(2, 1 + k, 1, b"q")])
        ack_all(core)
    assert 1 not in core.next_ss and 1 not in core.durable_ss and 1 not in core.recent
    assert core.source_floor == 6 and core.stats["expired_sources"] == 1
    assert 2 in core.next_ss
    before = core.next_seq
    core.replies.clear()
    core.sequence_turn([data(1, 3, 3)])           # a resend of records 3..5
    assert core.next_seq == before
    [err] = errors(core)
    assert err["reason"] == "source_expired" and err["next"] == 6 and "3..5" in err["error"]
    assert not [b for _i, k, b in core.replies if k == wire.ACK]
    core.sequence_turn([hello(1)])
    welcome = core.replies[-1][2]
    assert (welcome["next"], welcome["durable"]) == (6, 6)
    core.sequence_turn([data(1, 6, 2)])
    assert core.next_seq == before + 2 and core.next_ss[1] == 8


def test_a_source_with_uncommitted_records_is_not_forgotten():
    core = Core(source_retention_ns=SEC)
    recover(core, [state()] * 3)
    core._emit_tick(core.fake.mono_ns)
    ack_all(core)
    core.sequence_turn([data(1, 1, 5)])           # never acknowledged by the replicators
    for _k in range(10):
        core.fake.advance(SEC // 2)
        core._emit_tick(core.fake.mono_ns)
    assert core.next_ss[1] == 6 and core.source_floor == 1


def test_new_sources_past_the_bound_are_refused_with_a_reason():
    core = Core(max_sources=3)
    recover(core, [state()] * 3)
    for src in (1, 2, 3):
        core.sequence_turn([data(src, 1, 1, b"p%d" % src)])
    core.replies.clear()
    before = core.next_seq
    core.sequence_turn([data(4, 1, 1, b"p4")])
    [err] = errors(core)
    assert err["reason"] == "too_many_sources" and err["src"] == 4
    assert core.next_seq == before and 4 not in core.next_ss and 4 not in core.owners
    core.sequence_turn([data(2, 2, 1, b"p2")])     # known sources go on
    assert core.next_ss[2] == 3


def test_a_new_master_takes_the_floor_and_each_sources_time_from_state():
    """What the replicators name (StreamLog.state) is what the new master keeps: sources with
    their last ts, and the floor of those left out; it asks with its retention and bound."""
    core = Core(source_retention_ns=7 * SEC, max_sources=100)
    body = wire.unpack(state(10, 1, 10, [(1, 1)], ts=50 * SEC,
                             sources=[(0, 3, 10, 50 * SEC), (2, 8, 9, 49 * SEC)])[1])
    body["source_floor"] = 41
    recover(core, [[wire.STATE, wire.pack(body)]] * 3, tail=records(1, 10, ts=50 * SEC))
    assert core.source_floor == 41 and core.last_ts[2] == 49 * SEC
    asks = [b for _i, b, _m in core.take(wire.STATE)] + [b for _i, b, _m in
                                                         core.take(wire.CLAIM)]
    assert asks and all(b["retention_ns"] == 7 * SEC and b["max_sources"] == 100 for b in asks)
    core.sequence_turn([hello(9)])
    assert core.replies[-1][2]["next"] == 41


def test_the_masters_bound_is_the_replicators_state_bound():
    from mq.sequencer import MAX_SOURCES
    from replicator.store import STATE_MAX_SOURCES
    assert MAX_SOURCES == STATE_MAX_SOURCES


def test_no_commit_message_while_appends_carry_the_point_and_one_when_the_stream_idles():
    """While frames flow, each APPEND carries the commit point (up to the frame before it): a
    COMMIT of its own would cost the replicator a transaction ahead of the next APPEND. Once
    no APPEND reached a replicator for 5 ms, a COMMIT tells it where the point stands."""
    core = Core(replicators=1, policy="first")
    recover(core, [state()])
    core._emit_tick(core.fake.mono_ns)
    ack_all(core)
    core.take(wire.COMMIT)
    ss = 1
    for _ in range(50):                   # a record every millisecond for 50 ms
        core.fake.advance(SEC // 1000)
        core.sequence_turn([data(7, ss, 1)])
        ss += 1
        ack_all(core)
    assert core.take(wire.COMMIT) == []
    assert core.links[0].commit_sent == core.committed - 1   # the last APPEND's point
    core.fake.advance(6 * SEC // 1000)    # idle
    core._forward()
    told = [b["commit"] for _i, b, _m in core.take(wire.COMMIT)]
    assert told == [core.committed]


def _grant(core: Core, i: int) -> None:
    core._on_reply(core.links[i], state(epoch=core.recovery.epoch, claimant=core.claimant))


def _claim_granted_by_0_and_1(core) -> None:
    """Replicators 0 and 1 grant the CLAIM, and the master takes a step 10 ms later."""
    _grant(core, 0)
    _grant(core, 1)
    core.fake.advance(SEC // 100)
    core.recovery_step()


def test_a_master_restarted_while_quorum_was_lost_takes_over_once_a_majority_is_back():
    """The compound fault campaign: the sequencer and two of three replicators SIGKILLed, the
    sequencer restarted at once. It waits (no majority), and once one replicator is back it
    takes over at once: the STATE phase's grace for slow replicators is long over, and the
    CLAIM phase does not wait it out again for the replicator that never answered STATE. It
    did: a further 2 s after quorum came back."""
    core = Core()
    core.startup_grace_s = 2.0
    core.begin_recovery()
    core.recovery_step()
    core._on_reply(core.links[0], state())      # the survivor; 1 and 2 are down
    core.fake.advance(3 * SEC)
    core.recovery_step()
    assert core.recovery.phase == "state"       # no majority: nothing claimed
    core._on_reply(core.links[1], state())      # replicator 1 is back
    core.recovery_step()
    assert core.recovery.phase == "claim"
    _claim_granted_by_0_and_1(core)
    assert core.recovery is None or core.recovery.phase == "tail", core.recovery


def test_the_claim_still_waits_for_a_replicator_that_answered_state():
    """...but a replicator that answered STATE is alive: the master waits (up to the grace)
    for its answer to the CLAIM too, so that it is fenced and reconciled in the takeover."""
    core = Core()
    core.startup_grace_s = 2.0
    core.begin_recovery()
    core.recovery_step()
    for i in range(3):
        core._on_reply(core.links[i], state())
    core.recovery_step()
    assert core.recovery.phase == "claim"
    _claim_granted_by_0_and_1(core)
    assert core.recovery.phase == "claim"       # replicator 2's grant is awaited
    core.fake.advance(2 * SEC)
    core.recovery_step()
    assert core.recovery is None or core.recovery.phase == "tail"


@pytest.mark.parametrize(("policy", "replicators", "fanout"), [
    ("first", 2, True), ("first", 1, True), ("quorum", 1, True),
    ("quorum", 3, False), ("quorum", 2, False), ("all", 2, False)])
def test_an_append_says_fanout_only_where_one_copy_commits(policy, replicators, fanout):
    """docs/log.md, "Fan-out from the replicators": a replicator may publish a record itself
    only when its copy alone commits it."""
    core = Core(replicators=replicators, policy=policy)
    recover(core, [state()] * replicators)
    core._emit_tick(core.fake.mono_ns)
    sent = core.take(wire.APPEND)
    assert len(sent) == replicators
    assert all(body.get("fanout", False) is fanout for _i, body, _m in sent)


def test_an_append_of_a_mirror_never_says_fanout():
    """A mirror's records carry its engine's epochs, not the mirror master's: never fanned out
    by the replicators, whatever the policy (mq.mirror.Mirror sets stamps_epochs False)."""
    class MirrorLike(Core):
        stamps_epochs = False
    core = MirrorLike(replicators=2, policy="first")
    recover(core, [state()] * 2)
    core.sequence_turn([data(1, 1, 3)])
    sent = core.take(wire.APPEND)
    assert sent and not any("fanout" in body for _i, body, _m in sent)


def test_a_mirror_takes_back_a_replicator_whose_records_carry_their_engines_epochs():
    """A fault campaign: after a failover of out.te.0's mirror (epoch 2 from seq 101), a
    replicator reconciled again (restarted, rebuilt from its peers, or after a gap) reported
    the history of its records, which carry the engine's epochs ([(1, 1)] here, or the input
    stream's later epochs). The mirror compared it with its own history, [(1, 1), (2, 101)],
    found a divergent tail from 101, sent a TRUNCATE below the replicator's commit point
    (refused: committed) and left it out of the stream for good."""
    class MirrorLike(Core):
        stamps_epochs = False
    core = MirrorLike(replicators=3, policy="quorum")
    recover(core, [state(last=100, epoch=1, commit=100, history=[(1, 1)])] * 3,
            tail=records(1, 100))
    assert core.epoch == 2 and core.history == [(1, 1), (2, 101)]
    core.sequence_turn([data(1, 1, 50)])
    ack_all(core)
    assert core.committed == 150
    core.take(wire.TRUNCATE)
    link = core.links[2]
    link.known = False                        # as after a gap: claimed and reconciled again
    core._on_reply(link, state(last=150, epoch=2, commit=150, history=[(1, 1), (3, 120)]))
    assert core.take(wire.TRUNCATE) == []
    assert link.known and link.acked == 150


# -- a replicator's full disk ------------------------------------------------------------------

def _full_reply(core, last):
    return [wire.APPENDED, wire.pack({"stream": STREAM, "ok": False, "last": last,
                                      "epoch": core.epoch, "reason": "disk_full", "seq": 0})]


def _ok_reply(core, last):
    return [wire.APPENDED, wire.pack({"stream": STREAM, "ok": True, "last": last,
                                      "epoch": core.epoch})]


def _in_flight(frames: int = 3):
    """A master whose replicators acknowledged seq 1 and have `frames` frames in flight (seqs 2,
    3, ...); the APPENDs sent, as (replicator, body)."""
    core = Core()
    recover(core, [state(epoch=4)] * 3)
    core._emit_tick(core.fake.mono_ns)
    ack_all(core)
    for _ in range(frames):
        core.fake.advance(SEC // 100)
        core._emit_tick(core.fake.mono_ns)
    return core, [(i, b) for i, b, _m in core.take(wire.APPEND)]


def _firsts_to(core, i: int) -> list[int]:
    return [b["first"] for j, b, _m in core.take(wire.APPEND) if j == i]


def test_a_replicator_whose_disk_is_full_gets_one_frame_at_a_time_until_it_takes_one():
    """A refusal for a full disk says the replicator stored nothing beyond what it acknowledged.
    The master goes back there at once (not after RESEND_AFTER_S of silence: under quorum with
    a peer down, the stream waits on it), and while the disk stays full sends it one frame
    every FULL_PROBE_S, not the whole backlog each time; its first acknowledgement ends that."""
    from mq.master import FULL_PROBE_S
    core, sent = _in_flight()
    full = core.links[2]
    assert [b["first"] for i, b in sent if i == 2] == [2, 3, 4]
    core._on_reply(full, _full_reply(core, 1))
    assert full.sent == full.acked == 1
    assert core.status()["replicators"][2] == {"addr": "r2", "acked": 1, "sent": 1,
                                               "known": True, "disk_full": True}
    core._pump_all()
    assert _firsts_to(core, 2) == [2]   # a probe
    for _ in range(3):   # its refusals of the other two, then of the probe: nothing more yet
        core._on_reply(full, _full_reply(core, 1))
        core._pump_all()
    assert _firsts_to(core, 2) == []
    core.fake.advance(int(FULL_PROBE_S * 1e9))
    core._pump_all()
    assert _firsts_to(core, 2) == [2]
    core._on_reply(full, _ok_reply(core, 2))
    core._pump_all()   # room again: the rest of the backlog at once, in one APPEND
    assert [(b["first"], b["last"]) for i, b, _m in core.take(wire.APPEND) if i == 2] == [(3, 4)]


def test_a_disk_full_refusal_below_what_was_acknowledged_stops_its_acks_counting():
    """A refusal whose `last` is below what the replicator acknowledged says it lost
    acknowledged records (its file was quarantined while serving, say, and the disk is still
    full): its acks stop counting until it is reconciled, as for a gap below its ack, so a
    record one replicator holds does not commit under quorum of three."""
    core, sent = _in_flight(1)
    top = core.next_seq - 1
    r0, r1 = core.links[0], core.links[1]
    core._on_reply(r0, _ok_reply(core, top))
    core._forward()
    assert core.committed < top                    # one copy only: not committed
    core._on_reply(r0, _full_reply(core, 0))       # it holds nothing now
    core._on_reply(r1, _ok_reply(core, top))
    core._forward()
    assert core.committed < top, "committed on r1's copy and r0's stale ack"


def test_a_full_replicator_never_has_two_frames_in_flight():
    """An unanswered probe is not followed by another: one frame in flight at most."""
    from mq.master import FULL_PROBE_S
    core, _sent = _in_flight()
    full = core.links[2]
    core._on_reply(full, _full_reply(core, full.acked))
    core._pump_all()
    assert len(_firsts_to(core, 2)) == 1
    core.fake.advance(int(FULL_PROBE_S * 1e9) + 1)   # the probe is unanswered, not refused
    core._pump_all()
    assert _firsts_to(core, 2) == []


def test_reconciling_a_full_replicator_ends_the_probing():
    """A replicator reconciled again starts with a full window, not probing."""
    core, _sent = _in_flight()
    full = core.links[2]
    core._on_reply(full, _full_reply(core, full.acked))
    assert full.full
    core._on_reply(full, [wire.APPENDED, wire.pack(
        {"stream": STREAM, "ok": False, "last": full.acked, "epoch": core.epoch,
         "reason": "conflict", "seq": full.acked})])
    assert not full.known
    core._on_reply(full, state(last=full.acked, epoch=core.epoch, commit=full.acked,
                               history=[(core.epoch, 1)]))
    assert full.known and not full.full


def test_a_new_disk_full_episode_probes_at_once():
    """A new episode of a full disk probes at once, not FULL_PROBE_S after the last probe."""
    core, _sent = _in_flight()
    full = core.links[2]
    core._on_reply(full, _full_reply(core, full.acked))
    core._pump_all()
    [probe] = _firsts_to(core, 2)
    core._on_reply(full, _ok_reply(core, probe))
    assert not full.full
    core._pump_all()                                   # the rest goes at once ...
    core.take(wire.APPEND)
    core._on_reply(full, _full_reply(core, full.acked))  # ... and is refused within 50 ms
    core._pump_all()
    assert len(_firsts_to(core, 2)) == 1


def test_a_stalled_replicator_is_probed_with_one_record_not_sent_its_backlog_again():
    """A replicator that stops answering (its disk stalled: its socket queues what it is sent,
    with no receive high-water mark) is not sent its whole backlog again every RESEND_AFTER_S,
    which would queue it there once more each time: each stall sends it the newest record it
    was sent, and nothing else, until it answers."""
    from mq.master import RESEND_AFTER_S
    core = Core(replicators=3, policy="quorum")
    recover(core, [state(), state(), state()])
    ss, to_2 = 1, []

    def turn(answering=(0, 1)):
        nonlocal ss
        core.fake.advance(SEC // 100)
        core.sequence_turn([data(7, ss, 1)])
        ss += 1
        for i, body, _m in core.take(wire.APPEND):
            if i == 2:
                to_2.append((body["first"], body["last"]))
            if i in answering:
                core._on_reply(core.links[i], [wire.APPENDED, wire.pack(
                    {"stream": STREAM, "ok": True, "last": body["last"], "epoch": core.epoch})])
        core._forward()

    for _ in range(20):
        turn()
    assert len(to_2) == 20 and core.links[2].acked == 0
    to_2.clear()
    for _ in range(int(RESEND_AFTER_S * 100) * 4):     # four stall periods, a frame each turn
        turn()
    # Until the first stall new frames go on (within MAX_INFLIGHT); from then on only probes,
    # each the newest record sent.
    newest = core.links[2].sent
    after = to_2[to_2.index((newest, newest)):]
    assert set(after) == {(newest, newest)}
    # a probe each STALL_PROBE_S once stalled (3 s of the 4 here): one record, ten a second
    assert 20 <= len(after) <= 40
    assert core.links[2].stalled
    # It answers: what was made meanwhile follows, nothing it was sent before goes again.
    core._on_reply(core.links[2], [wire.APPENDED, wire.pack(
        {"stream": STREAM, "ok": True, "last": newest, "epoch": core.epoch})])
    to_2.clear()
    turn(answering=(0, 1, 2))
    assert not core.links[2].stalled and min(f for f, _l in to_2) == newest + 1
    assert core.links[2].acked == core.next_seq - 1


def test_a_replicator_that_lost_what_it_was_sent_answers_the_probe_with_a_gap_and_gets_it_again():
    """The stall's probe (the newest record sent) leaves a gap at a replicator that lost the
    records before it (a dropped connection): it answers "gap", and the master resends from
    what it acknowledged."""
    from mq.master import RESEND_AFTER_S
    core = Core(replicators=3, policy="quorum")
    recover(core, [state(), state(), state()])
    for ss in range(1, 11):
        core.fake.advance(SEC // 100)
        core.sequence_turn([data(7, ss, 1)])
        ack_all(core)
    _r2_silent(core, 11, 20)                        # r2 loses these
    link = core.links[2]
    held = link.acked
    core.fake.advance(int((RESEND_AFTER_S + 0.1) * SEC))
    core._pump_all()
    probe = [(b["first"], b["last"]) for i, b, _m in core.take(wire.APPEND) if i == 2]
    assert probe == [(link.sent, link.sent)] and link.sent > held + 1
    core._on_reply(link, [wire.APPENDED, wire.pack(
        {"stream": STREAM, "ok": False, "reason": "gap", "last": held, "epoch": core.epoch})])
    core._pump_all()
    resent = [(b["first"], b["last"]) for i, b, _m in core.take(wire.APPEND) if i == 2]
    assert resent and resent[0][0] == held + 1 and resent[-1][1] == core.next_seq - 1


def test_a_slow_replicator_answering_what_it_was_sent_before_a_stall_is_not_sent_it_again():
    """A disk slower than RESEND_AFTER_S per sync: the master probes for a stall, then the
    answers to what it sent before arrive (it was queued there, not lost). They count, and
    what they cover is not sent again: only what follows is (before, the master went back to
    what was acknowledged and sent the whole backlog once more, each stall)."""
    from mq.master import RESEND_AFTER_S
    core = Core(replicators=3, policy="quorum")
    recover(core, [state(), state(), state()])
    ss, to_2 = 1, []
    for _ in range(int(RESEND_AFTER_S * 100) + 20):      # past one stall period
        core.fake.advance(SEC // 100)
        core.sequence_turn([data(7, ss, 1)])
        ss += 1
        for i, body, _m in core.take(wire.APPEND):
            if i != 2:
                core._on_reply(core.links[i], [wire.APPENDED, wire.pack(
                    {"stream": STREAM, "ok": True, "last": body["last"], "epoch": core.epoch})])
            else:
                to_2.append((body["first"], body["last"]))
        core._forward()
    link = core.links[2]
    assert link.stalled
    before = link.sent
    to_2.clear()
    # the answer to the last frame sent before the stall arrives (the probe's comes later)
    core._on_reply(link, [wire.APPENDED, wire.pack(
        {"stream": STREAM, "ok": True, "last": before, "epoch": core.epoch})])
    assert link.acked == before and not link.stalled
    core._pump_all()
    for _i, body, _m in (m for m in core.take(wire.APPEND) if m[0] == 2):
        to_2.append((body["first"], body["last"]))
    assert to_2 and min(f for f, _l in to_2) == before + 1      # only what it lacks


def test_a_probe_the_socket_would_not_take_is_tried_again_on_the_next_turn():
    """A stalled replicator that is not connected (the socket refuses the probe) is probed
    again at the next turn, not after another stall period: once it is back, it hears the
    probe at once."""
    from mq.master import RESEND_AFTER_S
    core = Core(replicators=3, policy="quorum")
    recover(core, [state(), state(), state()])
    _r2_silent(core, 1, 5)
    link = core.links[2]
    sent_ok = Core._try_send
    core._try_send = lambda lk, msg: lk is not link and sent_ok(core, lk, msg)
    core.fake.advance(int((RESEND_AFTER_S + 0.1) * SEC))
    core._pump_all()                       # the probe is refused: not sent
    assert link.stalled and not [m for m in core.take(wire.APPEND) if m[0] == 2]
    core._try_send = lambda lk, msg: sent_ok(core, lk, msg)
    core.fake.advance(SEC // 1000)         # the next turn, a millisecond later
    core._pump_all()
    probe = [(b["first"], b["last"]) for i, b, _m in core.take(wire.APPEND) if i == 2]
    assert probe == [(link.sent, link.sent)]


def _r2_silent(core: Core, first: int, last: int) -> None:
    """Source seqs first..last sequenced a turn each, 10 ms apart; r0 and r1 answer, r2 does
    not (what it is sent is lost or queued)."""
    for ss in range(first, last + 1):
        core.fake.advance(SEC // 100)
        core.sequence_turn([data(7, ss, 1)])
        for i, body, _m in core.take(wire.APPEND):
            if i != 2:
                core._on_reply(core.links[i], [wire.APPENDED, wire.pack(
                    {"stream": STREAM, "ok": True, "last": body["last"], "epoch": core.epoch})])
        core._forward()
