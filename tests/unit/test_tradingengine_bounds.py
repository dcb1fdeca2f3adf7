"""What the TradingEngine keeps and outputs is bounded.

Outputs: every record's output fits one mq record. The bounds are computed
(``worst_case_output``) and checked against MAX_PAYLOAD; the tests drive each fan-out at its
limit (an account at MAX_OPEN_ORDERS cancelled or liquidated, thousands of stops fired by one
mark, a CrossEngine mass cancel of every order) and check that each output encodes as an mq
record, that no record outputs more than the bound, and that deferred work (sweeps) finishes
in the records that follow. State: transfer ids are forgotten after TRANSFER_ID_WINDOW_NS of
sequenced time, and an id at or below a forgotten one is refused; an account whose position
is flat leaves the symbol's holders."""
from crossengine import codec as ce
from mq.record import MAX_PAYLOAD, encode, scan
from tests.tradingvenue import SECOND, Venue, events_of, spec
from tradingengine import codec as c
from tradingengine.engine import (
    MAX_OPEN_ORDERS,
    OUTPUT_BUDGET,
    OUTPUT_LIMIT,
    TAKER_RESERVE,
    TRANSFER_ID_WINDOW_NS,
    TradingEngine,
    worst_case_output,
)

BOUND = worst_case_output()


def fits(payload: bytes) -> bytes:
    """The payload as out.te.N carries it: it must encode and scan as one record."""
    assert len(payload) <= BOUND["record"] <= OUTPUT_LIMIT
    scan(encode([(1, 1, 1, 1, 1, c.CANCEL_ALL, payload)]))
    return payload


def test_worst_case_output_is_within_seven_eighths_of_a_record():
    assert BOUND["record"] == OUTPUT_BUDGET + 2 * BOUND["unit"] + BOUND["command"]
    assert BOUND["record"] <= OUTPUT_LIMIT == MAX_PAYLOAD * 7 // 8
    # the CrossEngine bound this one relies on is the CrossEngine's own
    assert c.CE_MAX_FILLS == ce.MAX_FILLS_LIMIT
    assert (c.CE_SCOPE_ACCOUNT, c.CE_SCOPE_BOOK) == (ce.SCOPE_ACCOUNT, ce.SCOPE_BOOK)
    assert c.CE_MASS_CANCELLED == ce.EV_MASS_CANCELLED
    assert c.REASON_MATCH_LIMIT == ce.REASON_MATCH_LIMIT


def _full_account(v: Venue, account: int, live: int) -> None:
    """``account`` at MAX_OPEN_ORDERS: ``live`` resting bids, the rest stop orders."""
    for i in range(live):
        v.order(10_000 + i, account, c.BUY, 9_000 - i, 1)
    for i in range(MAX_OPEN_ORDERS - live):
        v.order(20_000 + i, account, c.BUY, 0, 1, ord_type=c.MARKET, trigger_price=11_000 + i,
                trigger_kind=c.TRIGGER_STOP)
    assert len(v.te.accounts[account].orders) == MAX_OPEN_ORDERS
    out = v.order(1, account, c.BUY, 9_000, 1)
    assert [e[16] for e in events_of(out, c.EXEC_REPORT)] == [c.CODES["too_many_open_orders"]]


def test_cancel_all_of_an_account_at_max_open_orders_fits():
    v = Venue([spec(max_leverage_x100=10_000)], auto=False)
    v.deposit(1, 10**15)
    v.mark(1, 10_000)
    v.auto = True
    _full_account(v, 1, live=0)                          # conditional: a report each
    out = v.te.apply(v.seq + 1, v.ts_ns, c.CANCEL_ALL, c.cancel_all(5, 1))
    v.seq += 1
    assert len(c.decode_events(fits(out))) == MAX_OPEN_ORDERS
    assert len(out) <= BOUND["command"]
    assert not v.te.accounts[1].orders


def test_liquidation_of_an_account_at_max_open_orders_fits():
    v = Venue([spec(max_leverage_x100=10_000)])
    v.deposit(1, 2 * 10**8)
    v.deposit(2, 10**15)
    v.mark(1, 10_000)
    v.order(1, 2, c.SELL, 10_000, 100)
    v.order(2, 1, c.BUY, 10_000, 100)                    # long 100 at 10,000, 100x
    assert v.position(1).size == 100
    _full_account(v, 1, live=50)
    out = v.te.apply(v.seq + 1, v.ts_ns + 1, c.MARK_PRICE, c.mark_price(1, 8_000))
    v.seq += 1
    events = c.decode_events(fits(out))
    assert events_of(events, c.LIQUIDATION)
    assert len(events_of(events, c.EXEC_REPORT)) == MAX_OPEN_ORDERS - 50   # the stops
    assert len(events_of(events, c.CE_COMMAND)) == 50                      # the bids' cancels
    assert len(out) <= BOUND["record"]
    assert v.position(1).size == 0 and 1 not in v.te.holders[1]


