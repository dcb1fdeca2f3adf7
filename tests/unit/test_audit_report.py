"""`seqex audit`'s report (deploy/audit.py render): balanced, and a failure that names the
engine, the seq and the accounts whose books are off."""
from __future__ import annotations

import json

from deploy import audit
from tests.liqcascade import RoutedVenue
from tests.tradingvenue import spec
from tradingengine import codec as tc


def _venue() -> RoutedVenue:
    v = RoutedVenue([spec(1, value=10)], n_shards=2)
    v.deposit(1, 10**12, 1)
    v.deposit(2, 10**12, 2)
    v.fund_deposit(3, 5 * 10**8)
    v.mark(1, 10_000)
    v.order(1, 10, 1, tc.SELL, 10_000, 5)
    v.order(2, 11, 1, tc.BUY, 10_000, 5)
    v.run()
    return v


def _report(v: RoutedVenue, errors: dict | None = None) -> audit.Report:
    books = v.books()
    for b in books:
        b.records = 7
        b.error = (errors or {}).get(b.name, "")
    return audit.Report(books, 0.25)


def test_a_balanced_report_says_so_in_text_and_json():
    r = _report(_venue())
    assert r.ok and r.total == r.expected == 2 * 10**12 + 5 * 10**8
    lines = audit.render(r)
    assert lines[-1].endswith("balanced: the sum equals deposits minus withdrawals to the "
                              "minor unit")
    assert not any("FAILED" in x or "UNBALANCED" in x for x in lines)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["ok"] and d["clearing_net"] == {} and [e["name"] for e in d["engines"]] == \
        ["in.te.0", "in.te.1", "liq"]


def test_a_doctored_account_is_named_with_its_engine_and_seq():
    v = _venue()
    te = v.te[1].engine
    te.accounts[1].balance += 123        # a minor unit from nowhere
    try:
        te.audit()
    except Exception as exc:              # EngineHalted: the engine's own report
        error = f"in.te.1 at seq {te.seq}: {exc}"
    else:
        raise AssertionError("the doctored shard's audit passed")
    r = _report(v, {"in.te.1": error})
    assert not r.ok
    text = "\n".join(audit.render(r))
    assert "in.te.1: FAILED in.te.1 at seq" in text
    assert "accounts whose balance is not their ledger: [1]" in text
    assert "account 1: balance" in text
    assert "UNBALANCED by" in text
    assert "in.te.1 (in.te.1): its books" in text
    assert not r.to_dict()["ok"]


def test_clearing_in_flight_is_named_as_such():
    v = _venue()
    v.te[0].engine.clearing.positions[1].size += 1   # as if a trade had not reached shard 0
    r = _report(v)
    text = "\n".join(audit.render(r))
    assert "clearing positions between engines do not net to zero: symbol 1 +1 lots" in text
    # with the cluster's contracts: the symbol's name and the size in its units (it printed
    # a raw dict of ids and lots, "{1: 1} (symbol: lots)")
    from decimal import Decimal

    from deploy.decode import Units
    r.units = {1: Units("BTCUSDT", 1, Decimal("0.5"), Decimal("0.001"))}
    text = "\n".join(audit.render(r))
    assert "do not net to zero: BTCUSDT +0.001 (records in flight" in text, text


def test_clearing_money_that_does_not_net_is_named_when_the_positions_do():
    """At rest the clearing accounts' money sums to zero as their positions do: a payment
    between engines booked on one side only (funding with no one on the other side, as the
    twenty-first economic campaign found) shows with positions that net."""
    v = _venue()
    r = _report(v)
    assert r.at_rest and r.clearing_money == 0 and r.to_dict()["at_rest"]
    v.te[0].engine.clearing.balance += 43_650_000        # paid by no engine
    r = _report(v)
    assert not r.clearing_net() and r.clearing_money == 43_650_000 and not r.at_rest
    text = "\n".join(audit.render(r))
    assert "clearing money between engines does not sum to zero though their positions " \
           "net: 0.4365 USDT" in text
    d = r.to_dict()
    assert d["clearing_money"] == 43_650_000 and not d["at_rest"]


def test_a_shards_books_count_the_funding_in_flight_of_a_deferred_sweep():
    """A funding sweep spread over records holds what it took in and has not paid out; the
    shard's books in `seqex audit` count it, so they sum to deposits at every record."""
    from deploy.audit import te_books
    from tests.tradingvenue import SECOND, Venue, spec
    from tradingengine import codec as c
    v = Venue([spec(funding_interval_ns=3600 * SECOND)], output_budget=0)
    v.deposit(1, 10**15)
    for a in range(2, 8):
        v.deposit(a, 10**13)
    v.mark(1, 10_000)
    for a in range(2, 8):
        v.order(a, 1, c.SELL, 10_000, 5)
        v.order(100 + a, a, c.BUY, 10_000, 5)
    v.apply(c.FUNDING_INPUTS, c.funding_inputs(1, 3_000, 0))
    v.apply(c.KIND_TICK, b"", dt_ns=3600 * SECOND)
    in_flight = 0
    while v.te.sweeps:
        b = te_books(v.te, "te0", "in.te.0")
        assert b.total() == b.deposits
        in_flight += any(sw[5] != sw[6] for sw in v.te.sweeps)
        v.apply(c.KIND_TICK, b"")
    assert in_flight, "no record left funding in flight: the test proves nothing"


def test_amounts_keep_their_thousands_separators_with_sub_cent_digits():
    """`seqex account` and `audit` printed 100001.005 next to 50,000.00: an amount with digits
    beyond the cent lost its separators."""
    from deploy.trading import usdt
    assert usdt(5_000_000_000_000) == "50,000.00"
    assert usdt(10_000_100_500_000) == "100,001.005"
    assert usdt(2_040_249_789_410_227) == "20,402,497.89410227"
    assert audit.usdt(-10_000_100_500_000) == "-100,001.005"
    assert usdt(1_000) == "0.00001"
