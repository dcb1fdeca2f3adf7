"""The CrossEngine's rules, case by case, on the compiled engine and on the reference alike:
price-time priority, self-trade prevention, FOK, post-only, amend priority, market orders,
halts, cancels, rejects with their codes, and bad input answered by events, never exceptions."""
import struct

import pytest

from crossengine import codec as c
from crossengine.engine import CrossEngine
from crossengine.reference import ReferenceEngine
from mq.record import decode
from mq.sources import OPERATOR_SOURCE_MIN

ENGINES = [CrossEngine, ReferenceEngine]
ID = 1 << 40  # order ids of symbol 1 are 1 << 40 | n


def run(eng, kind, payload=b""):
    return c.decode_events(eng.apply(0, 0, kind, payload))


def names(events):
    return [c.EVENT_NAMES[e[0]] for e in events]


def new(eng, cl, side, price, qty, acct=1, **kw):
    return run(eng, c.NEW_ORDER, c.new_order(cl, side, price, qty, acct, **kw))


def rejected_code(events):
    assert events[0][0] == c.EV_REJECTED, names(events)
    return c.REJECT_CODES[events[0][3]]


@pytest.fixture(params=ENGINES, ids=["engine", "reference"])
def eng(request):
    return request.param(tick_size=5, min_qty=1, max_qty=1000, max_price=100_000)


def test_price_then_time_priority(eng):
    new(eng, 1, c.SELL, 105, 5, acct=1)
    new(eng, 2, c.SELL, 100, 5, acct=2)
    new(eng, 3, c.SELL, 100, 5, acct=3)
    ev = new(eng, 4, c.BUY, 105, 12, acct=9)
    trades = [e for e in ev if e[0] == c.EV_TRADE]
    # best price first (100), oldest first within it (order 2 then 3), then 105
    assert [(t[2], t[6], t[7]) for t in trades] == [(ID | 2, 100, 5), (ID | 3, 100, 5),
                                                    (ID | 1, 105, 2)]
    assert trades[-1][9] == 3 and trades[-1][10] == 0  # maker leaves 3, taker leaves 0
    levels = [e for e in ev if e[0] == c.EV_LEVEL]
    assert [(lv[2], lv[3], lv[4]) for lv in levels] == [(100, 0, 0), (105, 3, 1)]


def test_resting_remainder_and_level_delta(eng):
    ev = new(eng, 1, c.BUY, 100, 7)
    assert names(ev) == ["OrderAccepted", "LevelChanged"]
    assert ev[1][1:] == (c.BUY, 100, 7, 1)
    ev = new(eng, 2, c.SELL, 100, 3, acct=2)
    assert names(ev) == ["OrderAccepted", "Trade", "LevelChanged"]
    assert ev[2][1:] == (c.BUY, 100, 4, 1)


def test_market_orders_never_rest(eng):
    new(eng, 1, c.SELL, 100, 2, acct=2)
    ev = new(eng, 2, c.BUY, 0, 5, ord_type=c.MARKET, tif=c.GTC)
    assert names(ev) == ["OrderAccepted", "Trade", "OrderExpired", "LevelChanged"]
    assert ev[2][4:] == (3, c.REASON_IOC_REMAINDER)
    assert len(eng.snapshot()) == len(type(eng)().snapshot())  # empty book again


def test_ioc_remainder_expires(eng):
    ev = new(eng, 1, c.BUY, 100, 5, tif=c.IOC)
    assert names(ev) == ["OrderAccepted", "OrderExpired"]


def test_fok_all_or_nothing(eng):
    new(eng, 1, c.SELL, 100, 3, acct=2)
    new(eng, 2, c.SELL, 105, 3, acct=2)
    assert rejected_code(new(eng, 3, c.BUY, 105, 7, tif=c.FOK)) == "fok_not_fillable"
    assert rejected_code(new(eng, 4, c.BUY, 100, 4, tif=c.FOK)) == "fok_not_fillable"
    ev = new(eng, 5, c.BUY, 105, 6, tif=c.FOK)
    assert names(ev).count("Trade") == 2 and "OrderExpired" not in names(ev)


def test_fok_counts_self_trade_as_a_stop(eng):
    new(eng, 1, c.SELL, 100, 3, acct=1)
    new(eng, 2, c.SELL, 100, 3, acct=2)
    ev = new(eng, 3, c.BUY, 100, 3, acct=1, tif=c.FOK, stp=c.STP_CANCEL_NEWEST)
    assert rejected_code(ev) == "fok_not_fillable"
    ev = new(eng, 4, c.BUY, 100, 3, acct=1, tif=c.FOK, stp=c.STP_CANCEL_OLDEST)
    assert names(ev) == ["OrderAccepted", "OrderCancelled", "Trade", "LevelChanged"]


def test_post_only_never_takes(eng):
    new(eng, 1, c.SELL, 100, 3, acct=2)
    assert rejected_code(new(eng, 2, c.BUY, 100, 1, flags=c.FLAG_POST_ONLY)) == \
        "post_only_would_take"
    assert names(new(eng, 3, c.BUY, 95, 1, flags=c.FLAG_POST_ONLY)) == \
        ["OrderAccepted", "LevelChanged"]
    assert rejected_code(new(eng, 4, c.BUY, 95, 1, tif=c.IOC, flags=c.FLAG_POST_ONLY)) == \
        "time_in_force_invalid"
    # an amend of a post-only order into the book is refused and leaves it unchanged
    ev = run(eng, c.AMEND, c.amend(client_order_id=3, account=1, price=100))
    assert rejected_code(ev) == "post_only_would_take"


@pytest.mark.parametrize("mode, expect", [
    (c.STP_CANCEL_NEWEST, ["OrderAccepted", "OrderCancelled"]),  # the book is untouched
    (c.STP_CANCEL_OLDEST, ["OrderAccepted", "OrderCancelled", "Trade", "LevelChanged"]),
    (c.STP_CANCEL_BOTH, ["OrderAccepted", "OrderCancelled", "OrderCancelled", "LevelChanged"]),
    (c.STP_DECREMENT, ["OrderAccepted", "OrderCancelled", "OrderCancelled", "Trade",
                       "LevelChanged"]),
    (c.STP_NONE, ["OrderAccepted", "Trade", "Trade", "LevelChanged"]),
])
def test_self_trade_prevention_modes(eng, mode, expect):
    new(eng, 1, c.SELL, 100, 2, acct=1)  # own order first in time
    new(eng, 2, c.SELL, 100, 5, acct=2)
    ev = new(eng, 3, c.BUY, 100, 4, acct=1, stp=mode)
    assert names(ev) == expect
    for e in ev:
        if e[0] == c.EV_CANCELLED:
            assert e[5] == c.REASON_SELF_TRADE


def test_decrement_and_cancel_reduces_both(eng):
    new(eng, 1, c.SELL, 100, 5, acct=1)
    ev = new(eng, 2, c.BUY, 100, 3, acct=1, stp=c.STP_DECREMENT)
    cancels = [(e[1], e[4]) for e in ev if e[0] == c.EV_CANCELLED]
    assert cancels == [(ID | 1, 3), (ID | 2, 3)]
    assert [e for e in ev if e[0] == c.EV_LEVEL][0][3:] == (2, 1)


