"""Random flows against a TradingEngine shard wired to real CrossEngines, with CrossEngine
results held in flight and delivered at random moments, as the streams do; the naive
ReferenceEngine (no running totals, no indexes) and the engine's source run by the interpreter
get every record in lockstep and must give the compiled engine's bytes.

Proves, at every step: the audit holds to the minor unit (check_invariants runs it after every
record, not only at marks), every derived figure (order and position margin, leaves,
reduce-only counts) equals what the state implies, no client balance is negative (a deficit
only ever moves to the liquidation account), and nothing raises: rejects are events. A
snapshot taken at any step restores to the same hash and carries on identically."""
import dataclasses
import os
import struct

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.tradingvenue import HOUR, MID, SECOND, Venue, two_specs
from tradingengine import codec as c
from tradingengine.engine import TradingEngine
from tradingengine.reference import ReferenceEngine, interpreted

INTERPRETED = interpreted()
ACCOUNTS = st.sampled_from([2, 4, 6, 8])
FOREIGN = st.sampled_from([1, 3])
SYMBOLS = st.sampled_from([1, 2])
SIDES = st.sampled_from([c.BUY, c.SELL])
# sessions: user 100 owns accounts 2 and 6, user 200 owns 4 and 8; two session ids each
USERS = {100: [2, 6], 200: [4, 8]}
SESSIONS = st.tuples(st.sampled_from([100, 200]), st.sampled_from([1, 2]))
P_NOS = struct.Struct("<QQQqQIIcccB")
P_OCR = struct.Struct("<QQQQQIcB")
P_OCRR = struct.Struct("<QQQQQqQIcccB")
P_OMCR = struct.Struct("<QQQIccB")
NULL = (1 << 64) - 1
TICK = 100          # a PROTOCOL.md price is ticks x 100 (x 1e-8); an odd one is not on a tick
LIQ_SRC = 0x7600_0000   # the LiqEngine's out.liq (docs/liqengine.md §2)


