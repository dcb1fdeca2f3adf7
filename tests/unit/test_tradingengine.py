"""The TradingEngine's behaviour, one rule per test, through a venue of real CrossEngines
(tests/tradingvenue.py): transfers, the pre-trade check, fills, fees and PnL, reduce-only,
liquidation, funding, conditional orders, the dead-man's switch, shards, the audit."""
import pytest

from tests.tradingvenue import HOUR, SECOND, Venue, events_of, spec, two_specs
from tradingengine import codec as c
from tradingengine.engine import LIQUIDATION_ID, EngineHalted, TradingEngine
from tradingengine.margin import Tier, order_cost

USDT = 10**8


def phemex() -> Venue:
    s = spec(1, value=1_000, max_leverage_x100=5_000, tiers=(Tier(10**18, 10_000, 0, 5_000),),
             maker_fee_ppm=100, taker_fee_ppm=600)
    v = Venue([s])
    v.deposit(1, 1_000 * USDT)
    v.deposit(2, 1_000 * USDT)
    v.mark(1, 40_000)
    return v


def codes(events, kind=c.EXEC_REPORT):
    if kind == c.EXEC_REPORT:
        return [e[16] for e in events if e[0] == kind and e[1] == c.EXEC_REJECTED]
    if kind == c.REQUEST_REJECTED:
        return [e[1] for e in events if e[0] == kind]
    return [e[4] for e in events if e[0] == kind]


def test_deposit_with_a_repeated_transfer_id_is_a_no_op():
    v = Venue([spec()])
    assert events_of(v.deposit(7, 500, transfer_id=42), c.TRANSFER)
    assert v.deposit(7, 500, transfer_id=42) == []
    assert v.te.accounts[7].balance == 500
    assert v.te.deposits == 500


def test_a_shard_refuses_deposits_that_take_its_money_to_2_pow_56():
    """All the clients' money of 64 shards stays below 2**62, so the insurance fund that
    receives it never leaves int64 (docs/liqengine.md §8)."""
    from tradingengine.engine import MAX_SHARD_MONEY
    assert MAX_SHARD_MONEY == 1 << 56
    v = Venue([spec()])
    assert events_of(v.deposit(7, MAX_SHARD_MONEY - 10, transfer_id=1), c.TRANSFER)
    out = v.deposit(8, 10, transfer_id=2)
    assert codes(out, c.REQUEST_REJECTED) == [c.CODES["account_balance_limit"]]
    assert 8 not in v.te.accounts and v.te.deposits == MAX_SHARD_MONEY - 10
    assert events_of(v.deposit(8, 9, transfer_id=3), c.TRANSFER)


def test_withdrawal_is_limited_to_available_and_its_id_is_spent_either_way():
    v = Venue([spec()])
    v.deposit(7, 1_000)
    out = v.apply(c.WITHDRAW, c.transfer(9, 7, 1_001))
    assert codes(out, c.REQUEST_REJECTED) == [c.CODES["withdrawal_exceeds_available"]]
    assert v.apply(c.WITHDRAW, c.transfer(9, 7, 10)) == []          # id 9 already answered
    assert events_of(v.apply(c.WITHDRAW, c.transfer(10, 7, 1_000)), c.TRANSFER)
    assert v.te.accounts[7].balance == 0


def test_bad_orders_are_rejected_with_their_codes():
    v = phemex()
    cases = [
        (dict(account=3), "account_unknown"),
        (dict(symbol=9), "symbol_unknown"),
        (dict(side=ord("3")), "side_invalid"),
        (dict(price=0), "price_invalid"),
        (dict(qty=0), "qty_invalid"),
        (dict(price=50_000), "price_outside_band"),
        (dict(qty=900_000), "margin_insufficient"),
        (dict(flags=c.FLAG_REDUCE_ONLY), "reduce_only_would_increase"),
        (dict(ord_type=c.MARKET, price=0, flags=c.FLAG_POST_ONLY), "post_only_not_limit"),
    ]
    for i, (kw, name) in enumerate(cases):
        args = dict(coid=100 + i, account=1, side=c.BUY, price=40_000, qty=10, symbol=1) | kw
        assert codes(v.order(**args)) == [c.CODES[name]], name
    assert v.te.accounts[1].order_margin == 0