def test_amend_priority_rules(eng):
    new(eng, 1, c.BUY, 100, 10, acct=1)
    new(eng, 2, c.BUY, 100, 10, acct=2)
    ev = run(eng, c.AMEND, c.amend(client_order_id=1, account=1, qty=6))
    assert ev[0][0] == c.EV_AMENDED and ev[0][7] == 1  # reduction keeps priority
    ev = new(eng, 3, c.SELL, 100, 7, acct=3)
    assert [(t[2], t[7]) for t in ev if t[0] == c.EV_TRADE] == [(ID | 1, 6), (ID | 2, 1)]
    ev = run(eng, c.AMEND, c.amend(client_order_id=2, account=2, qty=20))
    assert ev[0][7] == 0  # an increase loses priority
    assert ev[0][5:7] == (19, 20)  # leaves 19 of a new total of 20 (1 already filled)


def test_amend_that_crosses_fills_like_a_new_order(eng):
    new(eng, 1, c.SELL, 105, 4, acct=2)
    new(eng, 2, c.BUY, 100, 10, acct=1)
    ev = run(eng, c.AMEND, c.amend(client_order_id=2, account=1, price=105))
    assert names(ev) == ["OrderAmended", "Trade", "LevelChanged", "LevelChanged", "LevelChanged"]
    assert ev[1][7] == 4 and ev[1][10] == 6
    # old level emptied, the sell level consumed, the rest now resting at 105
    assert [e[1:] for e in ev[2:]] == [(c.BUY, 100, 0, 0), (c.SELL, 105, 0, 0), (c.BUY, 105, 6, 1)]


def test_amend_rejects(eng):
    new(eng, 1, c.BUY, 100, 10)
    new(eng, 2, c.SELL, 100, 4, acct=2)
    amend = lambda **kw: rejected_code(run(eng, c.AMEND, c.amend(  # noqa: E731
        client_order_id=1, account=1, **kw)))
    assert amend(qty=4) == "amend_qty_not_above_filled"
    assert amend(price=101) == "price_not_on_tick"
    assert amend(qty=2000) == "qty_above_max"
    assert amend() == "amend_nothing_to_change"
    assert rejected_code(run(eng, c.AMEND, c.amend(order_id=999))) == "order_unknown"


def test_cancel_by_id_and_by_client_id(eng):
    new(eng, 7, c.BUY, 100, 10, acct=3)
    new(eng, 8, c.BUY, 100, 10, acct=3)
    assert names(run(eng, c.CANCEL, c.cancel(order_id=ID | 1, account=4))) == ["OrderRejected"]
    ev = run(eng, c.CANCEL, c.cancel(order_id=ID | 1, account=3))
    assert names(ev) == ["OrderCancelled", "LevelChanged"] and ev[0][4:] == (10, 0)
    ev = run(eng, c.CANCEL, c.cancel(client_order_id=8, account=3))
    assert ev[1][1:] == (c.BUY, 100, 0, 0)
    assert rejected_code(run(eng, c.CANCEL, c.cancel(client_order_id=8, account=3))) == \
        "order_unknown"


def test_client_order_id_unique_among_live_orders(eng):
    new(eng, 1, c.BUY, 100, 1)
    assert rejected_code(new(eng, 1, c.BUY, 95, 1)) == "client_order_id_in_use"
    assert names(new(eng, 1, c.BUY, 95, 1, acct=2))[0] == "OrderAccepted"


def test_cancel_all_and_mass_cancel_answer_with_one_event(eng):
    new(eng, 1, c.BUY, 100, 1, acct=1)
    new(eng, 2, c.SELL, 200, 1, acct=1)
    new(eng, 3, c.BUY, 95, 1, acct=2)
    new(eng, 4, c.BUY, 90, 1, acct=1)
    ev = run(eng, c.CANCEL_ALL, c.cancel_all(1, c.BUY))
    # scope, account, side, reason, count, the last order id assigned
    assert ev[0] == (c.EV_MASS_CANCELLED, c.SCOPE_ACCOUNT, 1, c.BUY, c.REASON_MASS_CANCEL, 2,
                     ID | 4)
    assert [e[1:] for e in ev[1:]] == [(c.BUY, 100, 0, 0), (c.BUY, 90, 0, 0)]  # id order
    ev = run(eng, c.MASS_CANCEL)
    assert ev == [(c.EV_MASS_CANCELLED, c.SCOPE_BOOK, 0, 0, c.REASON_ADMIN, 2, ID | 4)]
    assert eng.book() == {"bids": [], "asks": []}
    assert rejected_code(run(eng, c.CANCEL_ALL, c.cancel_all(1, 7))) == "side_invalid"
    assert run(eng, c.CANCEL_ALL, c.cancel_all(1)) == [
        (c.EV_MASS_CANCELLED, c.SCOPE_ACCOUNT, 1, 0, c.REASON_MASS_CANCEL, 0, ID | 4)]


def test_sweep_stops_at_max_fills_and_the_rest_expires():
    """At max_fills makers the taker stops if more of the book still crosses it, and its rest
    expires with reason 6 whatever its time in force; exactly at the limit it behaves as
    before (fills, or rests when nothing crosses any more)."""
    for cls in ENGINES:
        eng = cls(max_fills=3)
        for i in range(5):
            new(eng, i + 1, c.SELL, 100 + i, 1, acct=2)
        ev = new(eng, 10, c.BUY, 102, 3)           # exactly 3 makers: filled
        assert names(ev).count("Trade") == 3 and "OrderExpired" not in names(ev)
        new(eng, 11, c.SELL, 100, 1, acct=2)
        new(eng, 12, c.SELL, 100, 1, acct=2)
        new(eng, 13, c.SELL, 100, 1, acct=2)
        ev = new(eng, 14, c.BUY, 100, 5)           # 3 makers, then nothing crosses: rests
        assert names(ev).count("Trade") == 3 and names(ev)[-1] == "LevelChanged"
        assert eng.book()["bids"] == [(100, 2, 1)]
        run(eng, c.CANCEL, c.cancel(client_order_id=14, account=1))
        for i in range(5):
            new(eng, 20 + i, c.SELL, 200 + i, 1, acct=2)
        ev = new(eng, 30, c.BUY, 210, 5)           # one past the limit: 3 fills, 2 expire
        assert names(ev).count("Trade") == 3
        expired = [e for e in ev if e[0] == c.EV_EXPIRED]
        assert [(e[4], e[5]) for e in expired] == [(2, c.REASON_MATCH_LIMIT)]
        assert eng.book() == {"bids": [], "asks": [(200 + i, 1, 1) for i in range(1, 5)]}
        # a FOK that needs more makers than the limit is not fillable; within it, it fills
        assert rejected_code(new(eng, 41, c.BUY, 210, 4, tif=c.FOK)) == "fok_not_fillable"
        assert names(new(eng, 42, c.BUY, 210, 3, tif=c.FOK)).count("Trade") == 3