class TradingFlow(RuleBasedStateMachine):
    @initialize(balances=st.lists(st.integers(10**8, 10**10), min_size=4, max_size=4),
                budget=st.sampled_from([None, None, 0, 400]), liq=st.booleans())
    def setup(self, balances, budget, liq):
        # a budget of 0 (or 400 bytes) defers every fan-out to later records, one unit each
        specs = [dataclasses.replace(sp, tick=TICK) for sp in two_specs()]
        self.v = Venue(specs, shard=0, n_shards=2, auto=False, check=True,
                       shadows=(ReferenceEngine, INTERPRETED), output_budget=budget,
                       liq_sources=[LIQ_SRC] if liq else None)
        for account, amount in zip([2, 4, 6, 8], balances, strict=True):
            self.v.deposit(account, amount)
        self.v.mark(1, MID[1])
        self.v.mark(2, MID[2])
        self.coid = 0
        for (user, sid), cod in zip(sorted((u, i) for u in USERS for i in (1, 2)),
                                    (0, 1, 2, 2), strict=True):
            self.v.apply(c.SESSION_LOGON, c.session_logon(user, sid, sid, USERS[user][0],
                                                          USERS[user], cod, 500))

    def _coid(self) -> int:
        self.coid += 1
        return self.coid

    def _mark(self, symbol: int) -> int:
        return self.v.te.marks[symbol]

    @rule(account=ACCOUNTS, symbol=SYMBOLS, side=SIDES, off_pct=st.integers(-12, 12),
          qty=st.integers(1, 400), style=st.sampled_from(["gtc", "ioc", "fok", "market",
                                                          "reduce", "post", "stop", "tp", "day",
                                                          "day_stop"]),
          by=st.sampled_from([c.BY_MARK, c.BY_LAST]))
    def order(self, account, symbol, side, off_pct, qty, style, by):
        mark = self._mark(symbol)
        price = max(1, mark + mark * off_pct // 100)
        kw: dict = {}
        if style == "ioc":
            kw = {"tif": c.IOC}
        elif style == "fok":
            kw = {"tif": c.FOK}
        elif style == "market":
            kw, price = {"ord_type": c.MARKET, "tif": c.IOC}, 0
        elif style == "reduce":
            kw = {"flags": c.FLAG_REDUCE_ONLY}
        elif style == "post":
            kw = {"flags": c.FLAG_POST_ONLY}
        elif style == "day":       # rests, and expires when time_passes crosses a UTC day
            kw = {"tif": c.DAY}
        elif style in ("stop", "tp", "day_stop"):
            kw = {"trigger_price": price, "trigger_by": by,
                  "trigger_kind": c.TRIGGER_TAKE_PROFIT if style == "tp" else c.TRIGGER_STOP}
            if style == "day_stop":
                kw["tif"] = c.DAY
        self.v.order(self._coid(), account, side, price, qty, symbol, **kw)

    @rule(account=FOREIGN, symbol=SYMBOLS, side=SIDES, off_pct=st.integers(-4, 4),
          qty=st.integers(1, 500))
    def foreign_order(self, account, symbol, side, off_pct, qty):
        """An order of an account in the other shard: it reaches this one only as trades."""
        mark = self._mark(symbol)
        self.v.ce_seq[symbol] += 1
        out = self.v.ces[symbol].apply(
            self.v.ce_seq[symbol], self.v.ts_ns, c.CE_NEW_ORDER,
            c.CE_NEW_ORDER_S.pack(self._coid(), max(1, mark + mark * off_pct // 100), qty,
                                  account, side, c.LIMIT, c.GTC, 0, 0))
        self.v.pending.append(c.ce_events(symbol, out))

    @rule(account=ACCOUNTS, counterparty=st.sampled_from([1, 3, 2, 4, 6, 8]), symbol=SYMBOLS,
          side=SIDES, off_pct=st.integers(-6, 6), qty=st.integers(1, 300),
          leverage=st.sampled_from([None, 500, 2_000, 5_000]))
    def trade(self, account, counterparty, symbol, side, off_pct, qty, leverage):
        """A resting order of the counterparty (of this shard or another) taken by the account,
        at once or later: most flows need trades to reach positions, funding and liquidation."""
        if leverage:
            self.v.apply(c.SET_LEVERAGE, c.set_leverage(account, symbol, leverage))
        mark = self._mark(symbol)
        price = max(1, mark + mark * off_pct // 100)
        other = c.SELL if side == c.BUY else c.BUY
        if counterparty % 2:
            self.foreign_order(counterparty, symbol, other, off_pct, qty)
        else:
            self.v.order(self._coid(), counterparty, other, price, qty, symbol)
        self.v.deliver()
        self.v.order(self._coid(), account, side, price, qty, symbol)

    @rule(maker=st.sampled_from([2, 4, 3]), taker=st.sampled_from([6, 8, 1]), symbol=SYMBOLS,
          off_pct=st.integers(-3, 3), qty=st.integers(1, 50), aggressor=SIDES)
    def stray_trade(self, maker, taker, symbol, off_pct, qty, aggressor):
        """A CrossEngine trade of orders this engine never sent (another system's), for
        accounts of this shard or not: booked without an order, the books still balance."""
        mark = self._mark(symbol)
        trade = c.CE_EVENT_STRUCTS[c.CE_TRADE].pack(
            c.CE_TRADE, self._coid(), 10**12 + self._coid(), 10**12 + self._coid(), maker, taker,
            max(1, mark + mark * off_pct // 100), qty, aggressor, 0, 0, 0, 0)
        self.v.apply(c.CE_EVENTS, c.ce_events(symbol, trade))

    @rule(account=ACCOUNTS, pick=st.integers(0, 10**6))
    def cancel(self, account, pick):
        orders = list(self.v.te.accounts[account].orders.values())
        orig = orders[pick % len(orders)].client_order_id if orders else pick
        self.v.apply(c.CANCEL, c.cancel(self._coid(), orig, account))

    @rule(account=ACCOUNTS, pick=st.integers(0, 10**6), dp=st.integers(-50, 50),
          dq=st.integers(-50, 50))
    def amend(self, account, pick, dp, dq):
        orders = list(self.v.te.accounts[account].orders.values())
        if not orders:
            return
        o = orders[pick % len(orders)]
        self.v.apply(c.AMEND, c.amend(self._coid(), o.client_order_id, account,
                                      max(1, o.price + dp), max(1, o.qty + dq)))

    @rule(account=st.sampled_from([2, 4, 6, 8, 1, 3]), symbol=SYMBOLS,
          side=st.sampled_from([0, c.BUY, c.SELL]), whole_book=st.booleans())
    def crossengine_mass_cancel(self, account, symbol, side, whole_book):
        """A CancelAll or MassCancel sent to the CrossEngine by another system (an operator):
        one event, which this engine resolves to its own orders."""
        self.v.ce_seq[symbol] += 1
        if whole_book:
            out = self.v.ces[symbol].apply(self.v.ce_seq[symbol], self.v.ts_ns, 36, b"")
        else:
            out = self.v.ces[symbol].apply(self.v.ce_seq[symbol], self.v.ts_ns, c.CE_CANCEL_ALL,
                                           c.CE_CANCEL_ALL_S.pack(account, side))
        self.v.pending.append(c.ce_events(symbol, out))

    @rule(account=ACCOUNTS, symbol=st.sampled_from([0, 1, 2]))
    def cancel_all(self, account, symbol):
        self.v.apply(c.CANCEL_ALL, c.cancel_all(self._coid(), account, symbol))

    @rule(n=st.integers(1, 10))
    def deliver(self, n):
        self.v.deliver(n)

    @rule(symbol=SYMBOLS, move_pct=st.integers(-15, 15), minutes=st.integers(0, 200))
    def mark(self, symbol, move_pct, minutes):
        mark = self._mark(symbol)
        self.v.mark(symbol, max(1, mark + mark * move_pct // 100),
                    dt_ns=minutes * 60 * SECOND + 1)

    @rule(symbol=SYMBOLS, premium=st.integers(-5_000, 5_000), interest=st.integers(-500, 500))
    def funding_inputs(self, symbol, premium, interest):
        self.v.apply(c.FUNDING_INPUTS, c.funding_inputs(symbol, premium, interest))

    @rule(hours=st.integers(0, 9))
    def time_passes(self, hours):
        self.v.apply(c.KIND_TICK, b"", dt_ns=hours * HOUR + 1)

    @rule(account=st.sampled_from([2, 4, 6, 8, 3, 10]), amount=st.integers(-10, 10**10),
          transfer_id=st.integers(1, 30), withdraw=st.booleans())
    def transfer(self, account, amount, transfer_id, withdraw):
        kind = c.WITHDRAW if withdraw else c.DEPOSIT
        self.v.apply(kind, c.transfer(transfer_id, account, amount))

    @rule(account=ACCOUNTS, symbol=SYMBOLS, lev=st.integers(0, 6_000))
    def set_leverage(self, account, symbol, lev):
        self.v.apply(c.SET_LEVERAGE, c.set_leverage(account, symbol, lev))

    @rule(account=ACCOUNTS, symbol=SYMBOLS, mode=st.integers(0, 2))
    def set_margin_mode(self, account, symbol, mode):
        self.v.apply(c.SET_MARGIN_MODE, c.set_margin_mode(account, symbol, mode))

    @rule(account=ACCOUNTS, symbol=SYMBOLS, amount=st.integers(-10**9, 10**9))
    def adjust_margin(self, account, symbol, amount):
        self.v.apply(c.ADJUST_MARGIN, c.adjust_margin(account, symbol, amount))

    @rule(account=ACCOUNTS, timeout=st.sampled_from([0, 1, 1_000, 3_600_000]))
    def dead_mans_switch(self, account, timeout):
        self.v.apply(c.DEAD_MANS_SWITCH, c.dead_mans_switch(account, timeout))

    @rule(adls=st.lists(st.tuples(st.sampled_from([2, 4, 6, 8, 1, 3, 10, c.LIQ_ACCOUNT]),
                                  SYMBOLS, st.integers(-400, 400), st.integers(-10, 10)),
                        max_size=3),
          other=st.sampled_from([b"", b"\x05" + bytes(9), b"\x01\x01\x00\x00\x00\x21\x00\x00\x00"]),
          kind=st.sampled_from([c.KIND_TICK, c.MARK_PRICE, 90]))
    def liq_record(self, adls, other, kind):
        """A LiqEngine output record (docs/liqengine.md §4): its Adls for this shard close
        positions against clearing (with liq_sources; without, the source is not the
        LiqEngine's and the record is an ordinary one of its kind)."""
        if kind != c.KIND_TICK and not self.v.te.liq_sources:
            return
        payload = other + b"".join(
            c.liq_adl(self._coid(), account, symbol, qty,
                      max(1, self._mark(symbol) + self._mark(symbol) * off_pct // 100))
            for account, symbol, qty, off_pct in adls)
        self.v.apply(kind, payload, source=LIQ_SRC)

    @rule(account=ACCOUNTS, symbol=SYMBOLS, share=st.integers(1, 12), off_pct=st.integers(-8, 8))
    def adl_of_a_position(self, account, symbol, share, off_pct):
        """An Adl that reduces the account's position (a share of it, or more than all of it)."""
        pos = self.v.te.accounts[account].positions.get(symbol)
        size = pos.size if pos is not None else 0
        mark = self._mark(symbol)
        qty = -(size * share // 8) or share
        self.v.apply(c.KIND_TICK, c.liq_adl(self._coid(), account, symbol, qty,
                                            max(1, mark + mark * off_pct // 100)),
                     source=LIQ_SRC)

    @rule(account=ACCOUNTS, symbol=SYMBOLS, side=SIDES, qty=st.integers(50, 400),
          move_pct=st.integers(3, 12), isolated=st.booleans())
    def squeeze(self, account, symbol, side, qty, move_pct, isolated):
        """A position at high leverage and a mark move against it: the maintenance check hands
        it off (to the liquidation account, or to clearing with liq_sources)."""
        if isolated:
            self.v.apply(c.SET_MARGIN_MODE, c.set_margin_mode(account, symbol, c.ISOLATED))
        self.trade(account, 3, symbol, side, 0, qty, 5_000)
        self.v.deliver()
        mark = self._mark(symbol)
        move = mark * move_pct // 100
        self.v.mark(symbol, max(1, mark - move if side == c.BUY else mark + move))

    @rule(kind=st.sampled_from(sorted(set(c.COMMAND_STRUCTS) - {c.CE_EVENTS}) + [2, 500]),
          data=st.binary(max_size=60))
    def garbage(self, kind, data):
        """Any bytes under any client kind give events, never an exception."""
        self.v.apply(kind, data)

    # -- sessions: the client's SeqNo is mostly the next one, sometimes a repeat or a jump ----

    def _seqno(self, key, how):
        sess = self.v.te.sessions.get(key)
        nxt = sess.next_expected if sess is not None else 1
        return {"next": nxt, "repeat": max(1, nxt - 1), "jump": nxt + 2}[how]

    @rule(key=SESSIONS, conn=st.integers(0, 3), gw=st.integers(0, 1),
          cod=st.integers(0, 2), cod_ms=st.sampled_from([0, 1, 500, 60_000]))
    def session_logon(self, key, conn, gw, cod, cod_ms):
        user, sid = key
        accounts = USERS[user]
        self.v.apply(c.SESSION_LOGON, c.session_logon(user, sid, gw << 48 | conn, accounts[0],
                                                      accounts, cod, cod_ms))

    @rule(key=SESSIONS, conn=st.integers(0, 3), gw=st.integers(0, 1),
          reason=st.sampled_from([0, 0, 1, 1, 1, 2]))
    def session_end(self, key, conn, gw, reason):
        self.v.apply(c.SESSION_END, c.session_end(key[0], key[1], gw << 48 | conn, reason))

    @rule(gw=st.integers(0, 1))
    def gateway_start(self, gw):
        self.v.apply(c.GATEWAY_START, c.gateway_start(gw))

    @rule(key=SESSIONS, how=st.sampled_from(["next"] * 6 + ["repeat", "jump"]),
          symbol=st.sampled_from([1, 2] * 5 + [3]),
          side=st.sampled_from([b"1", b"2"] * 5 + [b"3"]), off_pct=st.integers(-4, 4),
          qty=st.integers(0, 300), which=st.integers(0, 2),
          ord_type=st.sampled_from([b"2"] * 5 + [b"1"]),
          tif=st.sampled_from([b"1"] * 6 + [b"3", b"0"]), flags=st.sampled_from([0] * 5 + [2]),
          reuse=st.sampled_from([False] * 9 + [True, "null"]),
          gflags=st.sampled_from([0] * 10 + [1, 2]), odd=st.sampled_from([False] * 9 + [True]))
    def session_order(self, key, how, symbol, side, off_pct, qty, which, ord_type, tif, flags,
                      reuse, gflags, odd):
        mark = self.v.te.marks.get(symbol, 10_000)
        price = max(1, mark + mark * off_pct // 100) * TICK + (1 if odd else 0)
        account = [0, *USERS[key[0]]][which]
        coid = NULL if reuse == "null" else self.coid if reuse and self.coid else self._coid()
        block = P_NOS.pack(self._seqno(key, how), 0, coid,
                           c.P_NULL_PRICE if ord_type == b"1" else price, qty, symbol, account,
                           side, ord_type, tif, flags)
        self.v.apply(c.CLIENT_MESSAGE, c.client_message(key[0], key[1], 100, block, gflags))

    def _session_order_ids(self, key):
        return [(o.client_order_id, o.order_id) for o in self.v.te.orders.values()
                if o.account in USERS[key[0]]]

    @rule(key=SESSIONS, pick=st.integers(0, 10**6), by_id=st.booleans(),
          replace=st.booleans(), dp=st.integers(-30, 30), qty=st.integers(0, 300),
          wrong=st.sampled_from([None] * 8 + ["symbol", "side", "null_clordid"]))
    def session_cancel_or_replace(self, key, pick, by_id, replace, dp, qty, wrong):
        ids = self._session_order_ids(key) or [(pick, pick)]
        coid, oid = ids[pick % len(ids)]
        target = self.v.te.orders.get(oid)
        # the order's SecurityID and Side (refused as an unknown order when they differ)
        symbol, side = (target.symbol, target.side) if target is not None else (1, 0x31)
        if wrong == "symbol":
            symbol = 3 - symbol
        elif wrong == "side":
            side = 0x33 - side
        new_coid = NULL if wrong == "null_clordid" else self._coid()
        orig, oid = (NULL, oid) if by_id else (coid, NULL)
        seq = self._seqno(key, "next")
        if replace:
            o = self.v.te.orders.get(oid if by_id else -1)
            price = max(1, (o.price if o is not None else 10_000) + dp) * TICK
            block = P_OCRR.pack(seq, 0, new_coid, orig, oid, price, qty, symbol, bytes([side]),
                                b"2", b"1", 0)
            self.v.apply(c.CLIENT_MESSAGE, c.client_message(key[0], key[1], 102, block))
        else:
            block = P_OCR.pack(seq, 0, new_coid, orig, oid, symbol, bytes([side]), 0)
            self.v.apply(c.CLIENT_MESSAGE, c.client_message(key[0], key[1], 101, block))

    @rule(key=SESSIONS, symbol=st.sampled_from([1, 2, 9]), mtype=st.sampled_from([b"1", b"7",
                                                                                   b"9"]),
          side=st.sampled_from([b"0", b"1", b"2"]), template=st.sampled_from([103, 103, 150]))
    def session_mass_cancel(self, key, symbol, mtype, side, template):
        block = P_OMCR.pack(self._seqno(key, "next"), 0, self._coid(), symbol, mtype, side, 0)
        self.v.apply(c.CLIENT_MESSAGE, c.client_message(key[0], key[1], template, block))

    @rule(kind=st.sampled_from(c.SESSION_KINDS), data=st.binary(max_size=80))
    def session_garbage(self, kind, data):
        self.v.apply(kind, data)

    @rule()
    def snapshot_and_carry_on_from_it(self):
        te = self.v.te
        restored = TradingEngine.restore(te.snapshot())
        assert restored.state_hash() == te.state_hash()
        assert all(s.state_hash() == te.state_hash() for s in self.v.shadows)
        self.v.set_budget(restored)
        self.v.te = restored

    @invariant()
    def books_balance(self):
        # the venue checks after every record; this covers the state between rules too
        if hasattr(self, "v"):
            self.v.te.check_invariants()


# SEQEX_EXAMPLES=3000 for a long run (the default keeps the suite fast)
TradingFlow.TestCase.settings = settings(max_examples=int(os.environ.get("SEQEX_EXAMPLES", "60")),
                                         stateful_step_count=50,
                                         deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
test_trading_flow = TradingFlow.TestCase