def test_reject_of_a_malformed_command_is_an_event():
    v = phemex()
    out = v.apply(c.NEW_ORDER, b"\x00" * 5)
    assert codes(out, c.REQUEST_REJECTED) == [c.CODES["command_malformed"]]
    out = v.apply(999, b"x")
    assert codes(out, c.REQUEST_REJECTED) == [c.CODES["command_malformed"]]


def test_order_reserves_its_cost_and_a_cancel_releases_it():
    v = phemex()
    v.apply(c.SET_LEVERAGE, c.set_leverage(1, 1, 500))
    out = v.order(1, 1, c.BUY, 39_000, 100)
    assert [e[1] for e in events_of(out, c.EXEC_REPORT)] == [c.EXEC_NEW]
    acct = v.te.accounts[1]
    assert acct.order_margin == order_cost(100, 39_000, True, 40_000, v.te.specs[1], 500)
    out = v.apply(c.CANCEL, c.cancel(2, 1, 1))
    assert [e[1] for e in events_of(out, c.EXEC_REPORT)] == [c.EXEC_CANCELED]
    assert acct.order_margin == 0 and not acct.orders


def test_an_order_that_reduces_the_position_needs_no_margin():
    v = phemex()
    v.order(1, 2, c.SELL, 40_000, 100)
    v.order(1, 1, c.BUY, 40_000, 100)           # account 1 long 100
    v.order(2, 1, c.SELL, 41_000, 60)           # reduces: free
    assert v.te.accounts[1].order_margin == 0
    v.order(3, 1, c.SELL, 41_000, 60)           # 40 reduce, 20 open a short
    s = v.te.specs[1]
    assert v.te.accounts[1].order_margin == order_cost(20, 41_000, False, 40_000, s, 1_000)


def test_fill_books_position_fees_and_realised_pnl_exactly():
    v = phemex()
    v.order(1, 2, c.SELL, 40_000, 500)          # maker
    v.order(1, 1, c.BUY, 40_000, 500)           # taker
    a1, a2 = v.te.accounts[1], v.te.accounts[2]
    notional = 500 * 40_000 * 1_000
    assert a1.balance == 1_000 * USDT - notional * 600 // 10**6
    assert a2.balance == 1_000 * USDT - notional * 100 // 10**6
    assert v.te.fee_pool == notional * 700 // 10**6
    assert (v.position(1).size, v.position(1).cost) == (500, notional)
    assert (v.position(2).size, v.position(2).cost) == (-500, -notional)
    v.mark(1, 41_000)
    v.order(2, 2, c.BUY, 41_000, 200)           # account 2 closes 200 at 41,000: a loss
    v.order(2, 1, c.SELL, 41_000, 200)          # account 1 takes profit
    assert v.position(1).realised == 200 * 1_000 * 1_000
    assert v.position(2).realised == -200 * 1_000 * 1_000
    assert v.position(1).cost == 300 * 40_000 * 1_000


def test_resting_reduce_only_orders_shrink_with_the_position():
    v = phemex()
    v.order(1, 2, c.SELL, 40_000, 100)
    v.order(1, 1, c.BUY, 40_000, 100)                          # long 100
    v.order(2, 1, c.SELL, 42_000, 60, flags=c.FLAG_REDUCE_ONLY)
    v.order(3, 1, c.SELL, 43_000, 40, flags=c.FLAG_REDUCE_ONLY)
    v.order(3, 2, c.BUY, 39_000, 50)
    out = v.order(4, 1, c.SELL, 39_000, 50)                     # position now 50
    acct = v.te.accounts[1]
    ro = sorted((o.client_order_id, o.leaves) for o in acct.orders.values())
    assert ro == [(2, 50)]                     # the newest (40) cancelled, the other cut to 50
    cancelled = [e for e in events_of(out, c.EXEC_REPORT) if e[1] == c.EXEC_CANCELED]
    assert [e[5] for e in cancelled] == [3]