@pytest.mark.parametrize("engine", ENGINES, ids=["engine", "reference"])
def test_a_price_only_amend_of_an_order_stp_cut_below_min_qty_is_accepted(engine):
    """Self-trade prevention's decrement (mode 4) cuts the order's total, not only its leaves:
    5 lots become 2 with min_qty 3. A price-only amend (qty 0: same) sends no total, so the
    bounds apply to a new total only; an amend to another total below min_qty is refused."""
    eng = engine(tick_size=1, min_qty=3, max_qty=1000, max_price=100_000)
    new(eng, 1, c.BUY, 100, 5, acct=7)
    ev = new(eng, 2, c.SELL, 100, 3, acct=7, stp=c.STP_DECREMENT)
    assert [(e[1], e[4]) for e in ev if e[0] == c.EV_CANCELLED] == [(ID | 1, 3), (ID | 2, 3)]
    ev = run(eng, c.AMEND, c.amend(client_order_id=1, account=7, price=99))
    assert ev[0][0] == c.EV_AMENDED, names(ev)
    assert ev[0][5:7] == (2, 2)   # leaves 2 of a total of 2, now at 99
    ev = run(eng, c.AMEND, c.amend(client_order_id=1, account=7, price=98, qty=2))
    assert ev[0][0] == c.EV_AMENDED, names(ev)   # the same total, sent: the same answer
    assert rejected_code(run(eng, c.AMEND, c.amend(client_order_id=1, account=7, price=97,
                                                   qty=1))) == "qty_below_min"


def test_amend_that_sweeps_past_max_fills_expires():
    for cls in ENGINES:
        eng = cls(max_fills=2)
        for i in range(3):
            new(eng, i + 1, c.SELL, 100 + i, 1, acct=2)
        new(eng, 9, c.BUY, 90, 5)
        ev = run(eng, c.AMEND, c.amend(client_order_id=9, account=1, price=110))
        assert names(ev)[:4] == ["OrderAmended", "Trade", "Trade", "OrderExpired"]
        assert ev[3][4:] == (3, c.REASON_MATCH_LIMIT)
        assert eng.book() == {"bids": [], "asks": [(102, 1, 1)]}
        assert rejected_code(run(eng, c.CANCEL, c.cancel(client_order_id=9, account=1))) == \
            "order_unknown"
        eng.check_invariants() if cls is CrossEngine else None


def test_account_order_limit_at_the_limit_and_one_past():
    for cls in ENGINES:
        eng = cls(max_account_orders=3)
        for i in range(3):
            assert names(new(eng, i + 1, c.BUY, 100 - 5 * i, 1))[0] == "OrderAccepted"
        assert rejected_code(new(eng, 4, c.BUY, 50, 1)) == "account_order_limit"
        assert c.CODES["account_order_limit"] == 3018
        # an order that cannot rest does not count against the limit; other accounts are free
        assert names(new(eng, 5, c.BUY, 50, 1, tif=c.IOC))[0] == "OrderAccepted"
        assert names(new(eng, 6, c.BUY, 50, 1, acct=2))[0] == "OrderAccepted"
        run(eng, c.CANCEL, c.cancel(client_order_id=1, account=1))
        assert names(new(eng, 7, c.BUY, 50, 1))[0] == "OrderAccepted"
        back = type(eng).restore(eng.snapshot())   # the count is rebuilt by restore
        assert rejected_code(new(back, 8, c.BUY, 50, 1)) == "account_order_limit"


def _with_counter(snapshot: bytes, counter: int) -> bytes:
    from crossengine.reference import SNAP_HEADER
    head = list(SNAP_HEADER.unpack_from(snapshot))
    head[10] = counter
    return SNAP_HEADER.pack(*head) + snapshot[SNAP_HEADER.size:]


def test_order_ids_refused_at_the_end_of_the_id_space():
    """Order ids are symbol_id << 40 | n: the last n is 2**40 - 1; past it NewOrder is refused
    (order_ids_exhausted) instead of aliasing the next symbol's ids."""
    assert c.ORDER_COUNTER_MAX == (1 << 40) - 1
    for cls in ENGINES:
        eng = cls.restore(_with_counter(cls(symbol_id=7).snapshot(), c.ORDER_COUNTER_MAX - 1))
        ev = new(eng, 1, c.BUY, 100, 1)
        assert ev[0][1] == (7 << 40) | c.ORDER_COUNTER_MAX     # the last id
        assert rejected_code(new(eng, 2, c.BUY, 100, 1)) == "order_ids_exhausted"
        assert rejected_code(new(eng, 3, c.SELL, 100, 1, tif=c.IOC)) == "order_ids_exhausted"
        # what rests still works: it can be cancelled, amended and traded against by nobody
        assert names(run(eng, c.CANCEL, c.cancel(client_order_id=1, account=1)))[0] == \
            "OrderCancelled"
        assert eng.snapshot() == cls.restore(eng.snapshot()).snapshot()
    with pytest.raises(ValueError):
        CrossEngine.restore(_with_counter(CrossEngine().snapshot(), 1 << 40))


def test_halt_refuses_orders_and_amends_but_allows_cancels(eng):
    new(eng, 1, c.BUY, 100, 1)
    assert names(run(eng, c.HALT)) == ["SymbolHalted"]
    assert rejected_code(new(eng, 2, c.BUY, 100, 1)) == "symbol_halted"
    assert rejected_code(run(eng, c.AMEND, c.amend(client_order_id=1, account=1, qty=5))) == \
        "symbol_halted"
    assert names(run(eng, c.CANCEL, c.cancel(client_order_id=1, account=1)))[0] == \
        "OrderCancelled"
    assert names(run(eng, c.RESUME)) == ["SymbolResumed"]
    assert names(new(eng, 3, c.BUY, 100, 1))[0] == "OrderAccepted"


@pytest.mark.parametrize("fields, code", [
    (dict(side=ord("3")), "side_invalid"),
    (dict(ord_type=ord("9")), "order_type_invalid"),
    (dict(tif=ord("0")), "time_in_force_invalid"),
    (dict(stp=5), "stp_mode_invalid"),
    (dict(flags=4), "command_malformed"),
    (dict(price=0), "price_out_of_range"),
    (dict(price=-5), "price_out_of_range"),
    (dict(price=100_005), "price_out_of_range"),
    (dict(price=101), "price_not_on_tick"),
    (dict(qty=0), "qty_below_min"),
    (dict(qty=1001), "qty_above_max"),
])
def test_new_order_rejects(eng, fields, code):
    args = dict(client_order_id=1, side=c.BUY, price=100, qty=1, account=1)
    args.update(fields)
    assert rejected_code(run(eng, c.NEW_ORDER, c.new_order(**args))) == code


@pytest.mark.parametrize("kind, payload", [
    (c.NEW_ORDER, b"short"), (c.CANCEL, b""), (c.AMEND, b"\0" * 37), (c.CANCEL_ALL, b"\0"),
    (c.MASS_CANCEL, b"x"), (c.HALT, b"x"), (999, b""), (0, b"\xff" * 64),
])
def test_malformed_commands_are_rejected_not_raised(eng, kind, payload):
    assert rejected_code(run(eng, kind, payload)) == "command_malformed"


def test_tick_records_give_empty_output(eng):
    assert eng.apply(1, 0, c.KIND_TICK, b"") == b""