def _stops(te: TradingEngine, accounts: int, per_account: int) -> int:
    seq = 0
    ts = 10**18

    def apply(kind, payload):
        nonlocal seq, ts
        seq += 1
        ts += 1_000
        return te.apply(seq, ts, kind, payload)

    apply(c.MARK_PRICE, c.mark_price(1, 10_000))
    for a in range(1, accounts + 1):
        apply(c.DEPOSIT, c.transfer(a, a, 10**15))
        for i in range(per_account):
            apply(c.NEW_ORDER, c.new_order(i + 1, a, 1, c.BUY, 0, 1, ord_type=c.MARKET,
                                           trigger_price=10_100 + i % 50,
                                           trigger_kind=c.TRIGGER_STOP))
    return seq


def test_a_mark_that_fires_thousands_of_stops_spreads_them_over_records():
    """60 accounts at 200 stops each: one mark fires 12,000 orders, 1.56 MB of reports and
    commands in one record before the output was bounded. Now the first record stops near
    OUTPUT_BUDGET (its output and what reporting the CrossEngine's answer to each order sent
    will cost, TAKER_RESERVE) and the ticks that follow fire the rest, in order id order."""
    te = TradingEngine([spec(max_leverage_x100=10_000)])
    seq = _stops(te, 60, MAX_OPEN_ORDERS)
    ts = 10**18 + 10**12
    outs = [te.apply(seq + 1, ts, c.MARK_PRICE, c.mark_price(1, 10_200))]
    while te.sweeps:
        seq += 1
        ts += 1
        outs.append(te.apply(seq + 1, ts, c.KIND_TICK, b""))
        assert len(outs) < 100
    fired = []
    for out in outs:
        fits(out)
        these = [e[6] for e in c.decode_events(out)
                 if e[0] == c.EXEC_REPORT and e[1] == c.EXEC_TRIGGERED]
        sent = [e for e in c.decode_events(out) if e[0] == c.CE_COMMAND]
        assert len(sent) == len(these)
        assert OUTPUT_BUDGET <= len(out) + TAKER_RESERVE * len(sent) or out is outs[-1]
        assert len(out) + TAKER_RESERVE * (len(sent) - 1) < OUTPUT_BUDGET   # not beyond
        fired += these
    assert len(fired) == 60 * MAX_OPEN_ORDERS and fired == sorted(fired)
    assert len(outs) > 1 and sum(len(o) for o in outs) > MAX_PAYLOAD
    te.check_invariants()


def test_a_crossengine_mass_cancel_of_every_order_is_resolved_by_the_engine():
    """One MassCancelled event of the whole book (and one of an account) cancels exactly the
    engine's orders that the CrossEngine had accepted; with a small budget over records."""
    v = Venue([spec()], output_budget=500)
    for a in (1, 2):
        v.deposit(a, 10**13)
    v.mark(1, 10_000)
    for i in range(20):
        v.order(100 + i, 1, c.BUY, 9_500 - i, 1)
        v.order(200 + i, 2, c.SELL, 10_500 + i, 1)
    v.order(300, 2, c.SELL, 0, 1, ord_type=c.MARKET, trigger_price=9_000,
            trigger_kind=c.TRIGGER_STOP)                 # not at the CrossEngine: it stays
    # an account's CancelAll sent to the CrossEngine directly, buys only
    v.ce_seq[1] += 1
    out = v.ces[1].apply(v.ce_seq[1], v.ts_ns, c.CE_CANCEL_ALL, c.CE_CANCEL_ALL_S.pack(2, c.BUY))
    assert [e[0] for e in ce.decode_events(out)] == [ce.EV_MASS_CANCELLED]
    v.apply(c.CE_EVENTS, c.ce_events(1, out))
    assert len(v.te.accounts[2].orders) == 21            # it had no buys
    v.ce_seq[1] += 1
    out = v.ces[1].apply(v.ce_seq[1], v.ts_ns, c.CE_CANCEL_ALL,
                         c.CE_CANCEL_ALL_S.pack(2, c.SELL))
    events = v.apply(c.CE_EVENTS, c.ce_events(1, out))
    assert sorted(e[5] for e in events_of(events, c.EXEC_REPORT)) == list(range(200, 220))
    assert [o.client_order_id for o in v.te.accounts[2].orders.values()] == [300]
    # the whole book, operator's: 20 buys of account 1, over several records at 500 bytes
    v.ce_seq[1] += 1
    out = v.ces[1].apply(v.ce_seq[1], v.ts_ns, 36, b"")
    events = v.apply(c.CE_EVENTS, c.ce_events(1, out))
    assert 0 < len(events_of(events, c.EXEC_REPORT)) < 20 and v.te.sweeps
    while v.te.sweeps:
        events += v.apply(c.KIND_TICK, b"")
    reports = events_of(events, c.EXEC_REPORT)
    assert sorted(e[5] for e in reports) == list(range(100, 120))
    assert all(e[1] == c.EXEC_CANCELED and e[16] == c.REASON_ADMIN for e in reports)
    assert not v.te.accounts[1].orders and v.te.accounts[1].order_margin == 0