def test_isolated_long_is_handed_to_liquidation_at_bankruptcy_price():
    """The Phemex example end to end: liquidated at a mark of 0.32323, not at 0.32324; the
    position moves to the liquidation account at 0.32 and the 0.096 USDT fee reserve with it."""
    v = phemex()
    v.apply(c.SET_MARGIN_MODE, c.set_margin_mode(1, 1, c.ISOLATED))
    v.apply(c.SET_LEVERAGE, c.set_leverage(1, 1, 500))
    v.order(1, 2, c.SELL, 40_000, 500)
    v.order(1, 1, c.BUY, 40_000, 500)
    before = v.te.accounts[1].balance
    v.order(2, 1, c.BUY, 33_000, 10)                   # an open order in the symbol
    assert not events_of(v.mark(1, 32_324), c.LIQUIDATION)
    out = v.mark(1, 32_323)
    (liq,) = events_of(out, c.LIQUIDATION)
    assert liq[1:] == (1, 1, 500, 32_000, 500 * 32_000 * 1_000, 9_600_000)
    assert [e[16] for e in events_of(out, c.EXEC_REPORT)] == [c.REASON_LIQUIDATION]
    assert v.position(1).size == 0
    assert v.te.accounts[1].balance == before - (40 * USDT + 9_600_000)
    assert v.te.liquidation.positions[1].size == 500
    assert LIQUIDATION_ID < 0


def test_cross_account_cancels_orders_first_and_survives_if_that_is_enough():
    s = spec(1, value=1_000, max_leverage_x100=5_000, tiers=(Tier(10**18, 10_000, 0, 5_000),),
             maker_fee_ppm=0, taker_fee_ppm=0)
    v = Venue([s])
    v.deposit(1, 45 * USDT)
    v.deposit(2, 10_000 * USDT)
    v.mark(1, 40_000)
    v.apply(c.SET_LEVERAGE, c.set_leverage(1, 1, 500))
    v.order(1, 2, c.SELL, 40_000, 500)
    v.order(1, 1, c.BUY, 40_000, 500)            # long 500 at 0.4, 40 USDT initial margin
    v.order(2, 1, c.BUY, 36_500, 20)             # holds 1.46 USDT of order margin
    out = v.mark(1, 31_510)
    # equity 45 - 500 * (0.4 - 0.3151) = 2.55, of which the order holds 1.46: 1.09 is below
    # maintenance 1% * 500 * 0.3151 = 1.5755, 2.55 is above it. The order is cancelled and
    # the position stays.
    assert [e[1] for e in events_of(out, c.EXEC_REPORT)] == [c.EXEC_CANCELED]
    assert not events_of(out, c.LIQUIDATION)
    out = v.mark(1, 31_200)
    assert events_of(out, c.LIQUIDATION)


def test_funding_moves_money_from_longs_to_shorts_and_dust_keeps_the_residue():
    s = spec(1, value=7, funding_interval_ns=HOUR)
    v = Venue([s], shard=0, n_shards=2)
    v.deposit(2, 10**12)
    v.deposit(4, 10**12)
    v.mark(1, 10_001)
    v.order(1, 2, c.SELL, 10_001, 3)
    v.order(1, 4, c.BUY, 10_001, 3)
    v.apply(c.FUNDING_INPUTS, c.funding_inputs(1, 333, 100))   # F = 333 - 233 = 100 ppm
    b2, b4 = v.te.accounts[2].balance, v.te.accounts[4].balance
    out = v.apply(c.KIND_TICK, b"", dt_ns=HOUR)
    (settled,) = events_of(out, c.FUNDING_SETTLED)
    # 3 * 10,001 * 7 * 100 / 1e6 = 21.0021: the long pays 22, the short gets 21, dust 1
    assert settled[1:] == (1, 100, 10_001, 22, 21, 1)
    assert v.te.accounts[4].balance == b4 - 22
    assert v.te.accounts[2].balance == b2 + 21
    assert v.te.dust == 1


