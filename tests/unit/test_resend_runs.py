"""What a replicator behind gets from the master's window (Window.run_from), applied to a real
StreamLog with the replicator's fan-out rule (replicator/server.py, _append)."""
from __future__ import annotations

from mq import wire
from mq.record import decode, encode, first_epoch, scan
from replicator.store import Store
from tests.unit.test_sequencer import SEC, STREAM, Core, data, recover, state


def test_a_replicator_behind_across_an_epoch_change_stores_the_log_and_fans_out_own_frames(
        tmp_path):
    """A master that adopted a tail of two former epochs resends it with its own frames to an
    empty replicator: runs never cross an epoch, the replicator's log-matching checks take each
    one, the history is the master's, and the fan-out rule publishes only the master's own
    records, each once."""
    # r0, r1 hold an uncommitted tail 1..5 of epochs 1 and 2; r2 is empty
    tail = encode([(s, 100 + s, 9, s, 1 if s < 4 else 2, 32, b"t") for s in range(1, 6)])
    hist = [(1, 1), (2, 4)]
    core = Core(policy="first")
    recover(core, [state(5, 2, 0, hist, ts=105), state(5, 2, 0, hist, ts=105), state()],
            tail=tail)
    for k in range(6):                       # six turns, six frames of the master's epoch
        core.fake.advance(SEC // 100)
        core.sequence_turn([data(1 + k % 2, 1 + 3 * (k // 2), 3)])
    for i, body, _m in core.take(wire.APPEND):
        if i != 2:
            core._on_reply(core.links[i], [wire.APPENDED, wire.pack(
                {"stream": STREAM, "ok": True, "last": body["last"], "epoch": core.epoch})])
    core._forward()
    core.fake.advance(2 * SEC)               # r2 never acknowledged: resend from what it acked
    _probe_and_gap(core)
    sent = [(b, m[2]) for i, b, m in core.take(wire.APPEND) if i == 2]
    assert sent and sent[0][0]["first"] == 1
    store = Store(str(tmp_path / "lmdb"), "os", map_size=1 << 26)
    published = []
    done = []
    while sent:                              # it answers each APPEND: the rest follows
        _apply(store, sent, published)
        done += sent
        core._on_reply(core.links[2], [wire.APPENDED, wire.pack(
            {"stream": STREAM, "ok": True, "last": store.find(STREAM).last,
             "epoch": core.epoch})])
        core._pump_all()
        sent = [(b, m[2]) for i, b, m in core.take(wire.APPEND) if i == 2]
    assert len(done) < 7, [(b["first"], b["last"]) for b, _f in done]   # runs, not frames
    lg = store.find(STREAM)
    held = decode(lg.read(1))
    assert [r[0] for r in held] == list(range(1, core.next_seq))
    assert [r[4] for r in held[:5]] == [1, 1, 1, 2, 2]
    assert {r[4] for r in held[5:]} == {core.epoch}
    assert lg.history == [(1, 1), (2, 4), (core.epoch, 6)]
    assert lg.commit <= core.committed
    # only records of the master's own epoch are fanned out, each seq once at most here
    pub = [r for f in published for r in decode(f)]
    assert {r[4] for r in pub} == {core.epoch}
    assert [r[0] for r in pub] == list(range(6, core.next_seq))
    for f in published:
        assert scan(f)[1] >= 6
    store.close()


def _probe_and_gap(core) -> None:
    """r2, empty, stalled: the master probes it with the newest record it sent, which leaves
    a gap there; it answers "gap", and the master resends from what it acknowledged."""
    core._pump_all()
    probe = [b for i, b, _m in core.take(wire.APPEND) if i == 2]
    assert len(probe) == 1 and probe[0]["first"] == probe[0]["last"] == core.links[2].sent
    core._on_reply(core.links[2], [wire.APPENDED, wire.pack(
        {"stream": STREAM, "ok": False, "reason": "gap", "last": 0, "epoch": core.epoch})])
    core._pump_all()


def _apply(store, sent, published) -> None:
    """Append each APPEND to the store as the replicator does, fanning out by its rule."""
    for body, frame in sent:
        def app(lg, txn, body=body, frame=frame):
            before = lg.last
            r = lg.append(txn, body["epoch"], frame, body.get("prev_epoch"))
            if r.ok and body.get("fanout") and r.last > before \
                    and first_epoch(frame) == body["epoch"]:
                published.append(frame)
            if r.ok and body.get("commit") is not None:
                lg.set_commit(txn, body["commit"])
            return r
        assert store.change(STREAM, app).ok, body


def test_a_run_and_the_frames_it_joins_leave_the_same_source_table(tmp_path):
    """A run joins frames of several turns of the master, each stamped with its own ts: the
    source table a replicator keeps (each source's next source seq, last seq and ts: STATE's
    retention horizon and floor) is the same whether it got the frames one by one or as a
    run, as from a peer's catch-up: a function of the log alone."""
    core = Core(policy="first")
    recover(core, [state()] * 3)
    for k in range(4):
        core.fake.advance(SEC // 10)
        core.sequence_turn([data(1 + k // 2, 1 + 3 * (k % 2), 3)])   # src 1 twice, then src 2
    per_link = {0: [], 2: []}
    for i, body, m in core.take(wire.APPEND):
        if i in per_link:
            per_link[i].append((body, m[2]))
        if i != 2:
            core._on_reply(core.links[i], [wire.APPENDED, wire.pack(
                {"stream": STREAM, "ok": True, "last": body["last"], "epoch": core.epoch})])
    core._forward()
    core.fake.advance(2 * SEC)
    _probe_and_gap(core)    # r2 lost them: resent as a run
    runs = [(b, m[2]) for i, b, m in core.take(wire.APPEND) if i == 2]
    assert len(runs) < len(per_link[0])
    tables = []
    for name, appends in (("frames", per_link[0]), ("runs", runs)):
        store = Store(str(tmp_path / name), "os", map_size=1 << 26)
        for body, frame in appends:
            assert store.change(STREAM, lambda lg, txn, b=body, f=frame: lg.append(
                txn, b["epoch"], f, b.get("prev_epoch"))).ok
        tables.append(store.find(STREAM).sources())
        store.close()
    assert tables[0] == tables[1], tables