def test_book_full_is_a_reject():
    for cls in ENGINES:
        eng = cls(max_orders=2)
        new(eng, 1, c.BUY, 100, 1)
        new(eng, 2, c.BUY, 100, 1)
        assert rejected_code(new(eng, 3, c.BUY, 100, 1)) == "book_full"


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError):
        CrossEngine(symbol_id=0)
    for kw in (dict(max_fills=0), dict(max_fills=c.MAX_FILLS_LIMIT + 1),
               dict(max_account_orders=0),
               dict(max_account_orders=c.MAX_ACCOUNT_ORDERS_LIMIT + 1)):
        with pytest.raises(ValueError):
            CrossEngine(**kw)
    with pytest.raises(ValueError):
        CrossEngine(max_qty=1 << 40, max_orders=1 << 30)


def test_engine_events_match_struct_mirror():
    """Field offsets of the compiled writers against hand-written struct formats."""
    eng = CrossEngine()
    out = eng.apply(0, 0, c.NEW_ORDER, struct.pack("<QqQIBBBBB", 11, 100, 5, 3, 49, 50, 49, 1, 0))
    assert out == struct.pack("<BQQIBBqQBB", 1, ID | 1, 11, 3, 49, 50, 100, 5, 49, 1) + \
        struct.pack("<BBqQI", 7, 49, 100, 5, 1)
    out = eng.apply(0, 0, c.NEW_ORDER, struct.pack("<QqQIBBBBB", 12, 100, 2, 4, 50, 50, 49, 0, 0))
    assert out == struct.pack("<BQQIBBqQBB", 1, ID | 2, 12, 4, 50, 50, 100, 2, 49, 0) + \
        struct.pack("<BQQQIIqQBQQBB", 3, 1, ID | 1, ID | 2, 3, 4, 100, 2, 50, 3, 0, 1, 0) + \
        struct.pack("<BBqQI", 7, 49, 100, 3, 1)
    out = eng.apply(0, 0, c.CANCEL, struct.pack("<QQI", 0, 11, 3))
    assert out == struct.pack("<BQQIQB", 4, ID | 1, 11, 3, 3, 0) + \
        struct.pack("<BBqQI", 7, 49, 100, 0, 0)
    out = eng.apply(0, 0, c.CANCEL, struct.pack("<QQI", 0, 11, 3))
    assert out == struct.pack("<BQIHQ", 2, 11, 3, 3005, 0)


def test_apply_frame_mirrors_each_input_record():
    from mq.record import decode, encode
    eng, ref = CrossEngine(), ReferenceEngine()
    cmds = [(c.NEW_ORDER, c.new_order(1, c.BUY, 100, 5, 1)), (c.KIND_TICK, b""),
            (c.NEW_ORDER, c.new_order(2, c.SELL, 100, 3, 2)), (77, b"?")]
    frame = encode([(10 + i, 99 + i, 5, 20 + i, 2, k, p) for i, (k, p) in enumerate(cmds)])
    out = decode(eng.apply_frame(frame))
    assert [r[:6] for r in out] == [(10 + i, 99 + i, 5, 20 + i, 2, k)
                                    for i, (k, _p) in enumerate(cmds)]
    assert [r[6] for r in out] == [ref.apply(0, 0, k, p) for k, p in cmds]


def test_apply_frame_output_outgrows_its_first_buffer():
    """apply_frame writes the output frame into the bytes object it returns, sized from the
    input and grown when the events need more: a frame whose output is many times its input
    (takers sweeping hundreds of makers) reads as record-by-record apply() does."""
    from mq.record import decode, encode
    eng, one = CrossEngine(), CrossEngine()
    cmds = [(c.NEW_ORDER, c.new_order(k, c.SELL, 100 + k % 7, 1, 10 + k)) for k in range(900)]
    cmds += [(c.NEW_ORDER, c.new_order(5000 + k, c.BUY, 200, 300, 3)) for k in range(3)]
    frame = encode([(1 + i, 0, 5, 1 + i, 2, k, p) for i, (k, p) in enumerate(cmds)])
    out = eng.apply_frame(frame)
    assert len(out) > 2 * len(frame) + 4096
    got = decode(out)
    assert [r[6] for r in got] == [one.apply(0, 0, k, p, source=5) for k, p in cmds]
    assert eng.state_hash() == one.state_hash()


@pytest.mark.parametrize("bad", ["empty", "seq_zero", "gap", "truncated", "oversized"])
def test_apply_frame_refuses_what_scan_refuses(bad):
    """apply_frame checks the frame itself (no Python object per record); each bad frame
    raises mq.record.scan's FrameError and leaves the engine untouched."""
    from mq.record import MAX_PAYLOAD, FrameError, encode
    good = [(1, 0, 5, 1, 2, c.NEW_ORDER, c.new_order(1, c.BUY, 100, 5, 1)),
            (2, 0, 5, 2, 2, c.NEW_ORDER, c.new_order(2, c.BUY, 100, 5, 1))]
    frame = {"empty": b"", "seq_zero": encode([(0,) + good[0][1:]]),
             "gap": encode([good[0], (3,) + good[1][1:]]), "truncated": encode(good)[:-1],
             "oversized": encode(good)[:34] + struct.pack("<I", MAX_PAYLOAD + 1)
             + encode(good)[38:]}[bad]
    eng = CrossEngine()
    with pytest.raises(FrameError):
        eng.apply_frame(frame)
    assert len(eng) == 0 and eng.snapshot() == CrossEngine().snapshot()


# -- every output fits one record: the bounds at the limit and one past it --------------------

def _record_roundtrip(kind: int, payload: bytes) -> None:
    """The output goes through the mq codec as out.ce.SYM carries it, and on as the
    TradingEngine's CE_EVENTS record (4 bytes more); FrameError would stop the stream."""
    from mq.record import MAX_PAYLOAD, encode, scan
    assert len(payload) + c.CE_EVENTS_PREFIX <= MAX_PAYLOAD
    scan(encode([(1, 1, 1, 1, 1, kind, payload)]))
    scan(encode([(1, 1, 1, 1, 1, 76, b"\0" * 4 + payload)]))


def test_worst_case_output_fits_a_record_with_margin():
    from mq.record import MAX_PAYLOAD
    assert c.MAX_PAYLOAD == MAX_PAYLOAD
    worst = c.worst_case_sizes()
    assert set(worst) == set(c.COMMAND_STRUCTS) | {c.KIND_TICK}
    assert max(worst.values()) + c.CE_EVENTS_PREFIX <= MAX_PAYLOAD // 2
    # the formula at the configured limits is what the import-time check used
    assert c.WORST_CASE_OUTPUT == max(worst.values())


def test_mass_cancel_of_a_huge_book_is_one_event():
    """40,000 resting orders once gave a 1.2 MB output that no record could carry."""
    eng = CrossEngine(capacity=1 << 16)
    cmds = [c.new_order(i, c.BUY if i % 2 else c.SELL,
                        (50_000 - i) if i % 2 else (60_000 + i), 1, 1 + i % 8)
            for i in range(40_000)]
    for p in cmds:
        eng.apply(0, 0, c.NEW_ORDER, p)
    assert len(eng) == 40_000
    out = eng.apply(0, 0, c.MASS_CANCEL, b"")
    assert c.decode_events(out) == [(c.EV_MASS_CANCELLED, c.SCOPE_BOOK, 0, 0, c.REASON_ADMIN,
                                     40_000, ID | 40_000)]
    _record_roundtrip(c.MASS_CANCEL, out)
    assert len(eng) == 0
    eng.check_invariants()