def test_trades_with_other_shards_are_booked_against_clearing():
    v = Venue([spec()], shard=0, n_shards=2)
    v.deposit(2, 10**12)
    v.mark(1, 10_000)
    v.ce_seq[1] += 1
    out = v.ces[1].apply(v.ce_seq[1], v.ts_ns, c.CE_NEW_ORDER,
                         c.CE_NEW_ORDER_S.pack(77, 10_000, 5, 3, c.SELL, c.LIMIT, c.GTC, 0, 0))
    v.apply(c.CE_EVENTS, c.ce_events(1, out))        # account 3 lives in shard 1: ignored
    assert 3 not in v.te.accounts
    v.order(1, 2, c.BUY, 10_000, 5)
    assert v.position(2).size == 5
    assert v.te.clearing.positions[1].size == -5
    v.te.audit()


def test_stop_order_waits_for_its_price_and_is_refused_if_it_would_fire_at_once():
    v = phemex()
    out = v.order(1, 1, c.BUY, 0, 10, ord_type=c.MARKET, trigger_price=39_000,
                  trigger_kind=c.TRIGGER_STOP, trigger_by=c.BY_MARK)
    assert codes(out) == [c.CODES["trigger_would_fire_at_once"]]
    out = v.order(2, 1, c.BUY, 0, 10, ord_type=c.MARKET, trigger_price=41_000,
                  trigger_kind=c.TRIGGER_STOP, trigger_by=c.BY_MARK)
    assert [e[2] for e in events_of(out, c.EXEC_REPORT)] == [c.STATUS_UNTRIGGERED]
    assert v.te.accounts[1].order_margin == 0        # a waiting stop holds nothing
    v.order(1, 2, c.SELL, 41_500, 10)
    out = v.mark(1, 41_000)
    assert [e[1] for e in events_of(out, c.EXEC_REPORT)][:2] == [c.EXEC_TRIGGERED, c.EXEC_NEW]
    assert v.position(1).size == 10


def test_take_profit_by_last_price():
    v = phemex()
    v.order(1, 2, c.SELL, 40_000, 10)
    v.order(1, 1, c.BUY, 40_000, 10)                 # long 10, last 40,000
    v.order(2, 1, c.SELL, 0, 10, ord_type=c.MARKET, flags=c.FLAG_REDUCE_ONLY,
            trigger_price=40_500, trigger_kind=c.TRIGGER_TAKE_PROFIT, trigger_by=c.BY_LAST)
    v.order(3, 2, c.BUY, 40_400, 10)                 # the take-profit's counterparty
    v.order(4, 2, c.SELL, 40_500, 1)
    v.deposit(5, 10**12)
    assert v.position(1).size == 10
    out = v.order(5, 5, c.BUY, 40_500, 1)            # a trade at 40,500 fires the TP
    assert c.EXEC_TRIGGERED in [e[1] for e in events_of(out, c.EXEC_REPORT)]
    assert v.position(1).size == 0
    assert v.position(1).realised == 10 * 400 * 1_000