def test_orders_the_crossengine_accepts_after_a_mass_cancel_are_not_covered():
    """The event names the last order id assigned: a deferred sweep that runs after newer
    orders were accepted leaves them alone."""
    v = Venue([spec()], output_budget=0)
    v.deposit(1, 10**13)
    v.mark(1, 10_000)
    for i in range(3):
        v.order(100 + i, 1, c.BUY, 9_500 - i, 1)
    v.ce_seq[1] += 1
    out = v.ces[1].apply(v.ce_seq[1], v.ts_ns, 36, b"")
    v.apply(c.CE_EVENTS, c.ce_events(1, out))           # one unit now, the sweep goes on
    assert len(v.te.accounts[1].orders) == 2 and v.te.sweeps
    v.order(200, 1, c.BUY, 9_000, 1)                    # accepted after: a higher id
    while v.te.sweeps:
        v.apply(c.KIND_TICK, b"")
    assert [o.client_order_id for o in v.te.accounts[1].orders.values()] == [200]


def test_funding_over_many_holders_is_settled_over_records_and_balances():
    v = Venue([spec(funding_interval_ns=3600 * SECOND)], output_budget=0)
    v.deposit(1, 10**15)
    for a in range(2, 8):
        v.deposit(a, 10**13)
    v.mark(1, 10_000)
    for a in range(2, 8):
        v.order(a, 1, c.SELL, 10_000, 5)
        v.order(100 + a, a, c.BUY, 10_000, 5)
    v.apply(c.FUNDING_INPUTS, c.funding_inputs(1, 3_000, 0))
    events = v.apply(c.KIND_TICK, b"", dt_ns=3600 * SECOND)
    while v.te.sweeps:
        assert not events_of(events, c.FUNDING_SETTLED)
        events += v.apply(c.KIND_TICK, b"")
    assert len(events_of(events, c.FUNDING)) == 7
    (settled,) = events_of(events, c.FUNDING_SETTLED)
    assert settled[4] == sum(e[4] for e in events_of(events, c.FUNDING) if e[4] > 0)
    v.te.audit()


def test_transfer_ids_expire_after_the_window_and_older_ids_are_refused():
    v = Venue([spec()])
    assert events_of(v.deposit(7, 500, transfer_id=42), c.TRANSFER)
    seen = v.ts_ns
    assert v.deposit(7, 500, transfer_id=42) == []      # within the window: a no-op
    again = c.transfer(42, 7, 500)
    # 1 ns before the window ends: still a repeat; at its end: forgotten, so refused
    assert v.apply(c.DEPOSIT, again, dt_ns=seen + TRANSFER_ID_WINDOW_NS - 1 - v.ts_ns) == []
    out = v.apply(c.DEPOSIT, again, dt_ns=1)
    assert [e[1] for e in events_of(out, c.REQUEST_REJECTED)] == [c.CODES["transfer_id_expired"]]
    assert c.CODES["transfer_id_expired"] == 2031
    assert v.te.transfers == {} and v.te.transfer_floor == 42
    out = v.apply(c.WITHDRAW, c.transfer(41, 7, 1))     # below the floor: refused too
    assert [e[1] for e in events_of(out, c.REQUEST_REJECTED)] == [2031]
    assert events_of(v.deposit(7, 500, transfer_id=43), c.TRANSFER)
    assert v.te.accounts[7].balance == 1_000
    back = TradingEngine.restore(v.te.snapshot())
    assert back.snapshot() == v.te.snapshot() and back.transfer_floor == 42