def test_cancel_all_of_an_account_at_its_limit_is_the_worst_case():
    """An account at max_account_orders, each order on its own level: CancelAll lists every
    level, which is exactly the worst case the bound computes; one order more is refused."""
    limit = c.MAX_ACCOUNT_ORDERS_LIMIT
    eng = CrossEngine(max_account_orders=limit)
    for i in range(limit):
        assert eng.apply(0, 0, c.NEW_ORDER, c.new_order(i, c.BUY, 100_000 - i, 1, 5))[0] == \
            c.EV_ACCEPTED
    assert rejected_code(new(eng, limit, c.BUY, 1, 1, acct=5)) == "account_order_limit"
    out = eng.apply(0, 0, c.CANCEL_ALL, c.cancel_all(5))
    assert len(out) == c.worst_case_sizes(max_account_orders=limit)[c.CANCEL_ALL]
    _record_roundtrip(c.CANCEL_ALL, out)
    eng.check_invariants()


@pytest.mark.parametrize("makers", [c.MAX_FILLS_LIMIT, c.MAX_FILLS_LIMIT + 1, 15_000])
def test_sweep_through_many_makers_fits_a_record(makers):
    """A taker that crosses `makers` single-lot orders, each on its own level: at most
    max_fills of them trade, the output stays within the computed worst case and encodes."""
    eng = CrossEngine()
    for i in range(makers):
        eng.apply(0, 0, c.NEW_ORDER, c.new_order(i, c.SELL, 1_000 + i, 1, 100 + i % 5_000))
    out = eng.apply(0, 0, c.NEW_ORDER, c.new_order(1, c.BUY, 10**6, makers + 5, 9))
    ev = c.decode_events(out)
    trades = sum(1 for e in ev if e[0] == c.EV_TRADE)
    assert trades == min(makers, c.MAX_FILLS_LIMIT)
    expired = [e for e in ev if e[0] == c.EV_EXPIRED]
    if makers > c.MAX_FILLS_LIMIT:
        assert [(e[4], e[5]) for e in expired] == [(makers + 5 - trades, c.REASON_MATCH_LIMIT)]
    else:   # the book is used up: the rest of the GTC order rests
        assert expired == [] and eng.book()["bids"] == [(10**6, 5, 1)]
    assert len(out) <= c.worst_case_sizes()[c.NEW_ORDER]
    _record_roundtrip(c.NEW_ORDER, out)
    eng.check_invariants()


def test_a_version_1_snapshot_restores_with_the_default_bounds():
    """Snapshots written before the bounds existed (version 1) still restore: max_fills gets
    its default, max_account_orders its default or the largest account's count; and one shard,
    no te_sources (version 3 added them)."""
    from crossengine.reference import SNAP_HEADER
    eng = CrossEngine()
    for i in range(5):
        new(eng, i + 1, c.BUY, 100 - i, 1, acct=3)
    v3 = eng.snapshot()
    head = list(SNAP_HEADER.unpack_from(v3))
    v1 = c.SNAP_HEADER_V1.pack(head[0], 1, *head[2:8], *head[10:14]) + v3[SNAP_HEADER.size:]
    for cls in ENGINES:
        back = cls.restore(v1)
        assert back.snapshot() == v3
        assert (back.max_fills, back.max_account_orders) == (c.MAX_FILLS_LIMIT,
                                                             c.DEFAULT_ACCOUNT_ORDERS)
        assert (back.n_shards, list(back.te_sources)) == (1, [])
    assert c.upgrade_snapshot(v3) is v3


def test_a_version_2_snapshot_restores_as_one_shard_without_te_sources():
    """Snapshots written before routes and TradingEngine inputs (version 2) restore as the
    engine ran then: one shard, no te_sources; the rest of the state unchanged."""
    from crossengine.reference import SNAP_HEADER
    eng = CrossEngine(max_fills=7, max_account_orders=50)
    for i in range(5):
        new(eng, i + 1, c.SELL, 100 + i, 2, acct=3 + i)
    v3 = eng.snapshot()
    head = list(SNAP_HEADER.unpack_from(v3))
    v2 = c.SNAP_HEADER_V2.pack(head[0], 2, *head[2:14]) + v3[SNAP_HEADER.size:]
    for cls in ENGINES:
        back = cls.restore(v2)
        assert back.snapshot() == v3
        assert (back.max_fills, back.n_shards, list(back.te_sources)) == (7, 1, [])


def test_te_sources_and_n_shards_are_kept_in_the_snapshot():
    eng = CrossEngine(te_sources=[0x7300_0002, 0x7300_0000], n_shards=5)
    new(eng, 1, c.BUY, 100, 1, acct=3)
    snap = eng.snapshot()
    for cls in ENGINES:
        back = cls.restore(snap)
        assert (list(back.te_sources), back.n_shards) == ([0x7300_0002, 0x7300_0000], 5)
        assert back.snapshot() == snap
    assert ReferenceEngine(te_sources=[0x7300_0002, 0x7300_0000], n_shards=5).snapshot() \
        == CrossEngine(te_sources=[0x7300_0002, 0x7300_0000], n_shards=5).snapshot()


# -- routes: the output record's header names the TradingEngine shards it concerns -------------

def _frame(cmds, source=5, seq=1):
    """A sequenced frame of (kind, payload) or (source, kind, payload) commands."""
    from mq.record import encode
    recs = [x if len(x) == 3 else (source, *x) for x in cmds]
    return encode([(seq + i, 1000 + i, src, seq + i, 1, k, p)
                   for i, (src, k, p) in enumerate(recs)])


def _routes(eng, cmds, source=5):
    from mq.record import decode
    return [(r[7], r[6]) for r in decode(eng.apply_frame(_frame(cmds, source)))]


def expected_route(payload: bytes, n_shards: int) -> int:
    """The route of an output payload, from the codec's decoding (independent of the engine):
    LIQ_ACCOUNT's bit is 63 (the LiqEngine's), and a book-wide event sets it too."""
    every = (1 << n_shards) - 1 | c.ROUTE_LIQ
    route = 0
    for e in c.decode_events(payload):
        accounts = {c.EV_ACCEPTED: [e[3]] if e[0] == c.EV_ACCEPTED else [],
                    c.EV_REJECTED: [e[2]] if e[0] == c.EV_REJECTED else [],
                    c.EV_TRADE: [e[4], e[5]] if e[0] == c.EV_TRADE else [],
                    c.EV_CANCELLED: [e[3]] if e[0] in (c.EV_CANCELLED, c.EV_EXPIRED,
                                                      c.EV_AMENDED) else []}
        for acct in sum(accounts.values(), []):
            route |= c.ROUTE_LIQ if acct == c.LIQ_ACCOUNT else 1 << (acct % n_shards)
        if e[0] in (c.EV_HALTED, c.EV_RESUMED) or (e[0] == c.EV_MASS_CANCELLED
                                                   and e[1] == c.SCOPE_BOOK):
            route |= every
        elif e[0] == c.EV_MASS_CANCELLED:
            route |= c.ROUTE_LIQ if e[2] == c.LIQ_ACCOUNT else 1 << (e[2] % n_shards)
    return route