def test_dead_mans_switch_cancels_everything_after_its_timeout():
    v = phemex()
    v.order(1, 1, c.BUY, 39_000, 10)
    v.order(2, 1, c.BUY, 0, 10, ord_type=c.MARKET, trigger_price=41_000,
            trigger_kind=c.TRIGGER_STOP, trigger_by=c.BY_MARK)
    v.apply(c.DEAD_MANS_SWITCH, c.dead_mans_switch(1, 1_000))
    assert not events_of(v.apply(c.KIND_TICK, b"", dt_ns=500 * 10**6), c.DEAD_MANS_SWITCH_FIRED)
    v.apply(c.DEAD_MANS_SWITCH, c.dead_mans_switch(1, 1_000))          # refreshed
    assert not events_of(v.apply(c.KIND_TICK, b"", dt_ns=900 * 10**6), c.DEAD_MANS_SWITCH_FIRED)
    out = v.apply(c.KIND_TICK, b"", dt_ns=SECOND)
    assert events_of(out, c.DEAD_MANS_SWITCH_FIRED)[0][1:] == (1, 2)
    assert not v.te.accounts[1].orders


def test_margin_mode_is_locked_while_a_position_or_order_exists():
    v = phemex()
    v.order(1, 1, c.BUY, 39_000, 10)
    out = v.apply(c.SET_MARGIN_MODE, c.set_margin_mode(1, 1, c.ISOLATED))
    assert codes(out, c.REQUEST_REJECTED) == [c.CODES["margin_mode_locked_by_position_or_orders"]]


def test_isolated_margin_can_be_added_and_only_the_addition_removed():
    v = phemex()
    v.apply(c.SET_MARGIN_MODE, c.set_margin_mode(1, 1, c.ISOLATED))
    v.order(1, 2, c.SELL, 40_000, 100)
    v.order(1, 1, c.BUY, 40_000, 100)
    m = v.position(1).margin
    v.apply(c.ADJUST_MARGIN, c.adjust_margin(1, 1, 5 * USDT))
    assert v.position(1).margin == m + 5 * USDT
    out = v.apply(c.ADJUST_MARGIN, c.adjust_margin(1, 1, -6 * USDT))
    assert codes(out, c.REQUEST_REJECTED) == [c.CODES["isolated_margin_below_requirement"]]
    v.apply(c.ADJUST_MARGIN, c.adjust_margin(1, 1, -5 * USDT))
    assert v.position(1).margin == m


def test_leverage_above_the_tier_is_refused():
    v = phemex()
    out = v.apply(c.SET_LEVERAGE, c.set_leverage(1, 1, 5_001))
    assert codes(out, c.REQUEST_REJECTED) == [c.CODES["leverage_invalid"]]


def test_a_broken_audit_halts_with_a_report_naming_the_accounts():
    v = phemex()
    v.order(1, 2, c.SELL, 40_000, 10)
    v.order(1, 1, c.BUY, 40_000, 10)
    v.te.accounts[1].balance += 1          # money from nowhere
    with pytest.raises(EngineHalted, match=r"difference 1\b.*not their ledger: \[1\]"):
        v.mark(1, 40_100)


def test_money_moved_between_accounts_still_names_both():
    """The sum balances, but two accounts' balances no longer match their own histories."""
    v = phemex()
    v.te.accounts[1].balance -= 5
    v.te.accounts[2].balance += 5
    with pytest.raises(EngineHalted, match=r"difference 0\b.*not their ledger: \[1, 2\]"):
        v.mark(1, 40_100)


def test_records_out_of_order_halt():
    te = TradingEngine([spec()])
    te.apply(5, 1, c.KIND_TICK, b"")
    with pytest.raises(EngineHalted):
        te.apply(5, 2, c.KIND_TICK, b"")


def test_snapshot_restores_the_same_state():
    v = phemex()
    v.order(1, 2, c.SELL, 40_000, 10)
    v.order(1, 1, c.BUY, 40_000, 10)
    v.order(2, 1, c.BUY, 39_000, 10)
    v.order(3, 1, c.SELL, 0, 5, ord_type=c.MARKET, trigger_price=39_500,
            trigger_kind=c.TRIGGER_STOP)
    te2 = TradingEngine.restore(v.te.snapshot())
    assert te2.state_hash() == v.te.state_hash()
    assert te2.snapshot() == v.te.snapshot()