def test_transfer_ids_kept_are_bounded_by_the_window():
    v = Venue([spec()])
    for i in range(50):
        v.deposit(7, 1, transfer_id=1_000 + i)
        v.apply(c.KIND_TICK, b"", dt_ns=TRANSFER_ID_WINDOW_NS // 10)
    # about ten windows' tenths are remembered, never the fifty
    assert 9 <= len(v.te.transfers) <= 11
    assert v.te.transfer_floor == 1_000 + 50 - len(v.te.transfers) - 1


def test_flat_accounts_leave_the_holders():
    v = Venue([spec()])
    for a in (1, 2, 3):
        v.deposit(a, 10**13)
    v.mark(1, 10_000)
    v.order(1, 3, c.BUY, 9_000, 1)                      # orders alone make no holder
    assert v.te.holders[1] == {}
    v.order(1, 1, c.SELL, 10_000, 5)
    v.order(1, 2, c.BUY, 10_000, 5)
    assert sorted(v.te.holders[1]) == [1, 2]
    v.order(2, 2, c.SELL, 10_000, 5)
    v.order(2, 1, c.BUY, 10_000, 5)                     # both flat again
    assert v.te.holders[1] == {}
    back = TradingEngine.restore(v.te.snapshot())
    assert back.holders[1] == {}


def test_deferred_funding_pays_on_the_sizes_at_the_boundary():
    """Positions change between the units of a deferred funding sweep: each account still
    pays or receives on what it held at the boundary, so the dust stays the rounding alone
    (it went below zero when a later unit paid on a newer size)."""
    v = Venue([spec(value=7, funding_interval_ns=3600 * SECOND)], output_budget=0)
    for a in (1, 2, 5):
        v.deposit(a, 10**13)
    v.mark(1, 10_001)
    v.order(1, 1, c.SELL, 10_001, 6)
    v.order(1, 2, c.BUY, 10_001, 3)
    v.order(1, 5, c.BUY, 10_001, 3)                      # 1 short 6; 2 and 5 long 3
    v.apply(c.FUNDING_INPUTS, c.funding_inputs(1, 333, 100))   # 100 ppm: longs pay
    events = v.apply(c.KIND_TICK, b"", dt_ns=3600 * SECOND)    # one unit: account 1
    # one record: account 2's unit first, then a trade that closes account 5's long
    trade = c.CE_EVENT_STRUCTS[c.CE_TRADE].pack(c.CE_TRADE, 99, 10**12, 10**12 + 1, 5, 9,
                                                10_001, 3, c.BUY, 0, 0, 0, 0)
    events += v.apply(c.CE_EVENTS, c.ce_events(1, trade))
    assert v.position(5).size == 0
    while v.te.sweeps:
        events += v.apply(c.KIND_TICK, b"")
    # 6 x 10,001 x 7 x 100 ppm = 42.0042 received as 42; 21.0021 paid as 22 by each long
    assert [(e[1], e[4]) for e in events_of(events, c.FUNDING)] == [(1, -42), (2, 22), (5, 22)]
    assert events_of(events, c.FUNDING_SETTLED)[0][4:] == (44, 42, 2)
    assert v.te.dust == 2
    v.te.check_invariants()


def test_a_crossengine_record_at_max_fills_fits():
    """One taker of this shard sweeps CE_MAX_FILLS + 1 makers, each a different account of
    this shard: the CrossEngine stops at CE_MAX_FILLS and the engine's output for that record
    (two reports per fill, a status pair per account) stays within the command bound."""
    v = Venue([spec()], check=False)       # checked once, at the end
    makers = c.CE_MAX_FILLS + 1
    for a in range(1, makers + 2):
        v.deposit(a, 10**12)
    v.mark(1, 10_000)
    for a in range(1, makers + 1):
        v.order(1, a, c.SELL, 10_000 + a // 2, 1)
    taker = makers + 1
    v.auto = False
    v.order(1, taker, c.BUY, 10_900, makers + 5)
    (payload,) = v.pending
    v.pending.clear()
    out = v.te.apply(v.seq + 1, v.ts_ns + 1, c.CE_EVENTS, payload)
    v.seq += 1
    events = c.decode_events(fits(out))
    trades = [e for e in events_of(events, c.EXEC_REPORT) if e[1] == c.EXEC_TRADE]
    assert len(trades) == 2 * c.CE_MAX_FILLS
    expired = [e for e in events_of(events, c.EXEC_REPORT) if e[1] == c.EXEC_EXPIRED]
    assert [(e[5], e[16]) for e in expired] == [(1, c.REASON_MATCH_LIMIT)]
    assert len(out) <= BOUND["command"]
    assert len(events_of(events, c.ACCOUNT)) == c.CE_MAX_FILLS + 1
    v.te.check_invariants()


def test_a_version_3_snapshot_restores():
    """Snapshots written before transfer expiry and sweeps (version 3) still restore: their
    transfer ids count as seen at the snapshot's time."""
    import msgpack
    v = Venue([spec()])
    v.deposit(7, 500, transfer_id=42)
    state = v.te._state()
    floor, transfers = state[15]
    old = [3, *state[1:15], [t for _ts, t in transfers], *state[16:19]]
    back = TradingEngine.restore(msgpack.packb(old, use_bin_type=True))
    assert back.snapshot() == v.te.snapshot()
    assert back.transfers == {42: v.te.ts_ns} and floor == 0