def test_a_trade_routes_to_both_sides_shards_and_book_wide_events_to_every_shard():
    from mq.sources import OPERATOR_SOURCE
    eng = CrossEngine(n_shards=4)
    got = _routes(eng, [
        (c.NEW_ORDER, c.new_order(1, c.SELL, 100, 5, 5)),    # account 5: shard 1
        (c.NEW_ORDER, c.new_order(2, c.BUY, 100, 2, 6)),     # account 6: shard 2, trades with 5
        (c.NEW_ORDER, c.new_order(3, c.BUY, 0, 5, 7)),       # rejected (no price): shard 3
        (c.CANCEL_ALL, c.cancel_all(8)),                     # nothing to cancel, account 8: shard 0
        (c.CANCEL, c.cancel(0, 1, 5)),                       # cancels the rest of 1: shard 1
        (c.KIND_TICK, b""),                                  # no events: no route
    ])
    assert [r for r, _p in got] == [0b0010, 0b0110, 0b1000, 0b0001, 0b0010, 0]
    book_wide = _routes(eng, [(OPERATOR_SOURCE, c.HALT, b""), (OPERATOR_SOURCE, c.RESUME, b""),
                              (OPERATOR_SOURCE, c.MASS_CANCEL, b"")])
    assert [r for r, _p in book_wide] == [0b1111 | 1 << 63] * 3   # every shard and the LiqEngine
    assert _routes(eng, [(c.HALT, b"")])[0][0] == 0b0001  # refused: names account 0, shard 0


def test_sixty_three_shards_use_every_bit_of_the_route_and_the_liqengine_the_last():
    from mq.sources import OPERATOR_SOURCE
    eng = CrossEngine(n_shards=63)
    got = _routes(eng, [(c.NEW_ORDER, c.new_order(1, c.SELL, 100, 5, 62)),
                        (c.NEW_ORDER, c.new_order(2, c.BUY, 100, 5, 63 + 2)),
                        (OPERATOR_SOURCE, c.HALT, b"")])
    assert [r for r, _p in got] == [1 << 62, 1 << 62 | 1 << 2, (1 << 64) - 1]


@pytest.mark.parametrize("n_shards", [1, 2, 3, 7, 10, 63])
def test_the_route_bit_of_any_32_bit_account_is_account_mod_n_shards(n_shards):
    """The shard bit is computed without a division (engine.pyx ce_fastmod_u32): across the
    whole 32-bit range of accounts, at both ends and in between, it is account % n_shards."""
    import random
    rng = random.Random(n_shards)
    accounts = [1, 2, 3, n_shards, n_shards + 1, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 3,
                2**32 - 2] + [rng.randrange(1, 2**32 - 1) for _ in range(300)]
    eng = CrossEngine(n_shards=n_shards)
    cmds = [(c.NEW_ORDER, c.new_order(k + 1, c.BUY, 100, 1, a)) for k, a in enumerate(accounts)]
    got = _routes(eng, cmds)
    assert [r for r, _p in got] == [1 << (a % n_shards) for a in accounts]


@pytest.mark.parametrize("n_shards", [0, 64, 65])
def test_n_shards_is_bounded(n_shards):
    with pytest.raises(ValueError, match="n_shards"):
        CrossEngine(n_shards=n_shards)


@pytest.mark.parametrize("te", [[0], [7, 7], [0xFFFF_0000], list(range(1, 66))])
def test_te_sources_are_distinct_non_operator_ids(te):
    with pytest.raises(ValueError, match="te_sources"):
        CrossEngine(te_sources=te)