def test_a_reduce_only_order_cannot_be_amended_beyond_the_position():
    v = phemex()
    v.order(1, 2, c.SELL, 40_000, 100)
    v.order(1, 1, c.BUY, 40_000, 100)                          # long 100
    v.order(2, 1, c.SELL, 42_000, 60, flags=c.FLAG_REDUCE_ONLY)
    v.order(3, 1, c.SELL, 43_000, 30, flags=c.FLAG_REDUCE_ONLY)
    out = v.apply(c.AMEND, c.amend(4, 2, 1, qty=71))           # 71 + 30 > 100
    assert codes(out, c.CANCEL_REJECTED) == [c.CODES["reduce_only_would_increase"]]
    out = v.apply(c.AMEND, c.amend(5, 2, 1, qty=70))
    assert [e[1] for e in events_of(out, c.EXEC_REPORT)] == [c.EXEC_REPLACED]


def test_a_fill_of_an_order_the_engine_does_not_know_is_booked():
    """A CrossEngine trade naming an account of this shard but an order this engine never sent
    (another system's): the position, fees and audit still hold."""
    v = Venue([spec()], shard=0, n_shards=2)
    v.deposit(2, 10**12)
    v.mark(1, 10_000)
    trade = c.CE_EVENT_STRUCTS[c.CE_TRADE].pack(c.CE_TRADE, 1, 77, 78, 2, 3, 10_000, 4, c.BUY,
                                                0, 0, 0, 0)
    out = v.apply(c.CE_EVENTS, c.ce_events(1, trade))
    assert v.position(2).size == -4 and v.te.clearing.positions[1].size == 4
    assert events_of(out, c.POSITION) and not events_of(out, c.EXEC_REPORT)
    v.te.audit()


def test_a_closing_order_beyond_bankruptcy_is_refused_and_a_market_one_stops_there():
    """Long 100 at 10,000 (10x) on 1.02 USDT; the mark falls 7% (still above maintenance). A
    sell at 8,400, inside the band, would realise a loss beyond the balance: refused (2043),
    as BitMEX and Phemex do. A market sell goes out with its protection price at the
    bankruptcy price instead of the band's edge, so its loss stops at what the account has."""
    v = Venue([spec()])
    v.deposit(1, 102_000_000)
    v.deposit(2, 10**12)
    v.mark(1, 10_000)
    v.order(1, 2, c.SELL, 10_000, 100)
    v.order(1, 1, c.BUY, 10_000, 100)
    assert not events_of(v.mark(1, 9_300), c.LIQUIDATION)
    (rej,) = events_of(v.order(5, 1, c.SELL, 8_400, 100), c.EXEC_REPORT)
    assert rej[1] == c.EXEC_REJECTED and rej[-2] == c.CODES["price_beyond_bankruptcy"]
    bk = v.te.view_accounts([1])[0]["positions"][0][5]
    assert 8_400 < bk < 9_300
    v.order(2, 2, c.BUY, 8_400, 100)
    out = v.order(6, 1, c.SELL, 0, 100, ord_type=c.MARKET, tif=c.IOC)
    # the only bid is beyond bankruptcy: nothing fills, the order ends, the position stays
    assert not [e for e in events_of(out, c.EXEC_REPORT) if e[1] == c.EXEC_TRADE]
    assert v.position(1, 1).size == 100 and not v.te.accounts[1].orders
    v.order(3, 2, c.BUY, 9_200, 100)
    out = v.order(7, 1, c.SELL, 0, 100, ord_type=c.MARKET, tif=c.IOC)
    fills = [e for e in events_of(out, c.EXEC_REPORT) if e[1] == c.EXEC_TRADE and e[3] == 1]
    assert [e[11] for e in fills] == [9_200] and not events_of(out, c.DEFICIT_COVERED)
    v.te.audit()


def test_a_withdrawal_may_not_leave_a_resting_close_beyond_bankruptcy():
    """Long 100 at 10,000 (10x). With 3.02 USDT the account rests a sell at 8,400 (its
    bankruptcy price then near 7,000). Withdrawing 2 USDT would move the bankruptcy price to
    about 9,000, beyond the resting sell, whose fill would then realise a loss beyond the
    balance for the fund to cover: refused (2024). What leaves the sell where it is passes."""
    v = Venue([spec()])
    v.deposit(1, 302_000_000)
    v.deposit(2, 10**12)
    v.mark(1, 10_000)
    v.order(1, 2, c.SELL, 10_000, 100)
    v.order(1, 1, c.BUY, 10_000, 100)
    v.mark(1, 9_300)
    v.order(5, 1, c.SELL, 8_400, 100)                # inside the band at this mark
    assert v.te.accounts[1].orders
    v.mark(1, 10_000)
    (rej,) = events_of(v.apply(c.WITHDRAW, c.transfer(77, 1, 200_000_000)), c.REQUEST_REJECTED)
    assert rej[1] == c.CODES["withdrawal_exceeds_available"]
    v.apply(c.WITHDRAW, c.transfer(78, 1, 50_000_000))
    assert v.te.accounts[1].balance < 302_000_000 - 50_000_000 + 1
    v.te.audit()


def test_a_fill_in_a_symbol_without_a_mark_is_valued_at_its_entry():
    """A CrossEngine trade can reach an account in a symbol whose mark has not arrived yet: the
    position is booked, valued at its entry until a mark comes, and nothing raises."""
    v = Venue(two_specs(), shard=0, n_shards=2)
    v.deposit(2, 10**12)
    v.deposit(4, 10**12)
    v.mark(1, 10_000)
    v.order(1, 4, c.SELL, 10_000, 5)
    v.order(1, 2, c.BUY, 10_000, 5)                 # a position in symbol 1
    trade = c.CE_EVENT_STRUCTS[c.CE_TRADE].pack(c.CE_TRADE, 1, 77, 78, 2, 3, 50_000, 4, c.BUY,
                                                0, 0, 0, 0)
    v.apply(c.CE_EVENTS, c.ce_events(2, trade))     # symbol 2 has no mark yet
    assert v.position(2, 2).size == -4
    v.mark(1, 9_000)                                # the cross check sees both positions
    v.apply(c.WITHDRAW, c.transfer(99, 2, 1))
    v.mark(2, 50_000)
    v.te.check_invariants()


def test_view_accounts_states_the_live_figures_the_events_would():
    """`seqex client positions` asks a replica (QUERY) for view_accounts: the order margin of a
    resting order is in at once (no AccountStatus is written for an order), and after a fill
    the figures equal the AccountStatus and Position events the fill wrote."""
    v = phemex()
    v.order(1, 1, c.BUY, 39_000, 100)                     # rests: no AccountStatus
    acct = v.te.accounts[1]
    (one,) = v.te.view_accounts([1, 99])                  # 99: no such account, left out
    assert one["account"] == 1 and one["order_margin"] == acct.order_margin > 0
    assert one["available"] == 1_000 * USDT - acct.order_margin
    assert [row[1] for row in one["positions"]] in ([], [0])            # no size yet
    before = v.te.state_hash()
    v.order(1, 2, c.SELL, 40_000, 60)
    out = v.order(2, 1, c.BUY, 40_000, 60)                # fills: AccountStatus + Position
    (status,) = [e for e in events_of(out, c.ACCOUNT) if e[1] == 1]
    (pos,) = [e for e in events_of(out, c.POSITION) if e[1] == 1]
    (one,) = v.te.view_accounts([1])
    assert (one["balance"], one["available"], one["order_margin"],
            one["position_margin"]) == tuple(status[2:6])
    assert one["positions"] == [list(pos[2:])] and pos[3] == 60
    assert one["marks"] == [[pos[2], v.te.marks[pos[2]]]]   # for the unrealised PnL
    assert before != v.te.state_hash()
    h = v.te.state_hash()
    v.te.view_accounts([1, 2])
    assert v.te.state_hash() == h                         # a query changes nothing