@pytest.mark.parametrize("n_shards", [1, 3, 63])
def test_every_output_route_is_the_shards_of_the_accounts_its_events_name(n_shards):
    """A seeded flow of every command kind, halts and mass cancels from the operator: each
    output record's route equals the one computed from the codec's decoding of its events."""
    from mq.record import decode, encode
    from mq.sources import OPERATOR_SOURCE
    from tests.property.test_crossengine_determinism import flow
    eng = CrossEngine(n_shards=n_shards)
    seen = 0
    for frame in flow(3000, seed=7):
        recs = [r[:2] + (OPERATOR_SOURCE,) + r[3:7] for r in decode(frame)]
        recs.insert(len(recs) // 2, (recs[0][0], 0, OPERATOR_SOURCE, 0, 1, c.MASS_CANCEL, b""))
        recs = [(recs[0][0] + i,) + r[1:] for i, r in enumerate(recs)]
        for r in decode(eng.apply_frame(encode(recs))):
            assert r[7] == expected_route(r[6], n_shards), c.decode_events(r[6])
            seen |= r[7]
    assert seen == (1 << n_shards) - 1 | c.ROUTE_LIQ


# -- TradingEngine output payloads from te_sources ----------------------------------------------

TE_SOURCE = 0x7300_0001
CE_COMMAND = struct.Struct("<BIHH")


def ce_command(symbol: int, kind: int, body: bytes) -> bytes:
    return CE_COMMAND.pack(1, symbol, kind, len(body)) + body


def te_event(kind: int, size: int) -> bytes:
    """A TradingEngine event of a fixed layout that the CrossEngine skips (fields zero)."""
    return bytes([kind]) + bytes(size - 1)


SESSION_STATE = te_event(13, 38)
SESSION_REPORT = struct.pack("<BIQH", 14, 9, 2, 200) + bytes(112)
EXEC_REPORT = te_event(2, 88)


def test_the_mirrored_event_table_is_the_tradingengines():
    """Every TradingEngine event type has the size tradingengine/codec.py gives it; the session
    events of docs/order-path.md §3 (13, 14) have their contract layouts until that codec
    has them too, then its sizes."""
    from crossengine.engine import TE_EVENT_SIZES, TE_SESSION_BLOCK_SIZES
    from tradingengine import codec as tc
    for kind, s in tc.EVENT_STRUCTS.items():
        assert TE_EVENT_SIZES.get(kind) == s.size, f"TradingEngine event {kind}"
    contract = {13: struct.calcsize("<BIQQQQB"), 14: struct.calcsize("<BIQH")}
    for kind, size in TE_EVENT_SIZES.items():
        assert kind in tc.EVENT_STRUCTS or contract.get(kind) == size, f"event {kind}"
    assert TE_EVENT_SIZES[tc.CE_COMMAND] == tc.EVENT_STRUCTS[tc.CE_COMMAND].size
    assert TE_SESSION_BLOCK_SIZES == {10: 20, 200: 112, 201: 48, 202: 36, 203: 68}
    blocks = getattr(tc, "SESSION_BLOCK_SIZES", None)
    if blocks is not None:
        assert blocks == TE_SESSION_BLOCK_SIZES


def test_a_te_record_applies_its_commands_for_this_symbol_in_order_and_ignores_the_rest():
    from mq.record import decode
    eng = CrossEngine(symbol_id=1, te_sources=[TE_SOURCE], n_shards=4)
    alone = CrossEngine(symbol_id=1)
    mine = [(c.NEW_ORDER, c.new_order(1, c.SELL, 100, 5, 5)),
            (c.NEW_ORDER, c.new_order(2, c.BUY, 100, 2, 6)),
            (c.CANCEL, c.cancel(0, 1, 5))]
    payload = (EXEC_REPORT + ce_command(1, *mine[0]) + ce_command(2, c.HALT, b"")
               + SESSION_STATE + ce_command(1, *mine[1]) + SESSION_REPORT
               + ce_command(3, c.NEW_ORDER, c.new_order(9, c.BUY, 100, 5, 9))
               + ce_command(1, *mine[2]) + te_event(4, 37))
    out = decode(eng.apply_frame(_frame([(TE_SOURCE, 44, payload)], seq=7)))
    want = b"".join(alone.apply(0, 0, k, p) for k, p in mine)
    assert len(out) == 1 and out[0][:6] == (7, 1000, TE_SOURCE, 7, 1, 44)
    assert out[0][6] == want
    assert out[0][7] == 0b0110  # accounts 5 and 6
    assert eng.state_hash() != CrossEngine(symbol_id=1, te_sources=[TE_SOURCE],
                                           n_shards=4).state_hash()
    assert eng.book() == alone.book()


def test_a_te_record_with_no_command_for_this_symbol_has_an_empty_output():
    from mq.record import decode
    eng = CrossEngine(symbol_id=1, te_sources=[TE_SOURCE])
    before = eng.state_hash()
    payload = EXEC_REPORT + ce_command(2, c.NEW_ORDER, c.new_order(1, c.BUY, 100, 5, 1))
    for p in (payload, b""):
        out = decode(eng.apply_frame(_frame([(TE_SOURCE, 44, p)])))
        assert [(r[6], r[7]) for r in out] == [(b"", 0)]
    assert eng.state_hash() == before


def test_a_te_source_is_not_the_operator_and_only_the_operator_sends_commands_directly():
    """With te sources the engine is in a cluster: an order reaches the book through a
    TradingEngine (which checked its risk) or from the operator. The same command from any
    other source (the gateway's or the oracle's key could append it to in.ce.SYM) is refused
    and changes nothing; on the engine before, it rested on the account's name."""
    eng = CrossEngine(symbol_id=1, te_sources=[TE_SOURCE])
    events = c.decode_events(eng.apply(1, 0, 0, ce_command(1, c.HALT, b""), TE_SOURCE))
    assert rejected_code(events) == "source_not_operator"
    order = c.new_order(1, c.BUY, 100, 5, 1)
    before = eng.state_hash()
    for kind, payload in ((c.NEW_ORDER, order), (c.CANCEL, c.cancel(0, 1, 1)),
                          (c.AMEND, c.amend(0, 1, 1, 100, 5)), (c.CANCEL_ALL, c.cancel_all(1))):
        for source in (0x7300_0002, 0x7200_0000, 0x7100_0000, 0, OPERATOR_SOURCE_MIN - 1):
            events = c.decode_events(eng.apply(2, 0, kind, payload, source))
            assert rejected_code(events) == "source_not_operator", (kind, source)
    framed = decode(eng.apply_frame(_frame([(0x7200_0000, c.NEW_ORDER, order)], seq=3)))
    assert rejected_code(c.decode_events(framed[0][6])) == "source_not_operator"
    assert eng.state_hash() == before and len(eng) == 0
    # a Tick from anyone is nothing; the operator's order rests
    assert eng.apply(4, 0, c.KIND_TICK, b"", 0x7200_0000) == b""
    assert names(c.decode_events(eng.apply(5, 0, c.NEW_ORDER, order, OPERATOR_SOURCE_MIN))) == [
        "OrderAccepted", "LevelChanged"]
    wrapped = ce_command(1, c.NEW_ORDER, order)
    assert rejected_code(c.decode_events(eng.apply(6, 0, c.NEW_ORDER, wrapped))) \
        == "command_malformed"
    # without te or liq sources (one engine on its own stream) any source's command applies
    alone = CrossEngine(symbol_id=1)
    assert names(c.decode_events(alone.apply(1, 0, c.NEW_ORDER, order, 0x7200_0000))) == [
        "OrderAccepted", "LevelChanged"]


@pytest.mark.parametrize("payload, what", [
    (bytes([99]) + bytes(20), "unknown event type 99 at offset 42"),  # after `first`
    (EXEC_REPORT + bytes([0]), "unknown event type 0 at offset 130"),
    (EXEC_REPORT[:50], "event type 2 truncated"),
    (ce_command(1, c.NEW_ORDER, c.new_order(1, c.BUY, 100, 5, 1))[:-1], "event type 1 truncated"),
    (ce_command(2, c.NEW_ORDER, b"")[:-2], "event type 1 truncated"),
    (struct.pack("<BIQH", 14, 9, 2, 150) + bytes(112), "SessionMessage of unknown template 150"),
    (struct.pack("<BIQH", 14, 9, 2, 4000) + bytes(112), "unknown template 4000"),
    (struct.pack("<BIQH", 14, 9, 2, 201) + bytes(47), "event type 14 truncated"),
])
def test_a_te_payload_this_engine_cannot_walk_is_a_clear_error_that_changes_nothing(payload, what):
    """A deployment mismatch (the TradingEngine writes a layout this engine does not know):
    RuntimeError naming the record's seq and source; no command of the record is applied,
    not even one that came before the bad event."""
    eng = CrossEngine(symbol_id=1, te_sources=[TE_SOURCE])
    before = eng.state_hash()
    first = ce_command(1, c.NEW_ORDER, c.new_order(7, c.BUY, 100, 5, 1))
    with pytest.raises(RuntimeError, match=f"record seq 42 from source {TE_SOURCE} .*{what}"):
        eng.apply_frame(_frame([(TE_SOURCE, 44, first + payload)], seq=42))
    assert eng.state_hash() == before
    with pytest.raises(RuntimeError, match="deployment mismatch"):
        eng.apply(42, 0, 44, first + payload, TE_SOURCE)


def test_the_id_map_grows_and_deletes_with_every_order_found_again():
    """Past the id map's first size (65,536 live orders at its load bound) it rehashes, and
    each cancel's backward shift moves other orders' slots: every order keeps the slot it is
    in (id_slot, which cancels and fills use instead of probing), as check_invariants checks,
    and the engine stays byte-equal to the reference through cancels by client id, by order
    id and fills."""
    import random
    rng = random.Random(11)
    kw = dict(max_qty=1000, max_price=10_000_000, max_account_orders=20_000)
    eng, ref = CrossEngine(**kw), ReferenceEngine(**kw)
    live = []
    for n in range(70_000):
        side = c.BUY if n % 2 else c.SELL
        price = 5_000_000 - 1 - rng.randrange(3000) if side == c.BUY \
            else 5_000_000 + rng.randrange(3000)
        cmd = c.new_order(n + 1, side, price, 1 + rng.randrange(9), 1 + n % 7)
        assert eng.apply(0, 0, c.NEW_ORDER, cmd) == ref.apply(0, 0, c.NEW_ORDER, cmd)
        live.append((n + 1, 1 + n % 7, ID | (n + 1)))
    eng.check_invariants()
    rng.shuffle(live)
    for k, (cl, acct, oid) in enumerate(live[:30_000]):
        cmd = c.cancel(client_order_id=cl, account=acct) if k % 2 else c.cancel(order_id=oid)
        assert eng.apply(0, 0, c.CANCEL, cmd) == ref.apply(0, 0, c.CANCEL, cmd)
        if k % 5_000 == 0:
            eng.check_invariants()
    for k in range(200):      # takers sweep the near levels: fills remove makers by id_slot
        cmd = c.new_order(10**6 + k, c.BUY if k % 2 else c.SELL,
                          5_000_500 if k % 2 else 4_999_500, 400, 99)
        assert eng.apply(0, 0, c.NEW_ORDER, cmd) == ref.apply(0, 0, c.NEW_ORDER, cmd)
    eng.check_invariants()
    assert eng.state_hash() == ref.state_hash()
    back = CrossEngine.restore(eng.snapshot())
    back.check_invariants()
    cmd = c.cancel(client_order_id=live[-1][0], account=live[-1][1])
    assert back.apply(0, 0, c.CANCEL, cmd) == eng.apply(0, 0, c.CANCEL, cmd)


def test_backward_shifts_move_each_orders_id_slot_along():
    """With a multiplier of 1 every order id of one symbol hashes to one slot, so the id map is
    one probe run and every deletion shifts the orders after it: each moved order's id_slot
    must follow it (check_invariants), and cancels and fills still find the right orders."""
    import random

    from crossengine.engine import seed_hashes, set_id_ring
    rng = random.Random(5)
    seed_hashes(multiplier=1)
    set_id_ring(0)         # one slot: every resting order but the newest is in the id map
    try:
        eng, ref = CrossEngine(max_qty=1000), ReferenceEngine(max_qty=1000)
    finally:
        seed_hashes(None)
        set_id_ring(None)
    live = []
    for n in range(2_000):
        side = c.BUY if n % 2 else c.SELL
        price = 5_000 - 1 - rng.randrange(50) if side == c.BUY else 5_000 + rng.randrange(50)
        cmd = c.new_order(n + 1, side, price, 1 + rng.randrange(9), 1 + n % 7)
        assert eng.apply(0, 0, c.NEW_ORDER, cmd) == ref.apply(0, 0, c.NEW_ORDER, cmd)
        live.append((n + 1, 1 + n % 7, ID | (n + 1)))
    assert eng.index_stats()["by_id"][2] >= 1_999          # one run: the test bites
    rng.shuffle(live)
    for k, (cl, acct, oid) in enumerate(live[:1_200]):
        cmd = c.cancel(client_order_id=cl, account=acct) if k % 2 else c.cancel(order_id=oid)
        assert eng.apply(0, 0, c.CANCEL, cmd) == ref.apply(0, 0, c.CANCEL, cmd)
        if k % 100 == 0:
            eng.check_invariants()
    for k in range(40):
        cmd = c.new_order(10**6 + k, c.BUY if k % 2 else c.SELL, 5_030 if k % 2 else 4_970,
                          30, 99)
        assert eng.apply(0, 0, c.NEW_ORDER, cmd) == ref.apply(0, 0, c.NEW_ORDER, cmd)
    eng.check_invariants()
    assert eng.state_hash() == ref.state_hash()


def test_book_depth_counts_levels_and_a_negative_depth_is_refused(eng):
    for i, price in enumerate((100, 95, 90)):
        new(eng, i + 1, c.BUY, price, 5)
    assert [p for p, _t, _n in eng.book()["bids"]] == [100, 95, 90]
    assert [p for p, _t, _n in eng.book(2)["bids"]] == [100, 95]
    with pytest.raises(ValueError, match="book depth -1"):
        eng.book(-1)


def test_book_takes_any_int_depth_as_the_reference_does(eng):
    """A depth past the engine's int (2**31 and up) is every level, as in the reference; a
    negative one that large is the same ValueError as -1, not an OverflowError."""
    for i, price in enumerate((100, 95, 90)):
        new(eng, i + 1, c.BUY, price, 5)
    for depth in (1 << 31, 1 << 40):
        assert [p for p, _t, _n in eng.book(depth)["bids"]] == [100, 95, 90]
    with pytest.raises(ValueError, match="book depth"):
        eng.book(-(1 << 40))


def test_the_takers_of_one_te_record_share_max_fills():
    """A TradingEngine record carries many commands (a mark that fires many stops) and is
    answered by one output record: its takers together meet at most max_fills makers, so the
    answer stays as bounded as one taker's. Each taker stops where the shared count runs out
    and its rest expires (reason 6); a FOK is fillable only within what is left; the next
    record starts with max_fills again, and a record from any other source is one command."""
    from mq.record import decode
    maker = 7

    def book(eng):
        for i in range(12):
            eng.apply(0, 0, c.NEW_ORDER, c.new_order(100 + i, c.SELL, 100 + i, 1, maker))

    eng = CrossEngine(symbol_id=1, te_sources=[TE_SOURCE], max_fills=5)
    book(eng)
    takers = [c.new_order(1, c.BUY, 200, 3, 1, tif=c.IOC),     # 3 makers
              c.new_order(2, c.BUY, 200, 4, 2, tif=c.IOC),     # 2 left: 2 fill, 2 expire
              c.new_order(3, c.BUY, 200, 1, 3, tif=c.FOK),     # none left: not fillable
              c.new_order(4, c.BUY, 200, 2, 4)]                # GTC: none left, all expire
    payload = b"".join(ce_command(1, c.NEW_ORDER, t) for t in takers)
    out = decode(eng.apply_frame(_frame([(TE_SOURCE, 44, payload)], seq=50)))
    events = c.decode_events(out[0][6])
    trades = [e for e in events if e[0] == c.EV_TRADE]
    assert len(trades) == 5
    expired = [(e[3], e[4], e[5]) for e in events if e[0] == c.EV_EXPIRED]
    assert [(a, q, r) for a, q, r in expired if r == c.REASON_MATCH_LIMIT] == [
        (2, 2, c.REASON_MATCH_LIMIT), (4, 2, c.REASON_MATCH_LIMIT)]
    assert [c.REJECT_CODES[e[3]] for e in events if e[0] == c.EV_REJECTED] == [
        "fok_not_fillable"]
    assert len(eng.book()["asks"]) == 12 - 5 and eng.book()["bids"] == []
    # the next record has all of max_fills again, and so does a command of another source
    more = ce_command(1, c.NEW_ORDER, c.new_order(5, c.BUY, 200, 5, 5, tif=c.IOC))
    out = decode(eng.apply_frame(_frame([(TE_SOURCE, 44, more)], seq=51)))
    assert names(c.decode_events(out[0][6])).count("Trade") == 5
    assert names(c.decode_events(eng.apply(0, 0, c.NEW_ORDER, c.new_order(
        6, c.BUY, 200, 2, 6, tif=c.IOC)))).count("Trade") == 2
    # the same takers as records of their own each get max_fills
    alone = CrossEngine(symbol_id=1, te_sources=[TE_SOURCE], max_fills=5)
    book(alone)
    got = sum(names(c.decode_events(alone.apply(0, 0, c.NEW_ORDER, t))).count("Trade")
              for t in takers)
    assert got == 3 + 4 + 1 + 2
