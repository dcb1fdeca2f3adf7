"""The TradingEngine: a deterministic state machine for one shard of accounts (DESIGN.md §4-5).

Contract. ``apply(seq, ts_ns, kind, payload) -> bytes`` takes one record of the shard's in
stream (client requests, CrossEngine results, mark prices, funding inputs, transfers, ticks;
see tradingengine/codec.py) and returns the events it caused; ``apply_frame`` does the same for
a whole mq frame, one output record per input record. No clock (time is the record's
``ts_ns``), no I/O, no randomness, integers only, and every iteration whose order reaches the
output is over sorted keys. Business rejections are events with 2xxx codes; a broken invariant
(the audit above all) raises ``EngineHalted`` and the process dies, as DESIGN.md §4 wants.

What it keeps, per account (``account % n_shards == shard``): the wallet balance, per symbol a
position (signed size, signed entry cost, margin, leverage, cross or isolated mode), open and
conditional orders with the margin each reserves, and a dead-man's switch. Per shard: marks,
last prices, funding state, the fee pool, the dust account, deposits and withdrawals, the
transfer ids seen, and two system accounts: *clearing*, which holds the other side of every
trade whose counterparty lives in another shard (so each shard balances on its own), and
*liquidation*, which takes over positions handed to the LiqEngine and covers deficits.

Bounded output. Every output must fit one record (mq MAX_PAYLOAD). A command's own work is
bounded (an account holds at most MAX_OPEN_ORDERS orders; a CrossEngine record carries at most
CE_MAX_FILLS matching steps). Work that fans out over a whole symbol or shard (triggered
orders, the maintenance check, funding, a book-wide mass cancel, a session's mass cancel over
its accounts, reduce-only cuts, expired dead-man's switches) runs as *sweeps*: a queue in
the state, worked through unit by unit (one account or one order) while the record's output is
under OUTPUT_BUDGET, and resumed at the next record where it stopped. At least one unit runs
per record, so a sweep always ends.
``worst_case_output`` sums the bounds (session messages included); the module refuses to
import if it exceeds OUTPUT_LIMIT, seven eighths of MAX_PAYLOAD.

The audit (after every mark price and every funding): the sum over all accounts, the system
ones included, of balance plus position value at mark minus cost, plus the fee pool and the
dust, equals deposits minus withdrawals, to the minor unit; and every symbol's positions sum
to zero. The formulas are in tradingengine/margin.py and docs/tradingengine.md.

Build. This file is plain Python, and Cython compiles it (setup.py) with engine.pxd, which
makes Order, Position, Account and TradingEngine ``cdef class``es with typed attributes; the
annotations of the hot locals (``pos: Position``) type them too. Money stays in Python ints,
so nothing can overflow. The same source run by the interpreter is the engine the determinism
tests compare the compiled one with; imported as ``tradingengine.engine`` it must be compiled.
"""
from __future__ import annotations

import hashlib
import struct
from bisect import bisect_left, insort
from collections import deque

import msgpack

from mq.record import MAX_PAYLOAD, decode, encode
from mq.sources import OPERATOR_SOURCE, OPERATOR_SOURCE_MIN

# The codec's names as module globals: Cython reads a global through a cached dict lookup,
# but `codec.NAME` as a module attribute lookup each time (~230 instructions, 31 times per
# record of the bench_e2e flow). Listed compactly, not one a line.
# isort: off
from tradingengine.codec import (
    ACCOUNT, ADJUST_MARGIN, ADJUST_MARGIN_S, ADL_APPLIED, AMEND, AMEND_S, BUY, BY_LAST, BY_MARK,
    CANCEL, CANCEL_ALL, CANCEL_ALL_S, CANCEL_REJECTED, CANCEL_S, CE_ACCEPTED, CE_AMEND, CE_AMENDED,
    CE_AMEND_S, CE_CANCEL, CE_CANCELLED, CE_CANCEL_S, CE_COMMAND, CE_EVENTS, CE_EVENTS_S,
    CE_EVENT_STRUCTS, CE_EXPIRED, CE_FOK_NOT_FILLABLE, CE_MASS_CANCELLED, CE_MAX_FILLS,
    CE_NEW_ORDER, CE_NEW_ORDER_S, CE_UNKNOWN_ORDER,
    CE_REJECTED, CE_SCOPE_BOOK, CE_TRADE, CLIENT_MESSAGE, CLIENT_MESSAGE_S, CODES,
    COD_ON_DISCONNECT, COD_ON_DISCONNECT_OR_LOGOUT, COMMAND_STRUCTS, CROSS, DAY, DEAD_MANS_SWITCH,
    DEAD_MANS_SWITCH_FIRED, DEAD_MANS_SWITCH_S, DEFICIT_COVERED, DEPOSIT, END_DISCONNECT,
    END_FINALIZE, END_LOGOUT, EVENT_STRUCTS, EXEC_CANCELED, EXEC_EXPIRED, EXEC_NEW, EXEC_REJECTED,
    EXEC_REPLACED, EXEC_REPORT, EXEC_TRADE, EXEC_TRIGGERED, FLAG_POST_ONLY, FLAG_REDUCE_ONLY, FOK,
    FUNDING, FUNDING_INPUTS, FUNDING_INPUTS_S, FUNDING_SETTLED, GATEWAY_START, GATEWAY_START_S,
    GTC, GW_SHED, GW_THROTTLED, IOC, ISOLATED, KIND_TICK, LIMIT, LIQUIDATION, LIQ_ACCOUNT, LIQ_ADL, LIQ_ADL_S,
    LIQ_CE_COMMAND, LIQ_EVENT_SIZES, MARKET, MARK_PRICE, MARK_PRICE_S, MAX_SESSION_ACCOUNTS,
    NEW_ORDER, NEW_ORDER_S, POSITION, P_BLOCK_SIZES, P_BUSINESS_REJECT, P_CANCEL, P_CANCEL_REJECT,
    P_EXEC_REPORT, P_FLAG_POST_ONLY, P_MASS_CANCEL, P_MASS_CANCEL_REPORT, P_NEW_ORDER,
    P_NOT_APPLIED, P_NULL_ID, P_NULL_PRICE, P_REPLACE, P_STRUCTS, REASON_CANCEL_ON_DISCONNECT,
    REASON_CLIENT, REASON_DEAD_MANS_SWITCH, REASON_END_OF_DAY, REASON_IOC_REMAINDER,
    REASON_LIQUIDATION, REASON_MASS_CANCEL,
    REASON_MATCH_LIMIT, REASON_REDUCE_ONLY, REQUEST_REJECTED, RESERVED_ACCOUNT_MIN, ROUTE_LIQ,
    SELL, SESSION_BEYOND, SESSION_BOUND_ELSEWHERE, SESSION_END, SESSION_END_S, SESSION_FINALIZED,
    SESSION_LIMIT, SESSION_LOGON, SESSION_LOGON_S, SESSION_MESSAGE, SESSION_NEW, SESSION_RESUMED,
    SESSION_STATE, SET_LEVERAGE, SET_LEVERAGE_S, SET_MARGIN_MODE, SET_MARGIN_MODE_S,
    STATUS_CANCELED, STATUS_EXPIRED, STATUS_FILLED, STATUS_NEW, STATUS_PARTIAL, STATUS_REJECTED,
    STATUS_UNTRIGGERED, TRANSFER, TRANSFER_S, TRIGGER_NONE, TRIGGER_STOP, TRIGGER_TAKE_PROFIT,
    WITHDRAW,
)
# isort: on
from tradingengine.margin import (
    PPM,
    X100,
    ContractSpec,
    Tier,
    bankruptcy_price,
    cost_removed,
    fee,
    funding_payment,
    funding_rate,
    liquidation_price,
    maintenance,
    order_cost,
    position_margin,
)

try:
    import cython
    _COMPILED = cython.compiled
except ImportError:   # no Cython at run time: this is the interpreted source
    _COMPILED = False
if __name__ == "tradingengine.engine" and not _COMPILED:
    raise ImportError("tradingengine.engine is not compiled: build it with `pip install -e .` "
                      "(or `python setup.py build_ext --inplace`)")

OWED_ALL, OWED_CROSS, OWED_OWN = 0, 1, 2   # _funding_owed: which part of what is owed
SELF_TRADE_MODES = (0, 1, 2, 3)   # the CrossEngine's STP modes this engine sends
LOGON_HOLD_NS = 2_000_000_000   # the longest a resume's SessionState waits for answers (§9)
SNAPSHOT_VERSION = 10         # 10 with liq_sources configured; 9 without
SNAPSHOT_VERSION_NO_LIQ = 9
# 9 / 10: a session keeps its finished orders (a cancel of one is "too late", not "unknown").
# An older snapshot (5 / 6; 7 / 8 of several shards) in which a session has used a ClOrdID is
# refused: its sessions' finished orders are not in it, so a replica restored from it would
# answer such a cancel otherwise than one that replayed; its replica replays its log instead.
MAX_MONEY = 1 << 62           # a balance or transfer beyond this is refused (int64 on the wire)
MAX_SHARD_MONEY = MAX_MONEY >> 6   # a shard's deposits less withdrawals: 64 shards together
#                                    stay below 2**62, so no balance, pool or fund leaves int64
MAX_OPEN_ORDERS = 200         # per account, conditional ones included
AUDIT_INTERVAL_NS = 60_000_000_000  # the mark path's audit, at most once a minute of time
MAX_ADLS_PER_RECORD = 4       # Adls for this shard in one LiqEngine record (docs/liqengine.md)
OUTPUT_BUDGET = 128 << 10     # bytes of output after which a record defers sweep units
TRANSFER_ID_WINDOW_NS = 24 * 3600 * 10**9   # a transfer id is remembered this long (ts_ns)
DEFAULT_LEVERAGE_X100 = 1_000
CLEARING_ID = -1              # system accounts: never a u32, so never a client's
LIQUIDATION_ID = -2
FINALIZED_TTL_NS = 7 * 24 * 3600 * 10**9    # a finalized session id is remembered this long
MAX_SESSION_CLORDIDS = 1_000_000            # ClOrdIDs a session may use; then BusinessReject 0
MAX_SESSION_DONE = 100_000                  # finished orders a session keeps (its latest)
MAX_USER_SESSIONS = 1000                    # open sessions of a user; then SessionState 4

UNTRIGGERED, PENDING_NEW, OPEN = 0, 1, 2
NO_PENDING, PENDING_CANCEL, PENDING_AMEND = 0, 1, 2
# sweeps: [kind, symbol, cursor, ...]; the cursor is the next account (or order) id to visit
SWEEP_TRIGGER = 1        # [1, symbol, next order id, by, price, last order id]
SWEEP_MAINTENANCE = 2    # [2, symbol, next account]
SWEEP_FUNDING = 3        # [3, symbol, next entry, rate, mark, paid, received, [[account,
                         #  size at the boundary], ...]] (the system accounts last)
SWEEP_MASS_CANCELLED = 4  # [4, symbol, next CrossEngine id, last CrossEngine id, reason]
SWEEP_REDUCE_ONLY = 5    # [5, symbol, account]
SWEEP_DAY_END = 6        # [6, next index, [order ids of the Day orders at the day's end]]
SWEEP_CHECK = 8          # [8, symbol, account]: a fill left it short or at a loss
SWEEP_SESSION_MASS_CANCEL = 7  # [7, symbol (0 all), next index, user, session id, side (0
                               #  both), ClOrdID, SecurityID asked, request type, cancelled so
                               #  far, [the session's accounts but its default one], the last
                               #  order id at the request (later orders are not its own)]
DAY_NS = 86_400 * 10**9  # a trading day: a UTC day of sequenced time (LogonAck's TradingDate)

_ER = EVENT_STRUCTS[EXEC_REPORT].pack
_CE_CMD = EVENT_STRUCTS[CE_COMMAND].pack
_CE_CANCEL = CE_CANCEL_S.pack
_CE_AMEND = CE_AMEND_S.pack
_NEW_ORDER = NEW_ORDER_S.unpack_from
# per CrossEngine event type its size and its unpack, and the hot unpacks and lookups bound
# once: a method of an untyped global is an attribute lookup at every call
_CE_SIZE = {k: s.size for k, s in CE_EVENT_STRUCTS.items()}.get
_CE_UNPACK = {k: s.unpack_from for k, s in CE_EVENT_STRUCTS.items()}
_CLIENT_MESSAGE = CLIENT_MESSAGE_S.unpack_from
_CLIENT_MESSAGE_SIZE = CLIENT_MESSAGE_S.size
_P_BLOCK_SIZE = P_BLOCK_SIZES.get
_CE_TRADE = CE_EVENT_STRUCTS[CE_TRADE].unpack_from
_CE_CMD_SIZE = EVENT_STRUCTS[CE_COMMAND].size
_CE_NEW_SIZE = CE_NEW_ORDER_S.size
_PACK = {k: s.pack for k, s in EVENT_STRUCTS.items()}
_CODE = CODES
# the CrossEngineCommand header and a NewOrder in one struct: the pre-trade check's output
_CE_NEW_CMD = struct.Struct("<BIHH" + CE_NEW_ORDER_S.format[1:]).pack
# enumerations as module constants: the hot paths read them without an attribute lookup
REDUCE_ONLY, POST_ONLY = FLAG_REDUCE_ONLY, FLAG_POST_ONLY
_LIQ_SIZES = LIQ_EVENT_SIZES
_LIQ_ADL = LIQ_ADL_S.unpack_from
_U16 = struct.Struct("<H").unpack_from
_SIZES = {k: s.size for k, s in COMMAND_STRUCTS.items()}
_SMSG = EVENT_STRUCTS[SESSION_MESSAGE].pack
_P = {t: s.pack for t, s in P_STRUCTS.items()}
_P_NOS = P_STRUCTS[P_NEW_ORDER].unpack
_P_CANCEL = P_STRUCTS[P_CANCEL].unpack
_P_REPLACE = P_STRUCTS[P_REPLACE].unpack
_P_MASS = P_STRUCTS[P_MASS_CANCEL].unpack
_U64 = struct.Struct("<Q").unpack_from
_P_EXEC_TYPES = (EXEC_NEW, EXEC_CANCELED, EXEC_REPLACED, EXEC_REJECTED, EXEC_EXPIRED,
                 EXEC_TRADE)


def worst_case_output() -> dict[str, int]:
    """The largest output payload, in bytes, of one record, from the bounds (the module doc).

    ``units``: the largest output of one unit of a sweep (or one expired dead-man's switch),
    which is the liquidation of an account at MAX_OPEN_ORDERS (every order a conditional one,
    cancelled with an execution report each). ``commands``: the largest output of a command's
    own work; a CrossEngine record is the largest, CE_MAX_FILLS steps that each report a fill
    (or a self-trade cancel) to both sides and cover a deficit for each, the taker's own
    acceptance and expiry, and a status pair per account it touched. ``record``: due timers
    and sweeps before the command run up to OUTPUT_BUDGET plus one unit, the command adds its
    own, and one more unit may follow.
    """
    size = {k: s.size for k, s in EVENT_STRUCTS.items()}
    # an order a session entered reports to that session too (a SessionMessage with a
    # PROTOCOL.md ExecutionReport), and a cancel's or replace's answer to the session that
    # asked, if that is another: an engine report is at most 88 + 2 x 127 bytes
    smsg = size[SESSION_MESSAGE] + P_BLOCK_SIZES[P_EXEC_REPORT]
    er = size[EXEC_REPORT] + 2 * smsg
    fill = size[EXEC_REPORT] + smsg
    cmd = size[CE_COMMAND]
    cancel_one = max(er, cmd + CE_CANCEL_S.size)
    units = {
        "liquidation": MAX_OPEN_ORDERS * cancel_one + size[LIQUIDATION]
        + size[DEFICIT_COVERED] + size[POSITION] + size[ACCOUNT],
        "dead_mans_switch": MAX_OPEN_ORDERS * cancel_one + size[DEAD_MANS_SWITCH_FIRED],
        "cancel_on_disconnect": MAX_OPEN_ORDERS * cancel_one,   # one account of a session
        "funding": size[FUNDING] + size[DEFICIT_COVERED] + size[POSITION] + size[ACCOUNT]
        + size[FUNDING_SETTLED],
        "trigger": er + max(er, cmd + CE_NEW_ORDER_S.size),
        "mass_cancelled": er,
        # one account of a session's mass cancel, and the report after the last one
        "session_mass_cancel": MAX_OPEN_ORDERS * cancel_one + size[SESSION_MESSAGE]
        + P_BLOCK_SIZES[P_MASS_CANCEL_REPORT],
        "reduce_only": MAX_OPEN_ORDERS * (cmd + CE_AMEND_S.size),
        # an account a fill left short or at a loss: its orders cancelled once (the
        # shortfall's, then the maintenance check's), and a handoff
        "check": MAX_OPEN_ORDERS * cancel_one + size[LIQUIDATION] + size[DEFICIT_COVERED]
        + size[POSITION] + size[ACCOUNT],
    }
    fills = CE_MAX_FILLS
    commands = {
        "cancel_all": MAX_OPEN_ORDERS * cancel_one,
        # the answer to one record of this engine: the fills of its takers, which share
        # CE_MAX_FILLS (the CrossEngine's fill_cap: one record's takers together), or the
        # reports of the cancels, amends and triggered orders a record sent (its sweeps count
        # them, ANSWER_RESERVE and TAKER_RESERVE)
        "ce_events": max(fills * (2 * fill + 2 * size[DEFICIT_COVERED]) + 2 * er
                         + (fills + 1) * (size[POSITION] + size[ACCOUNT]),
                         OUTPUT_BUDGET + 2 * max(units.values()) + MAX_OPEN_ORDERS * er),
        "other": 2 * er + size[POSITION] + size[ACCOUNT] + size[TRANSFER],
        "adl": MAX_ADLS_PER_RECORD * (MAX_OPEN_ORDERS * cancel_one + size[ADL_APPLIED]
                                      + size[DEFICIT_COVERED] + size[POSITION]
                                      + size[ACCOUNT]),
    }
    unit = max(units.values())
    return {"unit": unit, "command": max(commands.values()),
            "record": OUTPUT_BUDGET + unit + max(commands.values()) + unit}


# What reporting the CrossEngine's answer to one cancel or amend costs, beyond the command: an
# execution report and up to two session messages. The CrossEngine answers a whole record of
# this engine with one record, so a sweep that cancels or amends counts the answer against
# OUTPUT_BUDGET with the command (added to _size as it sends): the answer record is then
# bounded as this record is (worst_case_output's "ce_events"), whatever the number of accounts
# a session's cancel-on-disconnect or a liquidation cascade covers.
_REPORT_COST = (EVENT_STRUCTS[EXEC_REPORT].size
                + 2 * (EVENT_STRUCTS[SESSION_MESSAGE].size + P_BLOCK_SIZES[P_EXEC_REPORT]))
ANSWER_RESERVE = _REPORT_COST - EVENT_STRUCTS[CE_COMMAND].size - CE_CANCEL_S.size

# What reporting the CrossEngine's answer to a triggered order costs beyond its command, fills
# aside (they are bounded per record, CE_MAX_FILLS): its acceptance and its expiry, each an
# execution report with up to two session messages. The trigger sweep counts it as it sends.
TAKER_RESERVE = 2 * _REPORT_COST - EVENT_STRUCTS[CE_COMMAND].size - CE_NEW_ORDER_S.size

# the margin left under MAX_PAYLOAD: an eighth (it was half before session messages doubled
# the size of a fill's reports; docs/order-path.md notes it)
OUTPUT_LIMIT = MAX_PAYLOAD * 7 // 8
if worst_case_output()["record"] > OUTPUT_LIMIT:
    raise ImportError(f"tradingengine: one record can output {worst_case_output()['record']} "
                      f"bytes, over {OUTPUT_LIMIT} of {MAX_PAYLOAD}: lower the bounds")


class EngineHalted(RuntimeError):
    """A broken invariant: the engine must not go on (the audit above all)."""


class Order:
    __slots__ = ("order_id", "account", "symbol", "client_order_id", "side", "ord_type", "tif",
                 "flags", "price", "qty", "leaves", "cum", "margin", "state", "pending",
                 "trigger_price", "trigger_kind", "trigger_by", "reason", "ce_id", "sess", "cxl",
                 "rpl", "amend_price", "amend_qty")

    def __init__(self, order_id: int, account: int, symbol: int, client_order_id: int,
                 side: int, ord_type: int, tif: int, flags: int, price: int, qty: int) -> None:
        self.order_id = order_id          # the engine's id; the CrossEngine's client_order_id
        self.account = account
        self.symbol = symbol
        self.client_order_id = client_order_id
        self.side = side                  # BUY / SELL
        self.ord_type = ord_type
        self.tif = tif
        self.flags = flags
        self.price = price                # ticks; a market order's is its band edge
        self.qty = qty                    # total lots
        self.leaves = qty                 # lots still open
        self.cum = 0                      # lots filled
        self.margin = 0                   # minor units reserved now
        self.state = PENDING_NEW
        self.pending = NO_PENDING         # a cancel or amend sent and not yet answered
        self.trigger_price = 0
        self.trigger_kind = TRIGGER_NONE
        self.trigger_by = BY_MARK
        self.reason = 0                   # why the engine sent a cancel (its report says so)
        self.ce_id = 0                    # the CrossEngine's order id, once it accepted
        self.sess = None                  # (user, session_id) that entered it, or None
        self.cxl = None                   # (ClOrdID, session key) of a session's pending cancel
        self.rpl = None                   # (ClOrdID, session key) of a session's pending replace
        self.amend_price = 0              # the price of an amend in flight (0: none)
        self.amend_qty = 0                # the total qty of an amend in flight (0: none)

    @property
    def amend_leaves(self) -> int:
        """The leaves the order has once the amend in flight is applied (its leaves now with
        none; 0 for one at or below what has filled, which the CrossEngine refuses). Fills in
        between take as many lots off both."""
        if not self.amend_qty:
            return self.leaves
        after = self.amend_qty - self.cum
        return after if after > 0 else 0

    @property
    def amend_grow(self) -> int:
        """The lots by which the amend in flight grows the leaves: counted in the position's
        leaves on its side from the moment it is sent (the orders checked after it would
        otherwise see the old leaves ahead of them)."""
        grow = self.amend_leaves - self.leaves
        return grow if grow > 0 else 0

    def row(self) -> list:
        return [self.order_id, self.account, self.symbol, self.client_order_id, self.side,
                self.ord_type, self.tif, self.flags, self.price, self.qty, self.leaves,
                self.cum, self.margin, self.state, self.pending, self.trigger_price,
                self.trigger_kind, self.trigger_by, self.reason, self.ce_id,
                None if self.sess is None else list(self.sess),
                None if self.cxl is None else [self.cxl[0], *self.cxl[1]],
                None if self.rpl is None else [self.rpl[0], *self.rpl[1]],
                # an amend's price while it is in flight (a row of 23 without one: the
                # snapshots of orders with no amend in flight are as before), and the lots by
                # which it grows the leaves (derived, kept for the format) and its total qty
                *([self.amend_price, self.amend_grow, self.amend_qty] if self.amend_price
                  else [])]

    @classmethod
    def from_row(cls, row: list) -> Order:
        o = cls(*row[:10])
        (o.leaves, o.cum, o.margin, o.state, o.pending, o.trigger_price, o.trigger_kind,
         o.trigger_by, o.reason, o.ce_id) = row[10:20]
        if len(row) > 20:
            sess, cxl, rpl = row[20:23]
            o.sess = None if sess is None else (sess[0], sess[1])
            o.cxl = None if cxl is None else (cxl[0], (cxl[1], cxl[2]))
            o.rpl = None if rpl is None else (rpl[0], (rpl[1], rpl[2]))
        if len(row) > 23:
            o.amend_price = row[23]
        if len(row) > 25:
            o.amend_qty = row[25]
        return o


_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def _to_i64(value: int) -> int:
    """A derived figure as an int64 event field carries it: at the edge when beyond."""
    return _I64_MIN if value < _I64_MIN else _I64_MAX if value > _I64_MAX else value


class Session:
    """A PROTOCOL.md session, (user, session_id): its sequence numbers, its connection and
    cancel-on-disconnect settings, and the ClOrdIDs it has used."""
    __slots__ = ("user", "session_id", "conn_id", "bound", "default_account", "accounts",
                 "cod_mode", "cod_timeout_ms", "next_expected", "next_seq", "cod_deadline",
                 "cod_cursor", "clordids", "done", "finished", "held")

    def __init__(self, user: int, session_id: int) -> None:
        self.user = user
        self.session_id = session_id
        self.conn_id = 0
        self.bound = False
        self.default_account = 0
        self.accounts: list[int] = []
        self.cod_mode = 0
        self.cod_timeout_ms = 0
        self.next_expected = 1        # the next client SeqNo it applies
        self.next_seq = 1             # the server SeqNo of its next message
        self.cod_deadline = 0         # ts_ns at which cancel-on-disconnect fires (0: not armed)
        self.cod_cursor = 0           # the next of its accounts a firing one cancels in
        self.clordids: dict[int, None] = {}
        # the orders it entered that are finished, in the order they finished: OrderID ->
        # (last ClOrdID, OrdStatus, SecurityID, Side, Account)
        self.done: dict[int, tuple] = {}
        # a ClOrdID -> the last of done to finish with it (derived from done)
        self.finished: dict[int, int] = {}
        # a resume's SessionState held until its orders in flight are answered (§9):
        # [conn_id, status, ts_ns held from], or None
        self.held = None

    def row(self) -> list:
        row = [self.user, self.session_id, self.conn_id, self.bound, self.default_account,
               list(self.accounts), self.cod_mode, self.cod_timeout_ms,
               # 2^64 (after SeqNo 2^64 - 1) does not fit msgpack: 0, which is never a value
               self.next_expected if self.next_expected <= _U64_MAX else 0, self.next_seq,
               self.cod_deadline, self.cod_cursor, sorted(self.clordids),
               [[i, *d] for i, d in self.done.items()]]     # in the order they finished
        if self.held is not None:
            row.append(list(self.held))   # (absent otherwise: older snapshots read the same)
        return row

    @classmethod
    def from_row(cls, row: list) -> Session:
        s = cls(row[0], row[1])
        (s.conn_id, s.bound, s.default_account, s.accounts, s.cod_mode, s.cod_timeout_ms,
         s.next_expected, s.next_seq, s.cod_deadline, s.cod_cursor, clordids, done) = row[2:14]
        if len(row) > 14:
            s.held = list(row[14])
        s.accounts = list(s.accounts)
        s.clordids = dict.fromkeys(clordids)
        for order_id, coid, status, symbol, side, account in done:
            s.done[order_id] = (coid, status, symbol, side, account)
            s.finished[coid] = order_id
        if s.next_expected == 0:
            s.next_expected = _U64_MAX + 1
        return s


class Position:
    __slots__ = ("size", "cost", "margin", "extra", "leverage_x100", "mode", "realised",
                 "buy_leaves", "sell_leaves", "reduce_only")

    def __init__(self, leverage_x100: int) -> None:
        self.size = 0              # lots, > 0 long, < 0 short
        self.cost = 0              # signed entry value, minor units
        self.margin = 0            # held for the position: requirement + extra
        self.extra = 0             # isolated margin added by the trader, less the funding
                                   # the margin paid (>= minus the requirement)
        self.leverage_x100 = leverage_x100
        self.mode = CROSS
        self.realised = 0          # lifetime realised PnL (fees and funding apart)
        self.buy_leaves = 0        # lots of live (not conditional) buy orders: derived
        self.sell_leaves = 0
        self.reduce_only = 0       # live reduce-only orders: derived

    def row(self) -> list:
        return [self.size, self.cost, self.margin, self.extra, self.leverage_x100, self.mode,
                self.realised]


def _count_down(counts: dict, key) -> None:
    """One fewer of key in a dict of counts; the key goes at zero."""
    n = counts[key] - 1
    if n:
        counts[key] = n
    else:
        del counts[key]


def _new_position(spec) -> Position:
    """A flat position row at the contract's default leverage."""
    return Position(min(DEFAULT_LEVERAGE_X100, spec.tiers[0].max_leverage_x100))


def _waits(o, key: tuple) -> bool:
    """Whether order o waits for the CrossEngine's answer to a request of session key."""
    return (o.sess == key and o.state == PENDING_NEW
            or o.cxl is not None and o.cxl[1] == key
            or o.rpl is not None and o.rpl[1] == key)


def _index_client(acct, coid: int, o) -> None:
    """Enter live order o under (coid, its session)."""
    acct.by_client[coid, o.sess] = o


def _unindex_client(acct, key: tuple) -> None:
    del acct.by_client[key]


def _clordid_taken(acct, coid: int, sess) -> bool:
    """Whether (coid, sess) is an open order's key, or the key a replace in flight will give."""
    key = (coid, sess)
    return key in acct.by_client or bool(acct.replacing) and key in acct.replacing


class Account:
    """A wallet with its own ledger: at every moment
    balance == transferred - fees_paid - funding_paid - liquidated + covered + realised PnL
    of its positions, which lets a failed audit name the accounts whose books are off."""
    __slots__ = ("account_id", "balance", "order_margin", "position_margin", "positions",
                 "orders", "by_client", "replacing", "dms_timeout_ms", "dms_deadline",
                 "transferred",
                 "fees_paid", "funding_paid", "liquidated", "covered")

    def __init__(self, account_id: int) -> None:
        self.account_id = account_id
        self.balance = 0                        # wallet: deposits - withdrawals + PnL - fees ...
        self.transferred = 0                    # deposits - withdrawals
        self.fees_paid = 0                      # trading fees (rebates negative)
        self.funding_paid = 0                   # funding paid (received negative)
        self.liquidated = 0                     # margin residue moved to liquidation (the
                                                # liquidation account's own is what it received,
                                                # negative)
        self.covered = 0                        # deficits the liquidation account covered
                                                # (its own: what it paid, negative)
        self.order_margin = 0                   # sum of its orders' reservations: derived
        self.position_margin = 0                # sum of its positions' margins: derived
        self.positions: dict[int, Position] = {}
        self.orders: dict[int, Order] = {}      # by order id (ascending: ids only grow)
        # live orders by (client order id, the session that entered it or None): PROTOCOL.md
        # §4.3's guard is per session, so two sessions on one account may use one ClOrdID
        self.by_client: dict[tuple, Order] = {}
        # the (ClOrdID, session) keys that the session replaces in flight will give their
        # orders when the CrossEngine confirms them: taken already (a new order or another
        # replace by one would share the key with the replaced order). Derived from the orders'
        # rpl; the replacing order by key.
        self.replacing: dict[tuple, Order] = {}
        self.dms_timeout_ms = 0
        self.dms_deadline = 0                   # ts_ns at which every order is cancelled


_BLOCK = 512     # keys per block of a _SortedInts (split at twice that)


class _SortedInts:
    """A sorted multiset-free list of ints in blocks (insert and remove move one block, not
    the whole list): the liquidation-trigger index of one symbol and side. Derived state."""

    def __init__(self) -> None:
        self.blocks: list = []    # sorted lists, each non-empty, ascending across blocks
        self.maxes: list = []     # the last key of each block

    def __len__(self) -> int:
        return sum(len(b) for b in self.blocks)

    def add(self, key: int) -> None:
        maxes = self.maxes
        if not maxes:
            self.blocks.append([key])
            maxes.append(key)
            return
        i = bisect_left(maxes, key)
        if i == len(maxes):
            i -= 1
            block = self.blocks[i]
            block.append(key)
            maxes[i] = key
        else:
            block = self.blocks[i]
            insort(block, key)
        if len(block) > 2 * _BLOCK:
            half = block[_BLOCK:]
            del block[_BLOCK:]
            self.blocks.insert(i + 1, half)
            maxes[i] = block[len(block) - 1]
            maxes.insert(i + 1, half[len(half) - 1])

    def remove(self, key: int) -> None:
        maxes = self.maxes
        i = bisect_left(maxes, key)
        block = self.blocks[i]
        j = bisect_left(block, key)
        if block[j] != key:
            raise EngineHalted(f"liquidation index lost key {key}")
        del block[j]
        if not block:
            del self.blocks[i]
            del maxes[i]
        elif j == len(block):
            maxes[i] = block[len(block) - 1]

    def at_least(self, key: int) -> list:
        """The keys >= key, ascending."""
        maxes = self.maxes
        i = bisect_left(maxes, key)
        if i == len(maxes):
            return []
        block = self.blocks[i]
        out = block[bisect_left(block, key):]
        for b in self.blocks[i + 1:]:
            out.extend(b)
        return out

    def below(self, key: int) -> list:
        """The keys < key, ascending."""
        out: list = []
        for b in self.blocks:
            if b[len(b) - 1] < key:
                out.extend(b)
            else:
                out.extend(b[:bisect_left(b, key)])
                break
        return out


class TradingEngine:
    """Pure: the same records give the same outputs and state_hash(). See the module doc."""

    def __init__(self, specs: list[ContractSpec], shard: int = 0, n_shards: int = 1,
                 ce_sources: dict | None = None, oracle_sources: list | None = None,
                 gateway_sources: list | None = None, liq_sources: list | None = None,
                 self_trade: int = 0) -> None:
        if not 0 <= shard < n_shards:
            raise ValueError(f"shard {shard} not in 0 .. {n_shards - 1}")
        self.shard = shard
        self.n_shards = n_shards
        # configuration of the sources (docs/order-path.md §2): None = not configured, any
        # source may send the kind (as before these keys existed)
        self.ce_sources = (None if ce_sources is None
                           else {_int(k): _int(v) for k, v in ce_sources.items()})
        self.oracle_sources = (None if oracle_sources is None
                               else sorted(_int(x) for x in oracle_sources))
        self.gateway_sources = (None if gateway_sources is None
                                else sorted(_int(x) for x in gateway_sources))
        if self.ce_sources is not None and any(v not in {s.symbol for s in specs}
                                               for v in self.ce_sources.values()):
            raise ValueError("ce_sources names a symbol with no contract spec")
        self._ce_src = self.ce_sources or {}
        self._oracle_src = dict.fromkeys(self.oracle_sources or ())
        self._gateway_src = dict.fromkeys(self.gateway_sources or ())
        # the LiqEngine's output streams (docs/liqengine.md §2): with any, the shard works with
        # the LiqEngine (handoffs and deficits go to clearing); None or empty: as before
        self.liq_sources = sorted(_int(x) for x in liq_sources) if liq_sources else None
        self._liq_src = dict.fromkeys(self.liq_sources or ())
        # self-trade prevention, the CrossEngine's STP mode on every order this shard sends
        # (docs/tradingengine.md §4): 0 allow, 1 cancel newest, 2 cancel oldest, 3 cancel both
        if type(self_trade) is not int or self_trade not in SELF_TRADE_MODES:
            raise ValueError(f"self_trade must be one of {', '.join(map(str, SELF_TRADE_MODES))}"
                             f" (allow, cancel newest, cancel oldest, cancel both), got "
                             f"{self_trade!r}")
        self.stp = self_trade
        if any(x in self._ce_src or x in self._oracle_src or x in self._gateway_src
               for x in self._liq_src):
            raise ValueError("liq_sources names a source that is also a CrossEngine, oracle or "
                             "gateway source")
        # sessions (docs/tradingengine.md "Sessions"): live ones by (user, session_id), the
        # finalized ids with the ts_ns they were finalized at (oldest first), the armed
        # cancel-on-disconnects (derived)
        self.sessions: dict[tuple[int, int], Session] = {}
        self.finalized: dict[tuple[int, int], int] = {}
        self.done_sess: dict[int, tuple[int, int]] = {}   # a finished order's session (derived)
        self.user_sessions: dict[int, int] = {}   # user -> open sessions (derived)
        self.cod: dict[tuple[int, int], int] = {}
        self.held: dict[tuple[int, int], None] = {}   # sessions whose SessionState is held
        # replaces in flight by the session whose key each will give (derived: the entries of
        # every account's `replacing`), so that a new order's ClOrdID check looks through the
        # session's accounts only while one of them has a replace in flight
        self._sess_replacing: dict[tuple[int, int], int] = {}
        self.duplicates_dropped = 0   # a metric, not state: client messages dropped as repeats
        self.route = 0                # the route of the last output (bit symbol % 64)
        self._ctx = None              # the session request being applied: [session, template,
                                      # ClOrdID, OrigClOrdID, OrderID, tif, price mantissa]
        self._exec_n = 0              # ExecIDs issued in this record
        self.specs: dict[int, ContractSpec] = {s.symbol: s for s in sorted(specs, key=_sym)}
        if len(self.specs) != len(specs):
            raise ValueError("two contract specs share a symbol")
        for spec in specs:
            if spec.max_price * spec.tick >= 1 << 63:
                raise ValueError(f"symbol {spec.symbol}: max_price x tick does not fit a "
                                 "PROTOCOL.md price (i64)")
        self.accounts: dict[int, Account] = {}
        self.clearing = Account(CLEARING_ID)
        self.liquidation = Account(LIQUIDATION_ID)
        self.marks: dict[int, int] = {}
        self.last_prices: dict[int, int] = {}
        self.funding_inputs: dict[int, tuple[int, int]] = {}
        self.next_funding: dict[int, int] = {}
        # transfer ids answered in the last TRANSFER_ID_WINDOW_NS -> ts_ns first seen (a dict:
        # never a set), the same in the order seen, and the highest id that expired: an id at
        # or below it is refused (it may be a replay of one forgotten)
        self.transfers: dict[int, int] = {}
        self._transfer_queue: deque = deque()
        self.transfer_floor = 0
        self.sweeps: list[list] = []              # deferred fan-out work, oldest first
        # configuration, not state: OUTPUT_BUDGET in production; tests set it low (0: one
        # sweep unit a record) to drive every sweep through its deferred path
        self.output_budget = OUTPUT_BUDGET
        # OrderIDs are unique across the venue: shard + 1, then every n_shards-th number
        self.next_order_id = shard + 1
        self.fee_pool = 0
        self.dust = 0
        self.deposits = 0
        self.withdrawals = 0
        self.seq = 0
        self.ts_ns = 0
        # derived indexes, rebuilt by restore()
        self.orders: dict[int, Order] = {}
        self.ce_orders: dict[int, dict[int, Order]] = {s: {} for s in self.specs}
        self.conditional: dict[int, dict[int, Order]] = {s: {} for s in self.specs}
        # accounts with a position (size != 0) per symbol; flat ones leave it
        self.holders: dict[int, dict[int, None]] = {s: {} for s in self.specs}
        # the liquidation-trigger index (section 11 of docs/tradingengine.md): per symbol, the
        # holders' conservative triggers, longs (a mark at or below) and shorts (at or above)
        # as keys trigger << 32 | account; the key of each indexed holder (a short's as
        # -key - 1); the cross accounts with more than one cross position, checked at every
        # mark; and the accounts changed since the index last saw them (re-keyed before use)
        self._liq_long: dict[int, _SortedInts] = {s: _SortedInts() for s in self.specs}
        self._liq_short: dict[int, _SortedInts] = {s: _SortedInts() for s in self.specs}
        self._liq_keys: dict[int, dict[int, int]] = {s: {} for s in self.specs}
        self._liq_always: dict[int, dict[int, None]] = {s: {} for s in self.specs}
        self._liq_dirty: dict[int, None] = {}
        # the next sequenced time at which a mark price runs the audit (derived, not in the
        # snapshot: the audit changes nothing, so when it runs cannot change an output)
        self._audit_next = 0
        # the conditional orders' trigger index: per symbol, by (1 mark, 2 last) and direction
        # (up: fires when the price rises to it), keys trigger << 64 | order id
        self._trig_index: dict[int, list] = {
            s: [_SortedInts() for _ in range(6)] for s in self.specs}
        # per symbol the highest maintenance rate of any tier plus the taker fee (ppm)
        self._liq_rate: dict[int, int] = {
            s.symbol: max(t.mmr_ppm for t in s.tiers) + s.taker_fee_ppm for s in specs}
        self.dms: dict[int, int] = {}             # account -> deadline
        self._timer_next = 0
        self._out: list[bytes] = []
        self._size = 0          # bytes in self._out[:self._sized]
        self._sized = 0
        self._unit_done = False  # a sweep unit ran in this record
        self._touched: dict[tuple[int, int], Account] = {}   # APO status owed, in order
        self._to_check: dict[tuple[int, int], None] = {}   # within a record only
        # id(funding sweep) -> (the sweep, {account: its entry}): _funding_owed's index
        self._owed_index: dict[int, tuple] = {}
        self._handlers = {
            NEW_ORDER: self._new_order, CANCEL: self._cancel, AMEND: self._amend,
            CANCEL_ALL: self._cancel_all, SET_LEVERAGE: self._set_leverage,
            SET_MARGIN_MODE: self._set_margin_mode, ADJUST_MARGIN: self._adjust_margin,
            DEPOSIT: self._deposit, WITHDRAW: self._withdraw, MARK_PRICE: self._mark,
            FUNDING_INPUTS: self._funding_inputs, DEAD_MANS_SWITCH: self._dead_mans_switch,
            CE_EVENTS: self._ce_events,
        }
        self._session_handlers = {
            SESSION_LOGON: self._session_logon, SESSION_END: self._session_end,
            GATEWAY_START: self._gateway_start, CLIENT_MESSAGE: self._client_message,
        }

    # -- the state machine contract --------------------------------------------------------------

    def apply(self, seq: int, ts_ns: int, kind: int, payload: bytes,
              source: int = OPERATOR_SOURCE) -> bytes:
        """The events of one record from `source` (apply_frame passes each record's own).
        Deposits and withdrawals are the operator's: from any source below
        OPERATOR_SOURCE_MIN they are refused (source_not_operator) and change nothing."""
        if seq <= self.seq:
            raise EngineHalted(f"record {seq} after {self.seq}: the log went backwards")
        self.seq = seq
        day_ended = False
        if ts_ns > self.ts_ns:
            # the first record of a new UTC day ends the day before: its Day orders expire
            day_ended = self.ts_ns != 0 and ts_ns // DAY_NS != self.ts_ns // DAY_NS
            self.ts_ns = ts_ns    # sequenced time never runs backwards inside the engine
        out = self._out = []
        self._size = self._sized = 0
        self._unit_done = False
        # The takers of one record share the CrossEngine's CE_MAX_FILLS matching steps (its
        # fill_cap): each taker sent counts the steps it may take (_steps), and a command that
        # may take holds the whole of them until it has run (_cmd_steps), so that the trigger
        # sweep never sends a taker that could find them used up (docs/tradingengine.md §11).
        self._steps = 0
        self._cmd_steps = CE_MAX_FILLS if self._may_take(kind, payload) else 0
        self.route = 0
        self._exec_n = 0
        if self.ts_ns >= self._timer_next and self._timer_next:
            self._fire_timers()
        if day_ended:
            self._day_end()
        if self.sweeps:
            self._run_sweeps()
        handler = self._handlers.get(kind)
        if source in self._liq_src:
            # a LiqEngine output payload, whatever the record's kind (a Tick there may carry ADLs)
            self._liq_apply(payload)
        elif source in self._ce_src:
            # the CrossEngine output of that source's symbol, whatever the record's kind (its
            # output of a Tick keeps kind 1: the fills of the LiqEngine's orders sent on a Tick)
            self._ce_apply(self._ce_src[source], payload, 0)
        elif kind == KIND_TICK:
            pass
        elif handler is not None:
            size = _SIZES[kind]
            if len(payload) != size and (kind != CE_EVENTS or len(payload) < size):
                self._reject_request(kind, _CODE["command_malformed"], 0, 0, 0)
            elif (kind == DEPOSIT or kind == WITHDRAW) and source < OPERATOR_SOURCE_MIN:
                transfer_id, account, _amount = TRANSFER_S.unpack(payload)
                self._reject_request(kind, _CODE["source_not_operator"], account, 0, transfer_id)
            elif ((NEW_ORDER <= kind <= ADJUST_MARGIN or kind == DEAD_MANS_SWITCH)
                  and self.gateway_sources is not None and source < OPERATOR_SOURCE_MIN):
                # With a gateway, a client's orders come as its session's messages: an
                # account's own commands put straight into in.te.N are the operator's (a
                # producer key may append to any in stream with its source ids: the oracle's
                # could trade, set leverage or cancel on any account's name)
                self._reject_request(kind, _CODE["source_not_allowed"], 0, 0, 0)
            elif kind >= MARK_PRICE and not self._source_allowed(kind, source):
                self._reject_request(kind, _CODE["source_not_allowed"], 0,
                                     CE_EVENTS_S.unpack_from(payload)[0], 0)
            else:
                handler(payload)
        elif kind in self._session_handlers:
            if (self.gateway_sources is not None and source not in self._gateway_src
                    and source < OPERATOR_SOURCE_MIN):
                self._reject_request(kind, _CODE["source_not_allowed"], 0, 0, 0)
            else:
                self._session_handlers[kind](payload)
        else:
            self._reject_request(kind, _CODE["command_malformed"], 0, 0, 0)
        self._cmd_steps = 0
        if self.sweeps:
            self._run_sweeps()
        if self.held:
            self._release_held(kind == KIND_TICK or kind == CE_EVENTS or source in self._ce_src)
        return b"".join(out)

    @staticmethod
    def _may_take(kind: int, payload: bytes) -> bool:
        """Whether the record's command may send an order that takes liquidity: a new order
        or an amend, the engine's own or a session's (NewOrderSingle, OrderCancelReplace)."""
        if kind == NEW_ORDER or kind == AMEND:
            return True
        if kind == CLIENT_MESSAGE and len(payload) >= CLIENT_MESSAGE_S.size:
            template = CLIENT_MESSAGE_S.unpack_from(payload)[3]
            return template == P_NEW_ORDER or template == P_REPLACE
        return False

    def _source_allowed(self, kind: int, source: int) -> bool:
        """MarkPrice and FundingInputs only from the oracles (and the operator) when
        oracle_sources is configured; CrossEngineEvents never from a source not in ce_sources
        when ce_sources is (those are taken before this check)."""
        if kind == CE_EVENTS:
            return self.ce_sources is None
        if kind == MARK_PRICE or kind == FUNDING_INPUTS:
            return (self.oracle_sources is None or source in self._oracle_src
                    or source >= OPERATOR_SOURCE_MIN)
        return True

    def apply_frame(self, frame: bytes) -> bytes:
        """Apply every record of a sequenced frame; one output record per input record, with
        the same header fields, the events as payload and the route of each output
        (docs/order-path.md §1)."""
        apply = self.apply
        out = []
        for seq, ts, src, src_seq, epoch, kind, payload, _route in decode(frame):
            events = apply(seq, ts, kind, payload, src)
            out.append((seq, ts, src, src_seq, epoch, kind, events, self.route))
        return encode(out)

    # -- sweeps: fan-out work within the output budget ---------------------------------------------

    def _over_budget(self) -> bool:
        out = self._out
        n = len(out)
        if n != self._sized:
            size = self._size
            for i in range(self._sized, n):
                size += len(out[i])
            self._size = size
            self._sized = n
        return self._size >= self.output_budget

    def _may_go_on(self) -> bool:
        """Whether one more unit of fan-out work runs in this record: the first always does
        (so every sweep ends), the others while the output is under OUTPUT_BUDGET."""
        if not self._unit_done:
            self._unit_done = True
            return True
        return not self._over_budget()

    def _run_sweeps(self) -> None:
        sweeps = self.sweeps
        while sweeps:
            sw = sweeps[0]
            kind = sw[0]
            if kind == SWEEP_TRIGGER:
                done = self._sweep_trigger(sw)
            elif kind == SWEEP_MAINTENANCE:
                done = self._sweep_maintenance(sw)
            elif kind == SWEEP_FUNDING:
                done = self._sweep_funding(sw)
            elif kind == SWEEP_MASS_CANCELLED:
                done = self._sweep_mass_cancelled(sw)
            elif kind == SWEEP_REDUCE_ONLY:
                done = self._sweep_reduce_only(sw)
            elif kind == SWEEP_DAY_END:
                done = self._sweep_day_end(sw)
            elif kind == SWEEP_SESSION_MASS_CANCEL:
                done = self._sweep_session_mass_cancel(sw)
            elif kind == SWEEP_CHECK:
                done = self._sweep_check(sw)
            else:
                raise EngineHalted(f"unknown sweep {sw}")
            if not done:
                return
            if sweeps[0] is sw:
                sweeps.pop(0)
                continue
            # a check queued ahead of it while it ran (_queue_unit)
            for i in range(1, len(sweeps)):
                if sweeps[i] is sw:
                    del sweeps[i]
                    break
            else:
                raise EngineHalted("the sweep queue changed under its running sweep")

    # -- helpers -----------------------------------------------------------------------------------

    def _mine(self, account_id) -> bool:
        """An account of this shard; a reserved one (LIQ's) is nobody's."""
        return account_id % self.n_shards == self.shard and account_id < RESERVED_ACCOUNT_MIN

    def _account_or_code(self, account_id: int) -> tuple[Account | None, int]:
        """The account of this shard, or the reject code that says why there is none."""
        if account_id % self.n_shards != self.shard:
            return None, 2002
        acct = self.accounts.get(account_id)
        return acct, 2003 if acct is None else 0

    def _position(self, acct: Account, symbol) -> Position:
        pos: Position = acct.positions.get(symbol)
        if pos is None:
            pos = acct.positions[symbol] = _new_position(self.specs[symbol])
        return pos

    def _reject_request(self, kind: int, code: int, account: int, symbol: int, ref: int) -> None:
        self._out.append(_PACK[REQUEST_REJECTED](REQUEST_REJECTED, code, kind,
                                                   account & 0xFFFFFFFF, symbol & 0xFFFFFFFF,
                                                   ref & 0xFFFFFFFFFFFFFFFF))

    def _er(self, o: Order, exec_type, last_px=0, last_qty=0, paid=0,
            code=0, liquidity=0, status=0) -> None:
        if not status:
            if o.state == UNTRIGGERED:
                status = STATUS_UNTRIGGERED
            elif o.leaves == 0 and o.cum == o.qty:
                status = STATUS_FILLED
            elif o.cum:
                status = STATUS_PARTIAL
            else:
                status = STATUS_NEW
        self._out.append(_ER(EXEC_REPORT, exec_type, status, o.account, o.symbol,
                             o.client_order_id, o.order_id, o.side, o.ord_type, o.price, o.qty,
                             last_px, last_qty, o.leaves, o.cum, paid, code, liquidity))
        if o.sess is not None or o.cxl is not None or o.rpl is not None:
            self._session_er(o, exec_type, status, last_px, last_qty, code, liquidity)

    def _reject_order(self, coid, account, symbol, side, ord_type,
                      price, qty, code) -> None:
        self._out.append(_ER(EXEC_REPORT, EXEC_REJECTED, STATUS_REJECTED,
                             account & 0xFFFFFFFF, symbol & 0xFFFFFFFF, coid, 0, side & 0xFF,
                             ord_type & 0xFF, price, qty, 0, 0, 0, 0, 0, code, 0))
        if self._ctx is not None:
            ctx = self._ctx
            self._session_reject_er(ctx[0], coid, account, symbol, side, ord_type, ctx[5],
                                    ctx[6], qty, fix_ord_rej_reason(code))

    def _account_status(self, acct: Account) -> None:
        self.route |= ROUTE_LIQ
        # `available` is derived (balance and margins are state, each below MAX_MONEY): a
        # position valued at a mark far from its entry can put it beyond int64, where the
        # event stops at the edge instead of stopping the shard (docs/tradingengine.md §13)
        self._out.append(_PACK[ACCOUNT](ACCOUNT, acct.account_id, acct.balance,
                                          _to_i64(self._available(acct)), acct.order_margin,
                                          acct.position_margin))

    def view_accounts(self, account_ids) -> list:
        """The live figures of those of these accounts that exist, as an AccountStatus and a
        Position event would state them now: the margin of an order placed since the last fill
        is in. The replica host answers an operator's QUERY with it. Changes nothing."""
        out = []
        for account_id in account_ids:
            acct = self.accounts.get(account_id)
            if acct is None:
                continue
            rows = []
            for symbol, pos in acct.positions.items():
                liq, bk = self._liq_bk(acct, symbol, pos)
                rows.append([symbol, pos.size, pos.cost, pos.margin, liq, bk, pos.realised,
                             pos.leverage_x100, pos.mode])
            out.append({"account": account_id, "balance": acct.balance,
                        "available": _to_i64(self._available(acct)),   # (as the event)
                        "order_margin": acct.order_margin,
                        "position_margin": acct.position_margin,
                        "open_orders": len(acct.orders), "positions": rows,
                        # [symbol, mark price in ticks] of each position's symbol that has one
                        "marks": [[row[0], self.marks[row[0]]] for row in rows
                                  if row[0] in self.marks]})
        return out

    def _position_status(self, acct: Account, symbol) -> None:
        pos: Position = acct.positions[symbol]
        self.route |= ROUTE_LIQ
        liq, bk = self._liq_bk(acct, symbol, pos)
        self._out.append(_PACK[POSITION](POSITION, acct.account_id, symbol, pos.size,
                                           pos.cost, pos.margin, liq, bk, pos.realised,
                                           pos.leverage_x100, pos.mode))

    def _liq_bk(self, acct: Account, symbol, pos: Position) -> tuple:
        """The position's liquidation and bankruptcy prices (0, 0 when it is flat)."""
        if not pos.size:
            return 0, 0
        spec = self.specs[symbol]
        base = pos.margin if pos.mode == ISOLATED else self._cross_base(acct, symbol)
        return (liquidation_price(pos.size, pos.cost, base, spec),
                bankruptcy_price(pos.size, pos.cost, base, spec))

    def _cross_upnl(self, acct: Account, skip=0) -> int:
        pos: Position
        total = 0
        marks = self.marks
        for sym, pos in acct.positions.items():
            # a position in a symbol with no mark yet (a fill of an order this engine did not
            # send) is valued at its entry: no unrealised PnL
            if pos.size and pos.mode == CROSS and sym != skip and sym in marks:
                total += pos.size * marks[sym] * self.specs[sym].value - pos.cost
        return total

    def _available(self, acct: Account) -> int:
        """Balance not held by positions or orders; unrealised cross losses count, gains do
        not (a gain is not money until it is realised)."""
        free = acct.balance - acct.order_margin - acct.position_margin
        if acct.position_margin:
            upnl = self._cross_upnl(acct)
            if upnl < 0:
                free += upnl
        return free

    def _spendable(self, acct: Account) -> int:
        """_available less the funding its cross balance owes to sweeps in flight: not its
        money (a withdrawal of it is refused, 2024); spent on an order's margin, the payment
        at its turn left the new position below zero, and the fund paid the rest."""
        free = self._available(acct)
        if self.sweeps:
            free -= self._funding_owed(acct.account_id, 0, OWED_CROSS)
        return free

    def _isolated_margin(self, acct: Account) -> int:
        """What the account's isolated positions hold of its balance."""
        pos: Position
        iso = 0
        for pos in acct.positions.values():
            if pos.mode == ISOLATED:
                iso += pos.margin
        return iso

    def _cross_maintenance(self, acct: Account) -> int:
        """The maintenance of the account's cross positions, each at its mark (at its entry
        price while its symbol has none)."""
        p: Position
        need = 0
        for sym, p in acct.positions.items():
            if p.size and p.mode == CROSS:
                mark_or_entry = self.marks.get(sym) or abs(p.cost) // abs(p.size)
                need += maintenance(p.size, mark_or_entry, self.specs[sym])
        return need

    def _cross_headroom(self, acct: Account) -> int:
        """How far the cross equity (the balance less what isolated positions and orders
        hold, plus every cross position's unrealised PnL at its mark) stands above the
        maintenance of the cross positions at their marks. Money that leaves the cross
        balance (a withdrawal, a transfer to an isolated margin) must leave it above zero:
        `available` counts position margins on the entry value, and after a short has
        risen far enough, maintenance at the mark exceeds them."""
        need = self._cross_maintenance(acct)
        if not need:
            return MAX_MONEY
        return (acct.balance - self._isolated_margin(acct) - acct.order_margin
                + self._cross_upnl(acct) - need)

    def _isolated_safe(self, pos: Position, spec: ContractSpec, margin: int) -> bool:
        """Whether an isolated position holding ``margin`` stays above maintenance at the
        mark: margin taken out of it (AdjustIsolatedMargin, a higher leverage) may not leave
        it to the fund, whatever its requirement on the entry value says."""
        mark = self.marks.get(spec.symbol)
        if not pos.size or mark is None:
            return True
        return margin + pos.size * mark * spec.value - pos.cost > maintenance(pos.size, mark,
                                                                              spec)

    def _cross_base(self, acct: Account, symbol: int, orders_excluded: int = 0) -> int:
        """The money behind a cross position in ``symbol``: the balance less what isolated
        positions and orders hold, plus the other cross positions' losses (not their gains)."""
        other = self._cross_upnl(acct, skip=symbol)
        return (acct.balance - self._isolated_margin(acct) - (acct.order_margin - orders_excluded)
                + (other if other < 0 else 0))

    def _set_margin(self, acct: Account, pos: Position, spec: ContractSpec) -> None:
        """Hold the requirement of the position at its leverage plus the isolated extra."""
        need = position_margin(pos.size, pos.cost, spec, pos.leverage_x100)
        if pos.extra < -need:
            pos.extra = -need     # funding took the margin down to zero (never below)
        new = need + pos.extra
        acct.position_margin += new - pos.margin
        pos.margin = new
        self._liq_dirty[acct.account_id] = None

    # -- orders --------------------------------------------------------------------------------

    def _new_order(self, payload: bytes) -> None:
        (coid, account, symbol, price, qty, trig_px, side, ord_type, tif, flags, trig_kind,
         trig_by) = _NEW_ORDER(payload)
        self._enter_order(coid, account, symbol, price, qty, trig_px, side, ord_type, tif, flags,
                          trig_kind, trig_by)

    def _enter_order(self, coid, account, symbol, price, qty, trig_px, side, ord_type, tif, flags,
                     trig_kind, trig_by) -> None:
        """A NewOrder's fields, in its layout's ranges (codec.NEW_ORDER_S): a session's order
        comes here directly, not packed into a NewOrder payload and unpacked again."""
        code = 0
        acct: Account = self.accounts.get(account)
        spec = self.specs.get(symbol)
        # _account_or_code() written out: this is the hot path, a call and a tuple per order
        # cost 2% of its instructions
        if account % self.n_shards != self.shard:
            code = 2002
        elif acct is None:
            code = 2003
        elif spec is None:
            code = 2004
        elif side != BUY and side != SELL:
            code = 2005
        elif ord_type != LIMIT and ord_type != MARKET:
            code = 2006
        elif tif != GTC and tif != IOC and tif != FOK and tif != DAY:
            code = 2007
        elif ord_type == LIMIT and not 0 < price <= spec.max_price \
                or ord_type == MARKET and price != 0:
            code = 2008
        elif not 0 < qty <= spec.max_qty:
            code = 2009
        elif flags & POST_ONLY and (ord_type != LIMIT or tif != GTC and tif != DAY):
            code = 2028
        elif flags & ~(REDUCE_ONLY | POST_ONLY):
            code = 2001
        elif _clordid_taken(acct, coid, None if self._ctx is None else self._ctx[0]) or \
                self._ctx is not None and self._replace_gives(coid, self._ctx[0]):
            code = 2015
        elif len(acct.orders) >= MAX_OPEN_ORDERS:
            code = 2027
        elif symbol not in self.marks:
            code = 2010
        if code:
            self._reject_order(coid, account, symbol, side, ord_type, price, qty, code)
            return
        o: Order = Order(self.next_order_id, account, symbol, coid, side, ord_type, tif, flags,
                         price, qty)
        if self._ctx is not None:
            o.sess = self._ctx[0]
        if trig_kind or trig_px:
            code = self._conditional(o, trig_px, trig_kind, trig_by, spec)
            if code:
                self._reject_order(coid, account, symbol, side, ord_type, price, qty, code)
                return
            self.next_order_id += self.n_shards
            o.state = UNTRIGGERED
            acct.orders[o.order_id] = o
            _index_client(acct, coid, o)
            self.orders[o.order_id] = o
            self.conditional[symbol][o.order_id] = o
            self._trig_add(o)
            self._er(o, EXEC_NEW)
            return
        code = self._risk_and_send(acct, o, spec)
        if code:
            self._reject_order(coid, account, symbol, side, ord_type, price, qty, code)
            return
        self.next_order_id += self.n_shards
        acct.orders[o.order_id] = o
        _index_client(acct, coid, o)
        self.orders[o.order_id] = o

    def _conditional(self, o: Order, trig_px: int, kind: int, by: int,
                     spec: ContractSpec) -> int:
        if kind not in (TRIGGER_STOP, TRIGGER_TAKE_PROFIT) or by not in (BY_MARK, BY_LAST) \
                or not 0 < trig_px <= spec.max_price:
            return 2018
        ref = self._reference(o.symbol, by)
        o.trigger_price, o.trigger_kind, o.trigger_by = trig_px, kind, by
        if _fires(o, ref):
            return 2019
        return 0

    def _reference(self, symbol: int, by: int) -> int:
        if by == BY_LAST:
            last = self.last_prices.get(symbol)
            if last is not None:
                return last
        return self.marks[symbol]

    def _risk_and_send(self, acct: Account, o: Order, spec: ContractSpec) -> int:
        """The pre-trade check of a live order; on success reserve its margin and send it to
        the CrossEngine. Returns a reject code or 0."""
        symbol = o.symbol
        mark = self.marks[symbol]
        buy = o.side == BUY
        band = mark * spec.band_ppm // PPM
        if o.ord_type == MARKET:
            # a market order goes out as an IOC limit at the band edge (price protection) and
            # reserves margin at that price
            o.price = mark + band if buy else max(mark - band, 1)
        elif (o.price > mark + band) if buy else (o.price < mark - band):
            return 2011
        pos: Position = acct.positions.get(symbol)
        fresh = pos is None
        if fresh:
            # made for the check, kept only when the order goes: a refused order changes
            # nothing (an empty row stayed in the snapshot and the state hash)
            pos = _new_position(spec)
        size = pos.size
        if buy:
            same = pos.buy_leaves
            reducible = -size - same if size < 0 else 0
        else:
            same = pos.sell_leaves
            reducible = size - same if size > 0 else 0
        qty = o.leaves
        flags = o.flags
        against = size and (size > 0) != buy
        owed = self._owed_against(acct, symbol, pos) if against else 0
        if against:
            # an order against the position (the part that closes it, now or once the orders
            # ahead of it are gone) may not be priced beyond its bankruptcy price: the loss
            # past it would be the fund's (a market order's protection price stops there);
            # funding the account owes to a sweep in flight is not its money
            bk = self._bankruptcy(acct, symbol, pos, owed)
            if bk and ((o.price > bk) if buy else (o.price < bk)):
                if o.ord_type != MARKET:
                    return 2043
                o.price = bk
        if flags & REDUCE_ONLY:
            # what it may reduce: the position less the other reduce-only orders on its side
            # (the orders _cut_reduce_only keeps within the position), not less every order
            # on its side: a take-profit limit resting beside it left a reduce-only stop-loss
            # refused when it fired
            room = self._ro_room(acct, o, pos)
            if room <= 0:
                return 2014
            if qty > room:
                o.qty = o.leaves = qty = room     # cut to what it can reduce
        # what it opens if the orders ahead of it on its side fill first, reserved (a
        # reduce-only order's too: the cut that cancels it is a record away when they fill,
        # and a fill in between opens like any other; reserving nothing, a reduce-only close
        # beside a plain one opened a short on no money, lifted with it)
        opening = qty - reducible if reducible > 0 else qty
        cost = 0
        if opening > 0:
            worst = (size + same + qty) if buy else (same + qty - size)
            exposure = worst * (o.price if o.price > mark else mark) * spec.value
            tier = spec.tiers[0]
            if exposure > tier.limit:
                tier = spec.tier(exposure)
            lev = pos.leverage_x100
            if tier is None or lev > tier.max_leverage_x100:
                return 2013
            cost = order_cost(opening, o.price, buy, mark, spec, lev)
            if pos.mode == ISOLATED and self.sweeps and \
                    self._funding_owed(acct.account_id, 0, OWED_CROSS):
                # the balance owes this interval's funding: it may not become the margin
                # of an isolated position (which a cross payment never takes from)
                return 2045
            if cost > self._spendable(acct):
                return 2012
            if pos.mode == ISOLATED and not flags & REDUCE_ONLY \
                    and cost >= self._cross_headroom(acct):
                # filled, the reservation becomes an isolated margin: money that leaves the
                # cross equity, which must stay above the cross positions' maintenance at
                # their marks, as for a withdrawal (2024) or AdjustIsolatedMargin (accepted,
                # the fill left a cross short 4.57 USDT below it, handed off at the mark). A
                # reduce-only order opens nothing (it is cut instead): its stop-loss was
                # refused as it fired
                return 2012
            if against and pos.mode == CROSS:
                # an order that closes and opens: what it reserves for the lots it
                # opens (from the cross balance) moves the bankruptcy price of the cross
                # lots it closes (an isolated position's margin is its own)
                bk = self._bankruptcy(acct, symbol, pos, owed + cost)
                if bk and ((o.price > bk) if buy else (o.price < bk)):
                    if o.ord_type != MARKET:
                        return 2043
                    # nearer the mark: it reserves less, and bk moves back, not further
                    o.price = bk
                    cost = order_cost(opening, o.price, buy, mark, spec, lev)
            if self._strands_cross_closes(acct, cost):
                return 2044
        if fresh:
            acct.positions[symbol] = pos
        o.margin = cost
        acct.order_margin += cost
        self._liq_dirty[acct.account_id] = None
        if buy:
            pos.buy_leaves += qty
        else:
            pos.sell_leaves += qty
        if flags & REDUCE_ONLY:
            pos.reduce_only += 1
        # the CrossEngine knows GTC, IOC and FOK: a Day order rests there as GTC (this engine
        # expires it at the end of its day), a market order takes what it can, as IOC
        tif = o.tif
        if tif == GTC or tif == DAY:
            tif = IOC if o.ord_type == MARKET else GTC
        self.route |= 1 << (symbol & 63)
        self._out.append(_CE_NEW_CMD(CE_COMMAND, symbol, CE_NEW_ORDER, _CE_NEW_SIZE, o.order_id, o.price, qty,
                                     acct.account_id, o.side, LIMIT, tif, flags & POST_ONLY,
                                     self.stp))
        self._steps += self._taker_steps(qty)
        return 0

    def _ro_room(self, acct: Account, o: Order, pos: Position) -> int:
        """What the reduce-only order ``o`` may reduce: its position, less the leaves of the
        account's other live reduce-only orders on its side (those _cut_reduce_only keeps)."""
        room = pos.size if o.side == SELL else -pos.size
        if room <= 0 or not pos.reduce_only:
            return room
        x: Order
        for x in acct.orders.values():
            if x is not o and x.symbol == o.symbol and x.side == o.side \
                    and x.flags & REDUCE_ONLY and x.state != UNTRIGGERED \
                    and x.pending != PENDING_CANCEL:
                # an amend down in flight that the CrossEngine cannot refuse counts at the
                # leaves it asks for (a reduce-only stop-loss firing beside a take-profit being
                # amended down was refused); one it may refuse (below what has filled, or a
                # post-only order's new price, which may take) counts at the leaves it has (so
                # counted, a refused amend let a second close open a short), an amend up at
                # its larger leaves (its growth is not room until refused)
                after = x.amend_leaves
                if after < x.leaves and (after == 0 or x.flags & POST_ONLY
                                         and x.amend_price != x.price):
                    after = x.leaves
                room -= after
        return room

    def _taker_steps(self, qty):
        """The CrossEngine's matching steps a taker of qty lots may take: a step fills at
        least a lot, and a self-trade step of modes 1 and 3 ends the taker; in mode 2 (cancel
        oldest) each of the account's own makers it meets is a step that fills nothing."""
        return CE_MAX_FILLS if qty >= CE_MAX_FILLS or self.stp == 2 else qty

    def _send_cancel(self, o: Order, reason: int) -> None:
        o.pending = PENDING_CANCEL
        o.reason = reason
        payload = _CE_CANCEL(0, o.order_id, o.account)
        self.route |= 1 << (o.symbol & 63)
        self._out.append(_CE_CMD(CE_COMMAND, o.symbol, CE_CANCEL, len(payload)) + payload)
        self._size += ANSWER_RESERVE

    def _send_amend(self, o: Order, price: int, total_qty: int) -> None:
        if price != o.price:   # it may cross: a taker of the record
            self._steps += self._taker_steps(total_qty - o.cum)
        o.pending = PENDING_AMEND
        o.amend_price = price   # it may fill at either price until the CrossEngine answers
        before = o.amend_grow
        o.amend_qty = total_qty
        grow = o.amend_grow - before
        if grow:
            # the larger leaves count on the side until the answer: a close entered while
            # another grew by amend saw the old leaves ahead of it, reserved nothing, and
            # opened a short on no money when one IOC lifted both
            pos = self.accounts[o.account].positions[o.symbol]
            if o.side == BUY:
                pos.buy_leaves += grow
            else:
                pos.sell_leaves += grow
        payload = _CE_AMEND(0, o.order_id, o.account, price, total_qty)
        self.route |= 1 << (o.symbol & 63)
        self._out.append(_CE_CMD(CE_COMMAND, o.symbol, CE_AMEND, len(payload)) + payload)
        self._size += ANSWER_RESERVE

    def _drop(self, acct: Account, o: Order) -> None:
        """Forget a finished order and release what it still holds."""
        acct.order_margin -= o.margin
        o.margin = 0
        self._liq_dirty[acct.account_id] = None
        if o.state != UNTRIGGERED:
            pos: Position = acct.positions[o.symbol]
            if o.side == BUY:
                pos.buy_leaves -= o.leaves + o.amend_grow
            else:
                pos.sell_leaves -= o.leaves + o.amend_grow
            o.amend_qty = 0
            if o.flags & FLAG_REDUCE_ONLY:
                pos.reduce_only -= 1
            if o.ce_id:
                self.ce_orders[o.symbol].pop(o.ce_id, None)
        else:
            del self.conditional[o.symbol][o.order_id]
            self._trig_remove(o)
        del acct.orders[o.order_id]
        del self.orders[o.order_id]
        key = (o.client_order_id, o.sess)
        if acct.by_client.get(key) is o:
            _unindex_client(acct, key)
        self._rpl_done(o)

    def _replace_gives(self, coid: int, key: tuple) -> bool:
        """Whether a replace in flight (another session's, of an order of session key) is to
        give an order on any account of the session the key (coid, key)."""
        if not self._sess_replacing.get(key):
            return False
        sess = self.sessions.get(key)
        if sess is None:
            return False
        for a in sess.accounts:
            acct = self.accounts.get(a)
            if acct is not None and acct.replacing and (coid, key) in acct.replacing:
                return True
        return False

    def _key_taken(self, coid: int, key: tuple, sess) -> bool:
        """Whether an open order of session key, on any account of the session, goes by coid,
        or a replace in flight is to give one that ClOrdID."""
        for a in sess.accounts:
            acct = self.accounts.get(a)
            if acct is not None and _clordid_taken(acct, coid, key):
                return True
        return False

    def _rpl_done(self, o: Order) -> None:
        """The key o's session replace in flight was to give it is free again (the replace is
        answered, or the order gone): call before o.rpl is cleared (no replace: nothing)."""
        if o.rpl is None:
            return
        acct = self.accounts.get(o.account)
        key = (o.rpl[0], o.sess)
        if acct is not None and acct.replacing.get(key) is o:
            del acct.replacing[key]
            self._replacing_less(o.sess)

    def _replacing_more(self, sess) -> None:
        self._sess_replacing[sess] = self._sess_replacing.get(sess, 0) + 1

    def _replacing_less(self, sess) -> None:
        n = self._sess_replacing[sess] - 1
        if n:
            self._sess_replacing[sess] = n
        else:
            del self._sess_replacing[sess]

    def _by_client(self, account: int, orig: int):
        """The account (or None) and its open order that goes by client order id orig for the
        session of the message being applied (None outside one), or None."""
        acct = self.accounts.get(account) if self._mine(account) else None
        if acct is None:
            return None, None
        return acct, acct.by_client.get((orig, None if self._ctx is None else self._ctx[0]))

    def _cancel(self, payload: bytes) -> None:
        coid, orig, account = CANCEL_S.unpack(payload)
        acct, o = self._by_client(account, orig)
        self._cancel_order(acct, o, coid, orig, account)

    def _cancel_order(self, acct, o, coid: int, orig: int, account: int) -> None:
        if o is None:
            self._cancel_rejected(account, coid, orig, 2016, 1)
        elif o.pending == PENDING_CANCEL:
            self._cancel_rejected(account, coid, orig, 2017, 1)
        elif o.state == UNTRIGGERED:
            self._drop(acct, o)
            self._er(o, EXEC_CANCELED, 0, 0, 0, REASON_CLIENT, 0, STATUS_CANCELED)
        else:
            self._send_cancel(o, REASON_CLIENT)

    def _cancel_rejected(self, account: int, coid: int, orig: int, code: int, to: int,
                         finished=None) -> None:
        """finished: (OrderID, done entry) of the finished order refused as too late."""
        self._out.append(_PACK[CANCEL_REJECTED](CANCEL_REJECTED, account & 0xFFFFFFFF, coid,
                                                  orig, code, to))
        if self._ctx is not None:
            ctx = self._ctx
            self._session_cancel_reject(ctx[0], ctx[2], ctx[3], ctx[4], to,
                                        fix_cxl_rej_reason(code), finished)

    def _keep_finished(self, sess, o: Order, status) -> None:
        """The session that entered o keeps it, finished, among its latest MAX_SESSION_DONE."""
        done = sess.done
        done[o.order_id] = (o.client_order_id, status, o.symbol, o.side, o.account)
        sess.finished[o.client_order_id] = o.order_id     # the last to finish names it
        self.done_sess[o.order_id] = o.sess
        if len(done) > MAX_SESSION_DONE:
            # the oldest goes; if its ClOrdID names it, no later one has that ClOrdID (a
            # later one would name it), so a restore, rebuilding the map from done, agrees
            order_id = next(iter(done))
            coid = done.pop(order_id)[0]
            if sess.finished.get(coid) == order_id:
                del sess.finished[coid]
            del self.done_sess[order_id]

    def _cancel_unknown(self, account: int, coid: int, orig: int, finished, to: int) -> None:
        """Reject a session's cancel or replace that names no open order: too late (FIX 102
        reason 0, with the OrderID and OrdStatus) if it names one of the session's finished
        orders, else unknown (reason 1)."""
        if finished is None:
            self._cancel_rejected(account, coid, orig, 2016, to)
        else:
            self._cancel_rejected(finished[1][4], coid, orig, 2040, to, finished)

    def _finished(self, sess, orig: int, order_id: int, symbol: int, side: int):
        """(OrderID, its done entry) of the finished order that a session's cancel or replace
        names, as _find_order names an open one: by OrderID, an order of the session user's
        accounts entered by any live session; else by ClOrdID, the last order of this session
        to finish with that ClOrdID. In the request's SecurityID and Side; or None."""
        if order_id != P_NULL_ID and order_id != 0:
            key = self.done_sess.get(order_id)
            owner = self.sessions.get(key) if key is not None else None
            d = owner.done.get(order_id) if owner is not None else None
            if d is None:
                return None
            if orig != P_NULL_ID and d[0] != orig:
                return None              # OrderID and OrigClOrdID name two orders
        elif orig != P_NULL_ID:
            order_id = sess.finished.get(orig)
            if order_id is None:
                return None
            d = sess.done[order_id]
        else:
            return None
        if d[4] not in sess.accounts or d[2] != symbol or d[3] != side:
            return None
        return order_id, d

    def _amend(self, payload: bytes) -> None:
        coid, orig, account, price, qty = AMEND_S.unpack(payload)
        acct, o = self._by_client(account, orig)
        self._amend_order(acct, o, coid, orig, account, price, qty)

    def _amend_order(self, acct, o, coid: int, orig: int, account: int, price: int,
                     qty: int) -> None:
        if o is None:
            self._cancel_rejected(account, coid, orig, 2016, 2)
            return
        spec = self.specs[o.symbol]
        new_price = price or o.price
        new_qty = qty or o.qty
        code = 0
        if o.pending:
            code = 2017
        elif price and (o.ord_type == MARKET or not 0 < price <= spec.max_price):
            code = 2008
        elif qty and not o.cum < qty <= spec.max_qty:
            code = 2009
        elif new_price == o.price and new_qty == o.qty:
            code = 2029
        if not code and o.state == UNTRIGGERED:
            o.price, o.qty, o.leaves = new_price, new_qty, new_qty
            self._er(o, EXEC_REPLACED)
            return
        if not code:
            mark = self.marks[o.symbol]
            band = mark * spec.band_ppm // PPM
            buy = o.side == BUY
            if (new_price > mark + band) if buy else (new_price < mark - band):
                code = 2011
        if not code and o.flags & FLAG_REDUCE_ONLY and new_qty - o.cum > o.leaves:
            # a reduce-only order may grow only into what the position still lets it reduce
            if new_qty - o.cum > self._ro_room(acct, o, acct.positions[o.symbol]):
                code = 2014
        if not code and new_qty - o.cum > o.leaves:
            # the risk limit, as for a new order: the position's worst case with the order
            # grown, valued at the order's price or the mark, whichever is higher
            pos = acct.positions[o.symbol]
            mark = self.marks[o.symbol]
            grown = new_qty - o.cum - o.leaves
            worst = (pos.size + pos.buy_leaves + grown) if o.side == BUY \
                else (pos.sell_leaves + grown - pos.size)
            tier = spec.tier(worst * (new_price if new_price > mark else mark) * spec.value)
            if tier is None or pos.leverage_x100 > tier.max_leverage_x100:
                code = 2013
        # funding owed to a sweep in flight is not the account's money (0 with none in flight)
        owed = self._owed_against(acct, o.symbol, acct.positions[o.symbol]) if not code else 0
        if not code and (new_price != o.price or new_qty - o.cum > o.leaves) \
                and self._beyond_bankruptcy(acct, o, new_price, owed):
            code = 2043
        if not code:   # (a reduce-only order's too: what it opens if those ahead fill first)
            need = self._order_cost(acct, o, new_price, new_qty - o.cum)
            if need > o.margin:
                if acct.positions[o.symbol].mode == ISOLATED and self.sweeps and \
                        self._funding_owed(account, 0, OWED_CROSS):
                    code = 2045
                elif need - o.margin > self._spendable(acct):
                    code = 2012
                elif acct.positions[o.symbol].mode == CROSS and self._beyond_bankruptcy(
                        acct, o, new_price, need - o.margin + owed):
                    code = 2043     # its own larger reservation moves its bankruptcy price
                elif self._strands_cross_closes(acct, need - o.margin):
                    code = 2044
                else:   # hold the larger reservation until the CrossEngine answers
                    acct.order_margin += need - o.margin
                    o.margin = need
                    self._liq_dirty[acct.account_id] = None
        if code:
            self._cancel_rejected(account, coid, orig, code, 2)
            return
        self._send_amend(o, new_price, new_qty)

    def _strands_closing_orders(self, acct: Account, amount: int) -> bool:
        """Whether taking ``amount`` out of the cross balance would leave a live order
        against a cross position priced beyond that position's bankruptcy price (which an
        order is checked against only when it enters or is amended)."""
        acct.balance -= amount
        found = self._stranded(acct, 0)
        acct.balance += amount
        return found

    def _strands_cross_closes(self, acct: Account, amount: int) -> bool:
        """_strands_closing_orders for ``amount`` more held from the cross balance (an order's
        reservation, margin moved into an isolated position): the cross bankruptcy prices
        count what orders and isolated positions hold. The orders are looked at only when
        some cross position has orders against it."""
        return amount > 0 and self._cross_closes(acct) and \
            self._strands_closing_orders(acct, amount)

    def _cross_closes(self, acct: Account, symbol: int = 0) -> bool:
        """Whether the account has orders against a cross position (other than ``symbol``'s)."""
        pos: Position
        for sym, pos in acct.positions.items():
            if sym != symbol and pos.mode == CROSS and (pos.size > 0 and pos.sell_leaves
                                                        or pos.size < 0 and pos.buy_leaves):
                return True
        return False

    def _cross_positions(self, acct: Account) -> int:
        pos: Position
        n = 0
        for pos in acct.positions.values():
            if pos.mode == CROSS and pos.size:
                n += 1
        return n

    def _strands_isolated(self, acct: Account, symbol: int, pos: Position, margin: int) -> bool:
        """Whether an isolated position holding ``margin`` (less than now) would leave a live
        order against it priced beyond its bankruptcy price."""
        held = pos.margin
        pos.margin = margin
        found = self._stranded(acct, symbol)
        pos.margin = held
        return found

    def _stranded_orders(self, acct: Account, symbol: int) -> list:
        """The live orders of ``symbol`` (0: of every cross position) priced beyond their
        position's bankruptcy price as the account stands now (as _beyond_bankruptcy says
        of each; each position's price computed once)."""
        pos: Position
        bks = {}
        for sym, pos in acct.positions.items():
            if (sym == symbol if symbol else pos.mode == CROSS) and (
                    pos.size > 0 and pos.sell_leaves or pos.size < 0 and pos.buy_leaves):
                bk = self._bankruptcy(acct, sym, pos)
                if bk:
                    bks[sym] = bk
        if not bks:
            return []
        out = []
        for o in acct.orders.values():
            bk = bks.get(o.symbol)
            if bk is None or o.state == UNTRIGGERED:
                continue
            # an amend in flight: it may still fill at its old price, or already at the new
            price = o.price
            if o.amend_price and ((o.amend_price > price) if o.side == BUY
                                  else (o.amend_price < price)):
                price = o.amend_price
            if o.side == BUY:
                if acct.positions[o.symbol].size < 0 and price > bk:
                    out.append(o)
            elif acct.positions[o.symbol].size > 0 and price < bk:
                out.append(o)
        return out

    def _stranded(self, acct: Account, symbol: int) -> bool:
        return bool(self._stranded_orders(acct, symbol))

    def _cancel_stranded(self, acct: Account, symbol: int) -> None:
        """Cancel the orders _stranded_orders finds (reason 8, as at maintenance)."""
        for o in self._stranded_orders(acct, symbol):
            if o.pending != PENDING_CANCEL:
                self._send_cancel(o, REASON_LIQUIDATION)

    def _funding_owed(self, account: int, symbol: int = 0, part: int = OWED_ALL) -> int:
        """What the account will pay when the funding sweeps in flight reach it (on its sizes
        at their boundaries, whatever it holds by its turn; receipts not counted): of
        ``symbol``'s sweeps only if given; ``part`` OWED_CROSS: only what its cross balance
        will pay, OWED_OWN: only what isolated positions pay out of their own margins
        (_own_margin_pays); 0 with no sweep in flight. Each sweep's entries are indexed by account once
        (derived, not in the snapshot): a walk over them cost 12 ms per call at 200,000
        holders."""
        owed = 0
        positions = self.accounts[account].positions if part else None
        cache = self._owed_index
        live = []
        for sw in self.sweeps:
            if sw[0] == SWEEP_FUNDING:
                live.append(id(sw))
                if symbol and sw[1] != symbol:
                    continue
                got = cache.get(id(sw))
                if got is None or got[0] is not sw:
                    index = {}
                    entries = sw[7]
                    for k in range(len(entries)):
                        index[entries[k][0]] = k
                    got = cache[id(sw)] = (sw, index)
                k = got[1].get(account)
                if k is not None and k >= sw[2]:
                    if positions is not None:
                        pos = positions.get(sw[1])
                        if part == OWED_CROSS:
                            if pos is not None and _own_margin_pays(pos, sw[7][k][1]):
                                continue
                        elif pos is None or pos.mode != ISOLATED or not pos.size:
                            continue   # OWED_OWN: what an open isolated position may pay
                    amount = funding_payment(sw[7][k][1], sw[4], self.specs[sw[1]].value, sw[3])
                    if amount > 0:
                        owed += amount
        if len(cache) > len(live):
            for key in [key for key in cache if key not in live]:
                del cache[key]
        return owed

    def _owed_against(self, acct: Account, symbol: int, pos: Position) -> int:
        """The funding owed to sweeps in flight that counts against ``pos``: what it owes out
        of its own margin if it is isolated and pays so (_own_margin_pays), else what the
        cross balance owes. A cross payment never comes out of an isolated margin, nor an
        isolated one out of the cross balance: counted the other way round, an honest close
        at the mark was refused."""
        if not self.sweeps:
            return 0
        if pos.mode == ISOLATED:
            return self._funding_owed(acct.account_id, symbol, OWED_OWN)
        return self._funding_owed(acct.account_id, 0, OWED_CROSS)

    def _beyond_bankruptcy(self, acct: Account, o: Order, price: int, held: int = 0) -> bool:
        """Whether ``o`` at ``price`` would close (part of) its position beyond the
        position's bankruptcy price (as _risk_and_send refuses for a new order), with
        ``held`` more held (_bankruptcy)."""
        pos = acct.positions[o.symbol]
        if not pos.size or (pos.size > 0) == (o.side == BUY):
            return False
        bk = self._bankruptcy(acct, o.symbol, pos, held)
        return bool(bk) and ((price > bk) if o.side == BUY else (price < bk))

    def _bankruptcy(self, acct: Account, symbol: int, pos: Position, held: int = 0) -> int:
        """The price beyond which closing the position would cost more than the account
        has for it: an isolated position's margin; for a cross one the cross equity, the
        other positions' gains included (a solvent account must be able to close a loser
        that gains elsewhere keep alive, a stop-loss above all). ``held``: money about to
        be held besides (an order's own reservation, funding owed to a sweep in flight: for
        an isolated position the funding it owes itself, for a cross one what the cross
        balance owes, _owed_against). Rounded against the trader (a long's up, a
        short's down), as for the handoff: rounded to the nearest tick, a close half a tick
        beyond the exact price passed and the fund paid the rest."""
        if pos.mode == ISOLATED:
            base = pos.margin - held
        else:
            base = (acct.balance - self._isolated_margin(acct) - acct.order_margin - held
                    + self._cross_upnl(acct, skip=symbol))
        return bankruptcy_price(pos.size, pos.cost, base, self.specs[symbol], True)

    def _order_cost(self, acct: Account, o: Order, price: int, leaves: int) -> int:
        """What ``o`` would reserve with ``leaves`` at ``price`` next to the position now (its
        own leaves not counted as reducing ahead of it)."""
        pos = acct.positions[o.symbol]
        spec = self.specs[o.symbol]
        buy = o.side == BUY
        if buy:
            ahead = pos.buy_leaves - o.leaves - o.amend_grow
            reducible = -pos.size - ahead if pos.size < 0 else 0
        else:
            ahead = pos.sell_leaves - o.leaves - o.amend_grow
            reducible = pos.size - ahead if pos.size > 0 else 0
        opening = leaves - reducible if reducible > 0 else leaves
        return order_cost(opening, price, buy, self.marks[o.symbol], spec, pos.leverage_x100)

    def _cancel_all(self, payload: bytes) -> None:
        coid, account, symbol, side = CANCEL_ALL_S.unpack(payload)
        acct, code = self._account_or_code(account)
        if code:
            self._reject_request(CANCEL_ALL, code, account, symbol, coid)
            return
        if symbol and symbol not in self.specs:
            self._reject_request(CANCEL_ALL, 2004, account, symbol, coid)
            return
        if side and side != BUY and side != SELL:
            self._reject_request(CANCEL_ALL, 2005, account, symbol, coid)
            return
        self._cancel_orders(acct, symbol, side, REASON_MASS_CANCEL)

    def _cancel_orders(self, acct: Account, symbol: int, side: int, reason: int,
                       upto: int = -1, requester: tuple | None = None) -> int:
        """Cancel the account's orders (in one symbol, on one side, when given; with order ids
        up to ``upto``, when given); conditional ones at once, live ones through the
        CrossEngine. Returns how many. A session's mass cancel names itself as
        ``requester``: each order another session entered sends its report there too
        (PROTOCOL.md 202: each cancelled order gets its own ExecutionReport), as a single
        cancel of another session's order does."""
        n = 0
        for o in list(acct.orders.values()):
            if (symbol and o.symbol != symbol) or (side and o.side != side) \
                    or 0 <= upto < o.order_id:
                continue
            copy = requester is not None and o.sess != requester and o.cxl is None \
                and o.pending != PENDING_CANCEL
            if copy:
                o.cxl = (P_NULL_ID, requester)     # a copy of the report, no request's id
            if self._end_order(acct, o, reason):
                n += 1
            elif copy:
                o.cxl = None
        return n

    def _end_order(self, acct: Account, o: Order, reason: int) -> bool:
        """Cancel one order for the engine's reason: an untriggered one at once (Expired for
        the end of its day, else Canceled), a live one through the CrossEngine unless a cancel
        is already on its way. Whether it did either."""
        if o.state == UNTRIGGERED:
            self._drop(acct, o)
            if reason == REASON_END_OF_DAY:
                self._er(o, EXEC_EXPIRED, 0, 0, 0, reason, 0, STATUS_EXPIRED)
            else:
                self._er(o, EXEC_CANCELED, 0, 0, 0, reason, 0, STATUS_CANCELED)
            return True
        if o.pending != PENDING_CANCEL:
            self._send_cancel(o, reason)
            return True
        return False

    # -- account settings and transfers -------------------------------------------------------

    def _settings_target(self, kind: int, account: int, symbol: int) -> Account | None:
        acct, code = self._account_or_code(account)
        if not code and symbol not in self.specs:
            code = 2004
        if code:
            self._reject_request(kind, code, account, symbol, 0)
            return None
        return acct

    def _set_leverage(self, payload: bytes) -> None:
        account, symbol, lev = SET_LEVERAGE_S.unpack(payload)
        acct = self._settings_target(SET_LEVERAGE, account, symbol)
        if acct is None:
            return
        # a position row made for the request goes again when it is refused: a refused
        # request changes nothing, the state hash included
        fresh = symbol not in acct.positions
        if not self._leverage_set(acct, account, symbol, lev) and fresh:
            del acct.positions[symbol]

    def _leverage_set(self, acct: Account, account: int, symbol: int, lev: int) -> bool:
        """SetLeverage's checks and change; False when refused (answered)."""
        spec = self.specs[symbol]
        pos = self._position(acct, symbol)
        mark = self.marks.get(symbol, 0)
        # the risk limit as a new order meets it: each side's worst position valued at the
        # highest of its orders' prices and the mark (valued at the mark alone, an order
        # refused at 50x for its price's tier rested at 25x and went on at 50x)
        hi_buy = hi_sell = mark
        o: Order
        live = [o for o in acct.orders.values() if o.symbol == symbol and o.state != UNTRIGGERED]
        for o in live:
            p = o.amend_price if o.amend_price > o.price else o.price
            if o.side == BUY:
                hi_buy = p if p > hi_buy else hi_buy
            else:
                hi_sell = p if p > hi_sell else hi_sell
        worst = max(abs(pos.size) * mark, (pos.buy_leaves + pos.size) * hi_buy,
                    (pos.sell_leaves - pos.size) * hi_sell)
        tier = spec.tier(worst * spec.value)
        # (a leverage no higher than the current one lowers the risk: never refused for the
        # risk limit, which the orders met at entry each at its own price)
        if not X100 <= lev <= spec.max_leverage_x100 or lev > pos.leverage_x100 and (
                tier is None or lev > tier.max_leverage_x100):
            self._reject_request(SET_LEVERAGE, 2020, account, symbol, lev)
            return False
        before = pos.margin
        need = position_margin(pos.size, pos.cost, spec, lev) + pos.extra
        # the symbol's open orders are reserved at the new leverage too (never less than they
        # hold): a fill at a lower leverage would otherwise give the position a margin the
        # balance never held
        old_lev = pos.leverage_x100
        pos.leverage_x100 = lev
        more = []
        amending = False
        for o in live:
            # an amend in flight holds a reservation for leaves this engine does not know
            # yet: the leverage waits for its answer
            amending = amending or o.amend_qty != 0   # (a cancel may follow it)
            m = self._order_cost(acct, o, o.price, o.leaves) - o.margin
            if m > 0:
                more.append((o, m))
        pos.leverage_x100 = old_lev
        if amending:
            self._reject_request(SET_LEVERAGE, 2017, account, symbol, lev)
            return False
        grow = (need - before if need > before else 0) + sum(m for _o, m in more)
        if pos.mode == ISOLATED and grow and self.sweeps and self._funding_owed(account):
            self._reject_request(SET_LEVERAGE, 2045, account, symbol, lev)
            return False
        # (an isolated margin that grows takes money out of the cross equity, which must stay
        # above the cross positions' maintenance, as for AdjustIsolatedMargin: lowering an
        # isolated leverage left a cross short 2.54 USDT below it, handed off at the mark)
        if grow and grow > self._spendable(acct) or need > before and pos.mode == ISOLATED \
                and need - before >= self._cross_headroom(acct) \
                or need < before and pos.mode == ISOLATED \
                and (not self._isolated_safe(pos, spec, need)
                     or self._strands_isolated(acct, symbol, pos, need)):
            self._reject_request(SET_LEVERAGE, 2021, account, symbol, lev)
            return False
        # what leaves the cross balance: the orders' larger reservations, and an isolated
        # position's larger margin (a cross position's margin is the cross balance's still)
        held = grow if pos.mode == ISOLATED else sum(m for _o, m in more)
        if self._strands_cross_closes(acct, held):
            self._reject_request(SET_LEVERAGE, 2044, account, symbol, lev)
            return False
        pos.leverage_x100 = lev
        for o, m in more:
            o.margin += m
            acct.order_margin += m
        self._set_margin(acct, pos, spec)
        self._position_status(acct, symbol)
        self._account_status(acct)
        return True

    def _set_margin_mode(self, payload: bytes) -> None:
        account, symbol, mode = SET_MARGIN_MODE_S.unpack(payload)
        acct = self._settings_target(SET_MARGIN_MODE, account, symbol)
        if acct is None:
            return
        if mode not in (CROSS, ISOLATED):
            self._reject_request(SET_MARGIN_MODE, 2001, account, symbol, mode)
            return
        fresh = symbol not in acct.positions
        pos = self._position(acct, symbol)
        if pos.size or any(o.symbol == symbol for o in acct.orders.values()):
            if fresh:
                del acct.positions[symbol]   # a refused request changes nothing
            self._reject_request(SET_MARGIN_MODE, 2022, account, symbol, mode)
            return
        pos.mode = mode
        self._liq_dirty[acct.account_id] = None
        self._position_status(acct, symbol)

    def _adjust_margin(self, payload: bytes) -> None:
        account, symbol, amount = ADJUST_MARGIN_S.unpack(payload)
        acct = self._settings_target(ADJUST_MARGIN, account, symbol)
        if acct is None:
            return
        pos = acct.positions.get(symbol)
        code = 0
        if pos is None or pos.mode != ISOLATED or pos.size == 0:
            code = 2025
        elif amount == 0:
            code = 2023
        elif amount > 0 and (amount > self._available(acct)
                             or amount >= self._cross_headroom(acct)
                             or self._strands_closing_orders(acct, amount)):
            code = 2012
        elif amount > 0 and self.sweeps and self._funding_owed(account):
            code = 2045
        elif amount < 0 and (-amount > pos.extra or not self._isolated_safe(
                pos, self.specs[symbol], pos.margin + amount)
                or self._strands_isolated(acct, symbol, pos, pos.margin + amount)):
            code = 2026
        if code:
            self._reject_request(ADJUST_MARGIN, code, account, symbol, amount & (2**64 - 1))
            return
        pos.extra += amount
        self._set_margin(acct, pos, self.specs[symbol])
        self._position_status(acct, symbol)
        self._account_status(acct)

    def _transfer_seen(self, kind: int, transfer_id: int, account: int) -> bool:
        """True when the transfer must not be applied: its id was answered within the window
        (a repeat: no output), or it is at or below the highest id forgotten (refused:
        it may be a replay of a transfer older than the window)."""
        cutoff = self.ts_ns - TRANSFER_ID_WINDOW_NS
        queue = self._transfer_queue
        while queue and queue[0][0] <= cutoff:
            _ts, old = queue.popleft()
            del self.transfers[old]
            if old > self.transfer_floor:
                self.transfer_floor = old
        if transfer_id in self.transfers:
            return True
        if transfer_id <= self.transfer_floor:
            self._reject_request(kind, 2031, account, 0, transfer_id)
            return True
        self.transfers[transfer_id] = self.ts_ns    # answered once, rejected or not
        queue.append((self.ts_ns, transfer_id))
        return False

    def _deposit(self, payload: bytes) -> None:
        transfer_id, account, amount = TRANSFER_S.unpack(payload)
        if self._transfer_seen(DEPOSIT, transfer_id, account):
            return
        code = 0
        acct = self.accounts.get(account)
        if account >= RESERVED_ACCOUNT_MIN:
            code = _CODE["account_reserved"]
        elif not self._mine(account):
            code = 2002
        elif amount <= 0 or amount >= MAX_MONEY:
            code = 2023
        elif acct is not None and acct.balance + amount >= MAX_MONEY \
                or self.deposits - self.withdrawals + amount >= MAX_SHARD_MONEY:
            code = 2030
        if code:
            self._reject_request(DEPOSIT, code, account, 0, transfer_id)
            return
        if acct is None:
            acct = self.accounts[account] = Account(account)
        acct.balance += amount
        acct.transferred += amount
        self.deposits += amount
        self._liq_dirty[acct.account_id] = None
        self._out.append(_PACK[TRANSFER](TRANSFER, transfer_id, account, amount,
                                           acct.balance, DEPOSIT))
        self._account_status(acct)

    def _withdraw(self, payload: bytes) -> None:
        transfer_id, account, amount = TRANSFER_S.unpack(payload)
        if self._transfer_seen(WITHDRAW, transfer_id, account):
            return
        acct, code = self._account_or_code(account)
        if code:
            pass
        elif amount <= 0 or amount >= MAX_MONEY:
            code = 2023
        elif amount > self._available(acct) or amount >= self._cross_headroom(acct) \
                or self._strands_closing_orders(acct, amount) or self._funding_owed(account):
            code = 2024
        if code:
            self._reject_request(WITHDRAW, code, account, 0, transfer_id)
            return
        acct.balance -= amount
        acct.transferred -= amount
        self.withdrawals += amount
        self._liq_dirty[acct.account_id] = None
        self._out.append(_PACK[TRANSFER](TRANSFER, transfer_id, account, amount,
                                           acct.balance, WITHDRAW))
        self._account_status(acct)

    def _dead_mans_switch(self, payload: bytes) -> None:
        account, timeout_ms = DEAD_MANS_SWITCH_S.unpack(payload)
        acct, code = self._account_or_code(account)
        if not code and timeout_ms > 1 << 40:
            code = 2001
        if code:
            self._reject_request(DEAD_MANS_SWITCH, code, account, 0, timeout_ms)
            return
        acct.dms_timeout_ms = timeout_ms
        if timeout_ms:
            acct.dms_deadline = self.ts_ns + timeout_ms * 1_000_000
            self.dms[account] = acct.dms_deadline
        else:
            acct.dms_deadline = 0
            self.dms.pop(account, None)
        self._reset_timer()

    # -- prices, funding and timers ------------------------------------------------------------

    def _funding_inputs(self, payload: bytes) -> None:
        symbol, premium, interest = FUNDING_INPUTS_S.unpack(payload)
        if symbol not in self.specs:
            self._reject_request(FUNDING_INPUTS, 2004, 0, symbol, 0)
            return
        if not -PPM <= premium <= PPM or not -PPM <= interest <= PPM:
            # a premium or rate beyond 100% an interval is a broken source, not a market: the
            # cap would hide it; refused, the inputs stay as they were
            self._reject_request(FUNDING_INPUTS, 2046, 0, symbol, 0)
            return
        self.funding_inputs[symbol] = (premium, interest)

    def _mark(self, payload: bytes) -> None:
        symbol, price = MARK_PRICE_S.unpack(payload)
        spec = self.specs.get(symbol)
        if spec is None or not 0 < price <= spec.max_price:
            self._reject_request(MARK_PRICE, 2004 if spec is None else 2008, 0, symbol, 0)
            return
        self.marks[symbol] = price
        if symbol not in self.next_funding:
            interval = spec.funding_interval_ns
            self.next_funding[symbol] = (self.ts_ns // interval + 1) * interval
            self._reset_timer()
        # liquidation first: a handoff cancels the account's conditional orders in the symbol
        # at once, so a reduce-only stop that this mark also reaches is not sent to the
        # CrossEngine to fill after the position it was to reduce is gone (it opened one,
        # with no collateral behind it)
        self._check_maintenance(symbol, spec, price)
        self._trigger(symbol, BY_MARK, price)
        if symbol not in self.last_prices:
            self._trigger(symbol, BY_LAST, price)   # the mark stands in until a trade
        if self.ts_ns >= self._audit_next:
            # The audit walks every account: at most once per AUDIT_INTERVAL_NS of sequenced
            # time on the mark path, so that a mark costs what it crosses (it also runs after
            # every funding, in check_invariants and in `seqex audit`).
            self._audit_next = self.ts_ns + AUDIT_INTERVAL_NS
            self.audit()

    def _reset_timer(self) -> None:
        candidates = ([t for t in self.next_funding.values()] + [t for t in self.dms.values()]
                      + [t for t in self.cod.values()])
        self._timer_next = min(candidates) if candidates else 0

    def _fire_timers(self) -> None:
        now = self.ts_ns
        for account in sorted(a for a, t in self.dms.items() if t <= now):
            if not self._may_go_on():
                break            # the rest are still due: they fire at the next record
            acct = self.accounts[account]
            del self.dms[account]
            acct.dms_deadline = 0
            n = self._cancel_orders(acct, 0, 0, REASON_DEAD_MANS_SWITCH)
            self._out.append(_PACK[DEAD_MANS_SWITCH_FIRED](DEAD_MANS_SWITCH_FIRED, account,
                                                             n))
        for key in sorted(k for k, t in self.cod.items() if t <= now):
            sess = self.sessions[key]
            if not self._cancel_on_disconnect(key, sess):
                break            # the rest are still due: they go on at the next record
            del self.cod[key]
            sess.cod_deadline = 0
            if key in self.finalized:
                self._drop_session(key)
        for symbol in sorted(s for s, t in self.next_funding.items() if t <= now):
            interval = self.specs[symbol].funding_interval_ns
            while self.next_funding[symbol] <= now:
                self._settle_funding(symbol)
                self.next_funding[symbol] += interval
        self._reset_timer()

    def _settle_funding(self, symbol: int) -> None:
        """Settle one funding interval: a sweep over the positions held at the boundary
        (the holders', then the system accounts'), at this mark and rate, then
        FundingSettled and the audit. Paying on the sizes at the boundary, whenever each
        account's turn comes, keeps the payments netting to the dust alone."""
        spec = self.specs[symbol]
        mark = self.marks[symbol]
        premium, interest = self.funding_inputs.get(symbol, (0, 0))
        rate = funding_rate(premium, interest, spec.funding_cap_ppm)
        if rate:
            entries = [[a, self.accounts[a].positions[symbol].size]
                       for a in sorted(self.holders[symbol])]
            for acct in (self.clearing, self.liquidation):
                pos = acct.positions.get(symbol)
                if pos is not None and pos.size:
                    entries.append([acct.account_id, pos.size])
            self.sweeps.append([SWEEP_FUNDING, symbol, 0, rate, mark, 0, 0, entries])
            return
        self._out.append(_PACK[FUNDING_SETTLED](FUNDING_SETTLED, symbol, 0, mark, 0, 0, 0))
        self.audit()

    def _sweep_funding(self, sw: list) -> bool:
        _, symbol, cursor, rate, mark, paid, received, entries = sw
        spec = self.specs[symbol]
        for k in range(cursor, len(entries)):
            account, size = entries[k]
            if account >= 0 and not self._may_go_on():
                sw[2] = k
                return False
            if account == CLEARING_ID:
                acct = self.clearing
            elif account == LIQUIDATION_ID:
                acct = self.liquidation
            else:
                acct = self.accounts[account]
            amount = self._pay_funding(acct, symbol, spec, rate, mark, size)
            if amount > 0:
                paid += amount
            else:
                received -= amount
            sw[5], sw[6] = paid, received     # in flight: the audit counts it
        sw[5] = sw[6] = 0
        self.dust += paid - received
        self._out.append(_PACK[FUNDING_SETTLED](FUNDING_SETTLED, symbol, rate, mark, paid,
                                                  received, paid - received))
        self.audit()
        return True

    def _pay_funding(self, acct: Account, symbol: int, spec: ContractSpec, rate: int,
                     mark: int, size: int) -> int:
        """One account's funding on its position of ``size`` at the boundary. What the sweep
        has taken in and paid out so far is in flight in the sweep (the audit counts it)
        until it ends."""
        pos = acct.positions[symbol]
        # the clearing account, the mirror of the other shards' accounts, rounds toward zero
        # (margin.funding_payment)
        amount = funding_payment(size, mark, spec.value, rate, acct is self.clearing)
        if amount == 0:
            return 0
        acct.balance -= amount
        acct.funding_paid += amount
        self._liq_dirty[acct.account_id] = None
        if acct.account_id < 0:
            if acct is self.clearing and self.liq_sources:
                # With a LiqEngine, clearing holds the lots LIQ took over from this shard
                # (besides the mirror legs of other shards' trades): its funding is the
                # fund's. The LiqEngine books the same amount against the fund (its clearing
                # the other side), so that funding nets across engines: booked by no one,
                # held lots were paid 0.4365 USDT an interval that nobody paid.
                self.route |= ROUTE_LIQ
                self._out.append(_PACK[FUNDING](FUNDING, LIQ_ACCOUNT, symbol, rate, amount))
            return amount
        shortfall = 0
        # An isolated position pays out of its own margin. Changed after the boundary, before
        # its turn: one that grew still does (charged to the cross balance, the fund covered
        # the payment while its margin held plenty); one that closed or shrank pays out of
        # the balance its margin went back to, as a cross position does, and a shrunk one then
        # out of the margin it kept (its wallet emptied before the boundary, the fund covered
        # what the margin held)
        own = _own_margin_pays(pos, size)
        kept = False      # a shrunk isolated position's own margin paid part of it
        if not own and amount > 0:
            # a cross payment is the cross balance's: what it cannot pay is covered, never
            # taken from the margins of other isolated positions (which lose no more than
            # their own)
            iso = self._isolated_margin(acct)
            if acct.balance < iso:
                shortfall = min(amount, iso - acct.balance)
                if pos.mode == ISOLATED and pos.size:
                    # (at zero margin too: what is left comes out of its own gain, not the
                    # fund's pocket while the position holds a gain)
                    take = shortfall if shortfall < pos.margin else pos.margin
                    if take:
                        pos.extra -= take
                        self._set_margin(acct, pos, spec)
                        shortfall -= take
                    kept = True
        elif own:
            # isolated funding moves that position's margin, never below zero: a payment
            # comes out of the margin (its extra may go below zero, down to minus the
            # requirement), and what the margin cannot pay is covered like a deficit, since
            # the position can lose no more than its margin
            floor = pos.extra - pos.margin            # minus the requirement
            extra = pos.extra - amount
            if extra < floor:
                shortfall = floor - extra
                extra = floor
            pos.extra = extra
            self._set_margin(acct, pos, spec)
        self._out.append(_PACK[FUNDING](FUNDING, acct.account_id, symbol, rate, amount))
        if shortfall:
            # what the margin or the cross balance cannot pay comes out of the unrealised gain
            # of the position it is for (and, for a cross payment, of the account's other
            # cross positions): realised at the mark, its entry moving against it by as much;
            # only what no gain pays is covered. (Covered, a position in profit kept its gain
            # and the insurance fund paid its funding interval after interval: its margin,
            # at zero, plus its gain stayed above maintenance, so it was never handed off.)
            shortfall = self._funding_from_gains(acct, symbol, shortfall, own or kept)
        self._cover_shortfall(acct, shortfall)
        if amount > 0 and acct.orders:
            # the money behind the position went down, its bankruptcy price towards the
            # mark: a closing order now priced beyond it would make the fund pay the rest
            self._cancel_stranded(acct, symbol if own else 0)
            if kept:
                self._cancel_stranded(acct, symbol)
        # the balance moved: the position's liquidation and bankruptcy prices with it, and
        # the LiqEngine ranks ADL by what AccountStatus last told it
        self._position_status(acct, symbol)
        self._account_status(acct)
        return amount

    def _funding_from_gains(self, acct: Account, symbol: int, shortfall: int,
                            isolated: bool) -> int:
        """Pay up to ``shortfall`` of funding out of unrealised gains at the marks: of the
        isolated position ``symbol`` alone (``isolated``), else of the account's cross
        positions, ``symbol``'s first. A gain taken is realised (the position's cost moves by
        it, its realised PnL takes it, and the balance with it). Returns what is left."""
        pos: Position
        for sym in ([symbol] if isolated else [symbol, *sorted(acct.positions)]):
            pos = acct.positions.get(sym)
            if pos is None or not pos.size or (not isolated and pos.mode != CROSS):
                continue
            mark = self.marks.get(sym, 0)
            if not mark:
                continue          # (no mark, no gain to speak of; valued at 0, a short's was all)
            spec = self.specs[sym]
            gain = pos.size * mark * spec.value - pos.cost
            if gain <= 0:
                continue
            take = gain if gain < shortfall else shortfall
            held = pos.margin
            pos.cost += take
            pos.realised += take
            acct.balance += take
            if pos.mode == ISOLATED:   # its margin stays what it was (the requirement moved)
                pos.extra = held - position_margin(pos.size, pos.cost, spec, pos.leverage_x100)
            self._set_margin(acct, pos, spec)
            if sym != symbol:
                self._position_status(acct, sym)
            shortfall -= take
            if not shortfall:
                break
        return shortfall

    def _trigger(self, symbol, by, price) -> None:
        """Fire the conditional orders that ``price`` reaches: a sweep, in order id order,
        over the orders that exist now (later ones were checked against a newer price)."""
        if not self.conditional[symbol]:
            return
        self.sweeps.append([SWEEP_TRIGGER, symbol, 0, by, price, self.next_order_id - 1])

    def _sweep_trigger(self, sw: list) -> bool:
        _, symbol, cursor, by, price, last = sw
        waiting = self.conditional[symbol]
        index = self._trig_index[symbol]
        # the orders whose trigger the price reached, from the trigger index: rising to it,
        # or falling to it
        fired = [k & 0xFFFFFFFFFFFFFFFF for k in index[by * 2 + 1].below((price + 1) << 64)]
        fired.extend([k & 0xFFFFFFFFFFFFFFFF for k in index[by * 2].at_least(price << 64)])
        fired = sorted([i for i in fired if cursor <= i <= last])
        return self._fire_triggered(sw, waiting, fired)

    def _walk_trigger(self, sw: list) -> bool:
        """The trigger sweep as a scan of every waiting order (the reference's)."""
        _, symbol, cursor, by, price, last = sw
        waiting = self.conditional[symbol]
        fired = sorted(i for i, o in waiting.items()
                       if cursor <= i <= last and o.trigger_by == by and _fires(o, price))
        return self._fire_triggered(sw, waiting, fired)

    def _fire_triggered(self, sw: list, waiting: dict, fired: list) -> bool:
        symbol = sw[1]
        for order_id in fired:
            o = waiting.get(order_id)
            if o is None:
                continue      # cancelled in this sweep (a handoff of its account, below)
            # a taker goes in this record only if the steps it may take are left to it (the
            # record's first taker has them all)
            taken = self._steps + self._cmd_steps
            if taken and taken + self._taker_steps(o.leaves) > CE_MAX_FILLS:
                sw[2] = order_id
                return False
            if not self._may_go_on():
                sw[2] = order_id
                return False
            acct = self.accounts[o.account]
            mark = self.marks.get(symbol)
            if mark is not None:
                # the account's maintenance at the mark now comes first (§6): a sweep of an
                # older mark's triggers may run after a newer mark put the account below
                # maintenance, before the maintenance sweep reaches it (a reduce-only stop
                # went out ahead of its handoff and opened a short on nothing); a handoff
                # cancels the order here
                self._maintain(acct, symbol, self.specs[symbol], mark)
                if waiting.get(order_id) is not o:
                    continue      # (and the account's other orders fired here with it)
            self._er(o, EXEC_TRIGGERED, 0, 0, 0, 0, 0, STATUS_NEW)
            # checked as a new order: still conditional, so its own leaves are not counted
            code = self._risk_and_send(acct, o, self.specs[symbol])
            if code:
                self._drop(acct, o)
                self._er(o, EXEC_REJECTED, 0, 0, 0, code, 0, STATUS_REJECTED)
            else:
                del waiting[o.order_id]
                self._trig_remove(o)
                o.state = PENDING_NEW
                self._size += TAKER_RESERVE
        return True

    def _trig_key(self, o: Order) -> tuple:
        up = (o.trigger_kind == TRIGGER_STOP) == (o.side == BUY)
        return (self._trig_index[o.symbol][o.trigger_by * 2 + (1 if up else 0)],
                o.trigger_price << 64 | o.order_id)

    def _trig_add(self, o: Order) -> None:
        index, key = self._trig_key(o)
        index.add(key)

    def _trig_remove(self, o: Order) -> None:
        index, key = self._trig_key(o)
        index.remove(key)

    # -- maintenance and liquidation -------------------------------------------------------

    def _check_maintenance(self, symbol: int, spec: ContractSpec, mark: int) -> None:
        """Check every holder of ``symbol`` at the new mark: a sweep at the end of the queue.
        One still going for this symbol goes on where it is, at the new mark (each unit reads
        the mark): the maintenance check comes before the triggers of a mark (§6), and moved
        behind them, a reduce-only stop an older mark reached went to the CrossEngine ahead of
        its account's handoff and its fill opened a position on nothing; the new sweep checks
        the holders it had passed. One not started yet checks everyone at the mark it finds:
        no other is queued (at most two a symbol, so marks never starve the sweeps behind)."""
        sweeps = self.sweeps
        for sw in sweeps:
            if sw[0] == SWEEP_MAINTENANCE and sw[1] == symbol and sw[2] < 0:
                return
        sweeps.append([SWEEP_MAINTENANCE, symbol, -1])

    def _sweep_maintenance(self, sw: list) -> bool:
        """The maintenance sweep through the liquidation-trigger index: only the holders whose
        conservative trigger the mark crossed are checked, in account order, and the output
        budget stops the sweep exactly where the walk over every holder
        (``_walk_maintenance``) stops: a holder whose trigger the mark did not cross is not
        below maintenance, so its check does nothing and its unit outputs nothing."""
        symbol = sw[1]
        spec = self.specs[symbol]
        mark = self.marks[symbol]
        p = sw[2]
        cands = self._liq_candidates(symbol, mark, p)
        k = 0
        if not self._unit_done:
            # the walk's first holder at or after the cursor takes the record's first unit
            if not cands and (not self.holders[symbol] if p < 0
                              else self._next_holder(symbol, p) is None):
                return True
            self._unit_done = True
            if self._over_budget():
                h = self._next_holder(symbol, p)
                if cands[0] == h if cands else False:
                    self._maintain(self.accounts[h], symbol, spec, mark)
                    k = 1
                p = h + 1
        for i in range(k, len(cands)):
            account = cands[i]
            if self._over_budget():
                sw[2] = self._next_holder(symbol, p)
                return False
            self._maintain(self.accounts[account], symbol, spec, mark)
            p = account + 1
        # the holders after the last candidate: each would be a unit doing nothing
        if self._over_budget():
            h = self._next_holder(symbol, p)
            if h is not None:
                sw[2] = h
                return False
        return True

    def _walk_maintenance(self, sw: list) -> bool:
        """The maintenance sweep as a walk over every holder (the reference's and the
        benchmark's baseline): each holder is a unit."""
        symbol = sw[1]
        spec = self.specs[symbol]
        mark = self.marks[symbol]
        for account in sorted(a for a in self.holders[symbol] if a >= sw[2]):
            if not self._may_go_on():
                sw[2] = account
                return False
            self._maintain(self.accounts[account], symbol, spec, mark)
        return True

    def _next_holder(self, symbol: int, p: int):
        """The lowest holder of ``symbol`` at or above ``p``, None if none: a scan, run only
        where a sweep stops over the output budget."""
        best = None
        for a in self.holders[symbol]:
            if a >= p and (best is None or a < best):
                best = a
        return best

    def _liq_candidates(self, symbol: int, mark: int, p: int) -> list:
        """The holders of ``symbol`` at or above ``p`` whose trigger ``mark`` crossed, and the
        cross accounts holding it with other cross positions, ascending."""
        if self._liq_dirty:
            self._liq_flush()
        out = [k & 0xFFFFFFFF for k in self._liq_long[symbol].at_least(mark << 32)]
        out.extend([k & 0xFFFFFFFF for k in self._liq_short[symbol].below((mark + 1) << 32)])
        out.extend(self._liq_always[symbol])
        if p >= 0:
            out = [a for a in out if a >= p]
        out.sort()
        return out

    def _liq_flush(self) -> None:
        """Re-key the accounts changed since the index last saw them."""
        dirty = self._liq_dirty
        self._liq_dirty = {}
        accounts = self.accounts
        for a in dirty:
            acct = accounts.get(a)
            if acct is not None:
                self._liq_rekey(acct)

    def _liq_rekey(self, acct: Account) -> None:
        """The account's positions' triggers from its state now. A trigger is conservative:
        for a long, the highest mark at which it could be at maintenance; for a short, the
        lowest. With K the money behind the position less its cost (an isolated one: its
        margin; a cross one: the balance less order margins and isolated margins), equity at
        mark m is K + size*m*value and maintenance is below |size|*m*value*R/1e6 + 2 (R the
        highest tier's rate plus the taker fee), so a long is safe above
        (2 - K)*1e6 / (size*value*(1e6 - R)) and a short below (K - 2)*1e6 /
        (|size|*value*(1e6 + R)). A cross account with more than one cross position depends
        on other marks: it is checked at every mark of each of its symbols."""
        a = acct.account_id
        pos: Position
        iso = 0
        ncross = 0
        for pos in acct.positions.values():
            if pos.mode == ISOLATED:
                iso += pos.margin
            elif pos.size:
                ncross += 1
        for sym, pos in acct.positions.items():
            keys = self._liq_keys[sym]
            old = keys.pop(a, None)
            if old is not None:
                if old >= 0:
                    self._liq_long[sym].remove(old)
                else:
                    self._liq_short[sym].remove(-old - 1)
            always = self._liq_always[sym]
            if a in always:
                del always[a]
            size = pos.size
            if not size:
                continue
            if pos.mode == ISOLATED:
                k = pos.margin - pos.cost
            elif ncross > 1:
                always[a] = None
                continue
            else:
                k = acct.balance - iso - acct.order_margin - pos.cost
            spec = self.specs[sym]
            rate = self._liq_rate[sym]
            if size > 0:
                den = size * spec.value * (PPM - rate)
                trig = spec.max_price if den <= 0 else (2 - k) * PPM // den
                if trig < 1:
                    continue             # no mark reaches it
                if trig > spec.max_price:
                    trig = spec.max_price
                key = trig << 32 | a
                self._liq_long[sym].add(key)
                keys[a] = key
            else:
                den = -size * spec.value * (PPM + rate)
                trig = -((-(k - 2) * PPM) // den)
                if trig > spec.max_price:
                    continue             # no mark reaches it
                if trig < 0:
                    trig = 0
                key = trig << 32 | a
                self._liq_short[sym].add(key)
                keys[a] = -key - 1

    def _maintain(self, acct: Account, symbol: int, spec: ContractSpec, mark: int) -> None:
        """Cancel the orders of an account below maintenance, and hand its position to
        liquidation if that is not enough."""
        pos = acct.positions.get(symbol)
        if pos is None or pos.size == 0:
            return
        if pos.mode == ISOLATED:
            equity = pos.margin + pos.size * mark * spec.value - pos.cost
            if equity > maintenance(pos.size, mark, spec):
                return
            self._cancel_orders(acct, symbol, 0, REASON_LIQUIDATION)
            self._hand_off(acct, symbol, pos, spec, pos.margin)
            return
        need = self._cross_maintenance(acct)
        # every order of the account holds cross money, whatever its symbol: all of them go
        # before a position does
        held = acct.order_margin
        base = self._cross_base(acct, symbol, orders_excluded=held)
        equity = base + pos.size * mark * spec.value - pos.cost
        other = self._cross_upnl(acct, skip=symbol)
        if other > 0:
            equity += other    # gains elsewhere keep a cross account alive
        if equity - held > need:
            if acct.orders and self._cross_positions(acct) > 1:
                # several cross positions: this mark moved the bankruptcy prices of the
                # others, and a close resting against one of them may now be beyond its own
                # (its fill would realise a loss the balance does not hold)
                self._cancel_stranded(acct, 0)
            return
        self._cancel_orders(acct, 0, 0, REASON_LIQUIDATION)
        if equity > need:
            return               # the cancels release enough
        self._hand_off(acct, symbol, pos, spec, base)
        # the handoff took the account's money but what the other cross positions' losses
        # need: they are left at no more than zero equity, each checked now at its own mark
        # (not at its symbol's next one, which the market may have run past)
        # (in symbol order: the order of the account's positions dict is not the same in a
        # replica restored from a snapshot)
        for sym in sorted(acct.positions):
            other = acct.positions[sym]
            if sym != symbol and other.size and other.mode == CROSS and sym in self.marks:
                self._maintain(acct, sym, self.specs[sym], self.marks[sym])

    def _hand_off(self, acct: Account, symbol: int, pos: Position, spec: ContractSpec,
                  base: int) -> None:
        """Close the position at its bankruptcy price into the liquidation account (clearing,
        the LiqEngine's side, with liq_sources); the money behind it that is left (the fee
        reserve and rounding) goes with it."""
        size = pos.size
        price = bankruptcy_price(size, pos.cost, base, spec, for_handoff=True)
        value = size * price * spec.value
        realised = value - pos.cost
        residue = base + realised
        if residue < 0:
            # the other cross positions' losses exceed what the account holds, and even the
            # clamped price (one tick, or the highest) does not make this position pay them:
            # it carries no money; what the account still owes stays with those positions and
            # is covered when they are handed off (DeficitCovered), not paid out now
            residue = 0
        acct.balance += realised - residue
        acct.liquidated += residue
        pos.realised += realised
        pos.size = 0
        pos.cost = 0
        pos.extra = 0
        self.holders[symbol].pop(acct.account_id, None)
        self._set_margin(acct, pos, spec)
        taker = self.clearing if self.liq_sources else self.liquidation
        self._book(taker, symbol, size, price, spec)
        taker.balance += residue
        taker.liquidated -= residue
        self.route |= ROUTE_LIQ
        self._out.append(_PACK[LIQUIDATION](LIQUIDATION, acct.account_id, symbol, size,
                                              price, value, residue))
        self._cover_deficit(acct)
        self._position_status(acct, symbol)
        self._account_status(acct)

    def _cover_deficit(self, acct: Account) -> None:
        """A balance never stays below zero: the liquidation account (the insurance fund's
        side of the books; clearing, the LiqEngine's side, with liq_sources) takes the
        deficit."""
        if acct.balance < 0:
            deficit = -acct.balance
            acct.balance = 0
            self._cover(acct, deficit)

    def _cover_shortfall(self, acct: Account, shortfall: int) -> None:
        """Cover ``shortfall`` (what the account cannot bear of a payment or a loss already
        taken from its balance: given back to it) and any deficit the balance still shows:
        one DeficitCovered for both."""
        acct.balance += shortfall
        if acct.balance < 0:
            shortfall -= acct.balance
            acct.balance = 0
        if shortfall:
            self._cover(acct, shortfall)

    def _cover(self, acct: Account, deficit: int) -> None:
        """The liquidation account (clearing, with liq_sources) pays ``deficit``, which the
        account's balance has already been given back."""
        acct.covered += deficit
        self._liq_dirty[acct.account_id] = None
        payer = self.clearing if self.liq_sources else self.liquidation
        payer.balance -= deficit
        payer.covered -= deficit
        self.route |= ROUTE_LIQ
        self._out.append(_PACK[DEFICIT_COVERED](DEFICIT_COVERED, acct.account_id, deficit))

    # -- the LiqEngine's ADLs (docs/liqengine.md §5) ---------------------------------------------

    def _liq_apply(self, payload: bytes) -> None:
        """A LiqEngine output payload: apply, in order, every Adl for an account of this shard;
        the other events are for the other engines. The whole payload is walked first: one
        this engine cannot walk is a deployment mismatch and halts it, before any change."""
        n = len(payload)
        off = 0
        adls = []
        while off < n:
            t = payload[off]
            size = _LIQ_SIZES.get(t, 0)
            if size and t == LIQ_CE_COMMAND and off + size <= n:
                size += _U16(payload, off + 7)[0]
            if not size or off + size > n:
                raise EngineHalted(f"malformed LiqEngine output at offset {off} (event type {t}) "
                                   f"in record {self.seq}: a deployment mismatch")
            if t == LIQ_ADL and self._mine(_LIQ_ADL(payload, off)[2]):
                adls.append(off)
            off += size
        if len(adls) > MAX_ADLS_PER_RECORD:
            raise EngineHalted(f"LiqEngine record {self.seq} holds {len(adls)} Adls for shard "
                               f"{self.shard}, over {MAX_ADLS_PER_RECORD}: a deployment mismatch")
        for off in adls:
            _, adl_id, account, symbol, qty, price = _LIQ_ADL(payload, off)
            self._adl(adl_id, account, symbol, qty, price)

    def _adl(self, adl_id: int, account: int, symbol: int, qty: int, price: int) -> None:
        """Cancel the account's orders in the symbol, close min(|qty|, |size|) of its position
        at the ADL price against clearing (when the position is on the side the ADL reduces;
        no fee), and say what was done in AdlApplied (qty 0: nothing)."""
        acct: Account = self.accounts.get(account)
        spec = self.specs.get(symbol)
        closed = realised = released = 0
        racing = False
        if acct is not None and spec is not None:
            # a live order of the symbol is cancelled through the CrossEngine, a record later:
            # a fill of it may be on its way
            for o in acct.orders.values():
                if o.symbol == symbol and o.state != UNTRIGGERED:
                    racing = True
                    break
            self._cancel_orders(acct, symbol, 0, REASON_LIQUIDATION)
            pos: Position = acct.positions.get(symbol)
            size = pos.size if pos is not None else 0
            if size and qty and (qty > 0) != (size > 0) and 0 < price <= spec.max_price:
                held = size if size > 0 else -size
                want = qty if qty > 0 else -qty
                closed = want if want < held else held
                if qty < 0:
                    closed = -closed
                before, margin = pos.realised, pos.margin
                self._book(acct, symbol, closed, price, spec)
                self._book(self.clearing, symbol, -closed, price, spec)
                realised = pos.realised - before
                released = margin - pos.margin
                # the orders that were to reduce it, cancelled above, may still fill on their
                # way out: they reserve what they would now open
                self._refit_reducing(acct, symbol, SELL if size > 0 else BUY)
                if realised < 0 and pos.mode == CROSS and (
                        acct.orders or self._cross_closes(acct, symbol)):
                    # the loss moved the other cross positions' bankruptcy prices (as a fill's),
                    # and, at a price worse than the mark, took money the account's orders
                    # reserve (an opening order left reserving more than the balance filled
                    # unbacked: the fund paid 19.65 USDT)
                    self._queue_unit(SWEEP_CHECK, symbol, account)
        self.route |= ROUTE_LIQ
        self._out.append(_PACK[ADL_APPLIED](ADL_APPLIED, adl_id, account, symbol, closed,
                                              price, realised))
        if closed:
            self._cover_shortfall(acct, self._adl_shortfall(
                acct, symbol, pos, -realised, released, racing) if realised < 0 else 0)
            self._position_status(acct, symbol)
            self._account_status(acct)

    def _adl_shortfall(self, acct: Account, symbol: int, pos: Position, loss: int,
                       released: int, racing: bool) -> int:
        """What of an ADL's ``loss`` (at the bankruptcy price of the position handed off,
        after a gap worse than the mark) the account cannot bear, to be covered. On an
        isolated position the lots closed lose no more than the margin they held
        (``released``): the rest of the position keeps its margin, so its bankruptcy price
        does not move under a close of it already on its way (taken from that margin, the
        rest sat at the mark and a close in flight filled beyond it: the fund paid 14.73
        USDT). A cross loss the cross balance cannot pay (the balance left below the isolated
        margins) comes out of the cross positions' gains at the marks, which moves no cross
        bankruptcy price (balance and cost move together), never out of an isolated margin.
        Booked whole on the balance, an isolated ADL took 60 USDT past its margin out of the
        cross balance and left cross closes beyond their bankruptcy prices; covered at once,
        the fund paid while the account kept a cross gain. With no order of the symbol
        ``racing`` (none was live: nothing can fill beyond a moved bankruptcy price), the rest
        of an isolated position pays first out of its own gain at the mark, as for funding
        (covered, the fund paid 60.54 USDT while the rest kept a 30 USDT gain)."""
        if pos.mode == ISOLATED:
            if loss <= released:
                return 0
            if racing:
                return loss - released
            return self._funding_from_gains(acct, symbol, loss - released, True)
        iso = self._isolated_margin(acct)
        if acct.balance >= iso:
            return 0
        shortfall = iso - acct.balance
        if shortfall > loss:
            shortfall = loss
        return self._funding_from_gains(acct, symbol, shortfall, False)

    # -- CrossEngine results -------------------------------------------------------------------

    def _ce_events(self, payload: bytes) -> None:
        symbol = CE_EVENTS_S.unpack_from(payload)[0]
        if symbol not in self.specs:
            self._reject_request(CE_EVENTS, 2004, 0, symbol, 0)
            return
        self._ce_apply(symbol, payload, 4)

    def _ce_apply(self, symbol: int, payload: bytes, start: int) -> None:
        """Apply the CrossEngine output of ``symbol`` in payload[start:]."""
        spec = self.specs[symbol]
        off = start
        n = len(payload)
        # validate the whole payload before acting on any of it
        while off < n:
            size = _CE_SIZE(payload[off])
            if size is None or off + size > n:
                raise EngineHalted(f"malformed CrossEngine events for symbol {symbol} at {off}")
            off += size
        off = start
        traded = False
        touched = self._touched = {}
        while off < n:
            kind = payload[off]
            unpack = _CE_UNPACK[kind]
            if kind == CE_TRADE:
                self._trade(symbol, spec, _CE_TRADE(payload, off))
                traded = True
            elif kind == CE_ACCEPTED:
                self._accepted(symbol, unpack(payload, off))
            elif kind == CE_CANCELLED or kind == CE_EXPIRED:
                self._cancelled(symbol, unpack(payload, off))
            elif kind == CE_REJECTED:
                self._ce_rejected(symbol, unpack(payload, off))
            elif kind == CE_AMENDED:
                self._amended(symbol, unpack(payload, off))
            elif kind == CE_MASS_CANCELLED:
                self._mass_cancelled(symbol, unpack(payload, off))
            off += _CE_SIZE(kind)
        if self._to_check:
            # an order reserves its loss against the mark when it is entered, and the mark
            # may run past it while it rests: an account that opened at such a loss (or whose
            # reservations the fill left above its balance) is checked now, a sweep unit
            # each (its cancels and handoffs bounded like the maintenance sweep's), not at
            # the symbol's next mark
            checks, self._to_check = self._to_check, {}
            for account, sym in checks:
                self._queue_unit(SWEEP_CHECK, sym, account)
        # one position and account status per account the record touched, after its fills
        seen: dict[int, Account] = {}
        for (_, sym), acct in touched.items():
            self._position_status(acct, sym)
            seen[acct.account_id] = acct
        for acct in seen.values():
            self._account_status(acct)
        # resting reduce-only orders follow the new positions (a sweep: one unit an account)
        for (account, sym), acct in touched.items():
            if acct.positions[sym].reduce_only:
                self._queue_reduce_only(sym, account)
        if traded:
            self._trigger(symbol, BY_LAST, self.last_prices[symbol])

    def _own_order(self, account, order_id) -> tuple[Account | None, Order | None]:
        if not self._mine(account):
            return None, None
        o: Order = self.orders.get(order_id)
        if o is None or o.account != account:
            return self.accounts.get(account), None
        return self.accounts[account], o

    def _accepted(self, symbol, ev: tuple) -> None:
        o: Order
        _, ce_id, coid, account = ev[:4]
        acct, o = self._own_order(account, coid)
        if o is None or o.state != PENDING_NEW:
            return
        o.state = OPEN
        o.ce_id = ce_id
        self.ce_orders[symbol][ce_id] = o
        self._er(o, EXEC_NEW)

    def _ce_rejected(self, symbol: int, ev: tuple) -> None:
        _, coid, account, code, _ce_id = ev
        acct, o = self._own_order(account, coid)
        if o is None:
            return
        if o.state == PENDING_NEW:
            # the CrossEngine answers commands in order: while the order is not yet accepted,
            # a reject is the reject of the order itself (a later cancel's reject then finds
            # no order and is ignored)
            self._drop(acct, o)
            o.leaves = 0                     # a refused order holds nothing
            if code == CE_FOK_NOT_FILLABLE:
                # PROTOCOL.md: an FOK that cannot fill in full is killed, Expired with the
                # IOC/FOK remainder reason, as an IOC's remainder is; not a risk reject
                self._er(o, EXEC_EXPIRED, 0, 0, 0, REASON_IOC_REMAINDER, 0, STATUS_EXPIRED)
            else:
                self._er(o, EXEC_REJECTED, 0, 0, 0, code, 0, STATUS_REJECTED)
            return
        # an amend, or a cancel; or an amend a cancel followed (the end of the day, a
        # liquidation, a mass cancel): the CrossEngine refuses a cancel of an order it holds
        # never, and one it does not hold only as unknown, so any other code is the amend's,
        # and the cancel is still in flight
        amend = o.pending == PENDING_AMEND or (o.pending == PENDING_CANCEL
                                               and code != CE_UNKNOWN_ORDER)
        to = 2 if amend else 1
        if amend:
            o.amend_price = 0
            grow = o.amend_grow
            o.amend_qty = 0
            if grow:
                pos = acct.positions[symbol]
                if o.side == BUY:
                    pos.buy_leaves -= grow
                else:
                    pos.sell_leaves -= grow
            self._fit_margin(acct, o)
            if o.flags & FLAG_REDUCE_ONLY:
                self._queue_reduce_only(symbol, account)   # a cut that waited for it
        if o.pending != PENDING_CANCEL or not amend:
            o.pending = NO_PENDING
        self._cancel_rejected(account, 0, o.client_order_id, code, to)
        if o.sess is not None or o.cxl is not None or o.rpl is not None:
            self._session_async_cancel_reject(o, to, code)

    def _fit_margin(self, acct: Account, o: Order) -> None:
        """After an amend, hold what the order needs now: less than the amend held while in
        flight when it went down, more when fills in between released the reservation of
        the leaves before it (in proportion to the old leaves). A reduce-only order too holds
        what it opens if the orders ahead of it on its side fill first (a cut of it is a
        record away when they do)."""
        need = self._order_cost(acct, o, o.price, o.leaves)
        acct.order_margin += need - o.margin
        o.margin = need
        self._liq_dirty[acct.account_id] = None

    def _mass_cancelled(self, symbol: int, ev: tuple) -> None:
        """The CrossEngine cancelled every order of an account (on a side), or of the whole
        book, in one event: the orders it covers are those it had accepted (CrossEngine ids
        up to the event's last id) and still lived, which this engine knows, since it has
        applied every earlier CrossEngine event of the symbol."""
        _, scope, account, side, reason, _count, last_ce_id = ev
        if scope == CE_SCOPE_BOOK:
            if self.ce_orders[symbol]:
                self.sweeps.append([SWEEP_MASS_CANCELLED, symbol, 0, last_ce_id, reason])
            return
        acct = self.accounts.get(account) if self._mine(account) else None
        if acct is None:
            return
        covered = [o for o in acct.orders.values()
                   if o.symbol == symbol and o.ce_id and o.ce_id <= last_ce_id
                   and (side == 0 or o.side == side)]
        for o in covered:          # at most MAX_OPEN_ORDERS
            self._cancel_done(acct, o, symbol, CE_CANCELLED, o.leaves, reason)

    def _sweep_mass_cancelled(self, sw: list) -> bool:
        _, symbol, cursor, last_ce_id, reason = sw
        orders = self.ce_orders[symbol]
        for ce_id in sorted(i for i in orders if cursor <= i <= last_ce_id):
            if not self._may_go_on():
                sw[2] = ce_id
                return False
            o = orders[ce_id]
            self._cancel_done(self.accounts[o.account], o, symbol, CE_CANCELLED, o.leaves,
                              reason)
        return True

    def _queue_reduce_only(self, symbol: int, account: int) -> None:
        self._queue_unit(SWEEP_REDUCE_ONLY, symbol, account)

    def _queue_unit(self, kind: int, symbol: int, account: int) -> None:
        """A one-account sweep unit, unless one of that kind for it is already queued. A check
        goes ahead of every sweep but the checks queued before it: behind a funding sweep
        that spans records, the closes it cancels stayed live for as long (and were lifted)."""
        sweeps = self.sweeps
        for sw in sweeps:
            if sw[0] == kind and sw[1] == symbol and sw[2] == account:
                return
        if kind == SWEEP_CHECK:
            i = 0
            while i < len(sweeps) and sweeps[i][0] == SWEEP_CHECK:
                i += 1
            sweeps.insert(i, [kind, symbol, account])
            return
        sweeps.append([kind, symbol, account])

    def _sweep_check(self, sw: list) -> bool:
        """One account a fill left short (its reservations and margins above its balance:
        its newest orders that hold money are cancelled until they are not, reason 8) or
        opened at a loss against the mark (below maintenance: handed off)."""
        if not self._may_go_on():
            return False
        acct = self.accounts.get(sw[2])
        if acct is not None:
            short = acct.order_margin + acct.position_margin - acct.balance
            if short > 0:
                for o in sorted(acct.orders.values(), key=_order_id, reverse=True):
                    if o.margin and o.state != UNTRIGGERED and o.pending != PENDING_CANCEL:
                        self._send_cancel(o, REASON_LIQUIDATION)
                        short -= o.margin
                        if short <= 0:
                            break
            mark = self.marks.get(sw[1])
            if mark is not None:
                self._maintain(acct, sw[1], self.specs[sw[1]], mark)
            if acct.orders:
                # the fill's realised loss (or margin) moved the other positions' bankruptcy
                # prices: the closes it left beyond theirs go (reason 8)
                self._cancel_stranded(acct, 0)
        return True

    def _day_end(self) -> None:
        """The day of sequenced time ended: every Day order of that day expires (a sweep, in
        order id order, within the output budget of each record)."""
        ids = sorted(i for i, o in self.orders.items() if o.tif == DAY)
        if ids:
            self.sweeps.append([SWEEP_DAY_END, 0, ids])

    def _sweep_day_end(self, sw: list) -> bool:
        ids = sw[2]
        while sw[1] < len(ids):
            o = self.orders.get(ids[sw[1]])
            if o is None or o.pending == PENDING_CANCEL:
                sw[1] += 1               # done since, or on its way out already
                continue
            if not self._may_go_on():
                return False
            sw[1] += 1
            self._end_order(self.accounts[o.account], o, REASON_END_OF_DAY)
        return True

    def _sweep_reduce_only(self, sw: list) -> bool:
        if not self._may_go_on():
            return False
        acct = self.accounts.get(sw[2])
        if acct is not None:
            self._cut_reduce_only(acct, sw[1], acct.positions[sw[1]])
        return True

    def _cancelled(self, symbol: int, ev: tuple) -> None:
        kind, ce_id, coid, account, qty, reason = ev
        acct, o = self._own_order(account, coid)
        if o is None:
            return
        self._cancel_done(acct, o, symbol, kind, qty, reason)

    def _cancel_done(self, acct: Account, o: Order, symbol: int, kind: int, qty: int,
                     reason: int) -> None:
        if o.pending == PENDING_CANCEL and kind == CE_CANCELLED:
            reason = o.reason     # the engine's reason, not the CrossEngine's "client"
        o.pending = NO_PENDING
        if qty >= o.leaves:
            self._drop(acct, o)
            o.leaves = 0
        else:   # never happens with this CrossEngine (it cancels whole orders); kept exact
            release = o.margin * qty // o.leaves
            o.margin -= release
            acct.order_margin -= release
            self._liq_dirty[acct.account_id] = None
            o.leaves -= qty
            pos = acct.positions[symbol]
            if o.side == BUY:
                pos.buy_leaves -= qty
            else:
                pos.sell_leaves -= qty
        expired = kind == CE_EXPIRED or reason == REASON_END_OF_DAY
        self._er(o, EXEC_EXPIRED if expired else EXEC_CANCELED, 0, 0, 0, reason, 0,
                 STATUS_EXPIRED if expired else STATUS_CANCELED)

    def _amended(self, symbol: int, ev: tuple) -> None:
        _, ce_id, coid, account, price, leaves, total, _kept = ev
        acct, o = self._own_order(account, coid)
        if o is None:
            return
        pos = acct.positions[symbol]
        if o.side == BUY:
            pos.buy_leaves += leaves - o.leaves - o.amend_grow
        else:
            pos.sell_leaves += leaves - o.leaves - o.amend_grow
        o.price, o.leaves, o.qty = price, leaves, total
        o.amend_price = 0
        o.amend_qty = 0
        if o.flags & FLAG_REDUCE_ONLY:
            # a cut waits for an amend's answer (_cut_reduce_only): now that the leaves are
            # known, the position may have shrunk meanwhile
            self._queue_reduce_only(symbol, account)
        if o.pending == PENDING_AMEND:
            # a cancel sent after the amend (the end of the day, a liquidation, a mass
            # cancel) is still in flight: it stays pending, with its reason
            o.pending = NO_PENDING
        self._fit_margin(acct, o)
        self._er(o, EXEC_REPLACED)

    def _trade(self, symbol: int, spec: ContractSpec, ev: tuple) -> None:
        (_, _trade_id, maker_ce, taker_ce, maker_acct, taker_acct, price, qty, aggressor,
         _ml, _tl, _mf, _tf) = ev
        acct: Account
        o: Order
        self.last_prices[symbol] = price
        maker_side = SELL if aggressor == BUY else BUY
        ce_orders = self.ce_orders[symbol]
        for account, ce_id, side, maker in ((maker_acct, maker_ce, maker_side, True),
                                            (taker_acct, taker_ce, aggressor, False)):
            signed = qty if side == BUY else -qty
            acct = self.accounts.get(account) if self._mine(account) else None
            if acct is None:
                # the counterparty lives in another shard (or is not an account of this
                # engine): clearing takes this side, so the shard's books balance alone
                self._book(self.clearing, symbol, signed, price, spec)
                continue
            o = ce_orders.get(ce_id)
            if o is not None and o.account != account:
                o = None
            if maker:
                ppm = spec.maker_fee_ppm
                # the LiqEngine's close-outs pay no taker fee: their makers earn no rebate,
                # which only the taker's fee pays for (the venue's fee pools never go down)
                if ppm < 0 and taker_acct >= RESERVED_ACCOUNT_MIN:
                    ppm = 0
            else:
                ppm = spec.taker_fee_ppm
            self._fill(acct, o, symbol, spec, signed, price, ppm, maker)

    def _fill(self, acct: Account, o: Order | None, symbol, spec: ContractSpec,
              signed, price, ppm, maker) -> None:
        """``o`` is None for a fill of an order this engine does not know."""
        qty = signed if signed > 0 else -signed
        pos: Position = self._position(acct, symbol)
        before = pos.size
        margin_before = pos.margin
        release = 0
        if o is not None:
            if qty > o.leaves:
                raise EngineHalted(f"order {o.order_id} filled {qty} with {o.leaves} left")
            release = o.margin if qty == o.leaves else o.margin * qty // o.leaves
            if o.amend_qty and release:
                # o.margin holds the amend's reservation for leaves not known here yet: the
                # lots filled release no more than they cost (the answer fits the rest). A
                # cancel sent behind the amend changes nothing: the amend is still in flight
                # (keyed on the pending state, a fill then released the amend's reservation
                # in proportion to the old leaves, it was withdrawn, and the amended leaves
                # filled on nothing: the fund paid 1.57 USDT)
                own = self._order_cost(acct, o, o.price, qty)
                if own < release:
                    release = own
            o.margin -= release
            acct.order_margin -= release
            self._liq_dirty[acct.account_id] = None
            o.leaves -= qty
            o.cum += qty
            if signed > 0:
                pos.buy_leaves -= qty
            else:
                pos.sell_leaves -= qty
        notional = qty * price * spec.value
        paid = fee(notional, ppm)
        acct.balance -= paid
        acct.fees_paid += paid
        self._liq_dirty[acct.account_id] = None
        self.fee_pool += paid
        realised = pos.realised
        self._book(acct, symbol, signed, price, spec)
        after = pos.size
        if pos.realised - realised < paid and pos.mode == CROSS \
                and self._cross_closes(acct, symbol):
            # a loss realised here, or a fee beyond the gain, lowers the cross base: the
            # bankruptcy prices of the other cross positions move, and a close resting
            # against one may now be beyond its own (cancelled by the check, when the
            # record's fills are booked)
            self._to_check[(acct.account_id, symbol)] = None
        # the lots this fill opened (beyond the position it closed)
        opened = (after - (before if before > 0 else 0) if after > 0 else 0) \
            if signed > 0 else ((before if before < 0 else 0) - after if after < 0 else 0)
        if opened:
            if pos.mode == ISOLATED:
                self._isolated_opened(acct, pos, spec, signed > 0, price, opened, margin_before)
            mark = self.marks.get(symbol)
            if mark is not None and ((price > mark) if signed > 0 else (price < mark)):
                # a resting order the mark ran past opened at a loss against it: the account
                # is checked against maintenance when the record's fills are booked. A taker
                # too: its loss was reserved against the mark of its entry, and a mark that
                # came between its entry and its fill left it below maintenance until the
                # symbol's next mark (equity -4.1 USDT, no handoff)
                self._to_check[(acct.account_id, symbol)] = None
        if before and (after < before if before > 0 else after > before):
            self._refit_reducing(acct, symbol, SELL if before > 0 else BUY)
        if o is not None:
            self._er(o, EXEC_TRADE, price, qty, paid, 0, 1 if maker else 2)
            if o.leaves == 0:
                self._drop(acct, o)
        self._cover_deficit(acct)
        self._touched[(acct.account_id, symbol)] = acct

    def _isolated_opened(self, acct: Account, pos: Position, spec: ContractSpec, buy: bool,
                         price: int, opened: int, margin_before: int) -> None:
        """A fill opened (part of) an isolated position. A buy above the mark (a sell below
        it) pays the difference at once: it goes into the margin, which its order reserved,
        so the position does not open below its requirement at the mark. Positions come
        before orders: when the balance no longer covers every reservation and margin (the
        mark moved since the order was reserved), the account is queued for a check
        (SWEEP_CHECK, a sweep unit) that cancels its newest orders holding money until it
        does, reason 8, since what they held is now the position's. Only
        what the balance itself cannot cover (the fee was paid, a reservation grew past the
        balance) is cut from what the fill added to the margin."""
        mark = self.marks.get(spec.symbol)
        if mark is not None:
            premium = (price - mark if buy else mark - price) * opened * spec.value
            if premium > 0:
                pos.extra += premium
                self._set_margin(acct, pos, spec)
        short = acct.position_margin - acct.balance
        grown = pos.margin - margin_before
        if short > 0 and grown > 0:
            pos.extra -= grown if grown < short else short
            self._set_margin(acct, pos, spec)
        if acct.order_margin and acct.order_margin + acct.position_margin > acct.balance:
            self._to_check[(acct.account_id, spec.symbol)] = None

    def _refit_reducing(self, acct: Account, symbol: int, side: int) -> None:
        """The position shrank: the orders that were to reduce it may now open, and reserve
        what they open (an order reserves nothing for the part that reduces; the reservation
        of a live order is otherwise never looked at again). The reservation only grows, even
        past the available balance, which then stops withdrawals and new orders."""
        pos: Position = acct.positions[symbol]
        if not (pos.sell_leaves if side == SELL else pos.buy_leaves):
            return
        for o in acct.orders.values():
            # (an order whose cancel is in flight too: the cancel may lose the race to a fill;
            # a reduce-only one too: the cut that cancels or shrinks it is a record or more
            # away, and until the CrossEngine has it, a fill of it opens like any other)
            if o.symbol != symbol or o.side != side or o.state == UNTRIGGERED or not o.leaves:
                continue
            more = self._order_cost(acct, o, o.price, o.leaves) - o.margin
            if more > 0:
                o.margin += more
                acct.order_margin += more
                self._liq_dirty[acct.account_id] = None

    def _book(self, acct: Account, symbol, signed, price,
              spec: ContractSpec) -> None:
        """Apply a trade of ``signed`` lots at ``price`` to a position: realise the part that
        closes (its share of the cost leaves with it), open the rest at ``price``."""
        pos: Position = acct.positions.get(symbol)
        if pos is None:
            pos = self._position(acct, symbol)
        size = pos.size
        value = spec.value
        if size and (size > 0) != (signed > 0):
            qty = signed if signed > 0 else -signed
            held = size if size > 0 else -size
            close = qty if qty < held else held
            removed = cost_removed(size, pos.cost, close)
            closed = close if size > 0 else -close
            realised = closed * price * value - removed
            if pos.extra and close:
                pos.extra -= pos.extra * close // held if close < held else pos.extra
            pos.size = size - closed
            pos.cost -= removed
            pos.realised += realised
            acct.balance += realised
            signed += closed          # what is left opens the other way
        if signed:
            pos.size += signed
            pos.cost += signed * price * value
        if acct.account_id >= 0:
            self._set_margin(acct, pos, spec)
            if pos.size:
                self.holders[symbol][acct.account_id] = None
            else:
                self.holders[symbol].pop(acct.account_id, None)

    def _cut_reduce_only(self, acct: Account, symbol: int, pos: Position) -> None:
        """Resting reduce-only orders never add up to more than the position they reduce:
        the newest are cut down or cancelled, and those that would now increase it go."""
        if not pos.reduce_only:
            return
        size = pos.size
        room = size if size > 0 else -size
        reducing_side = SELL if size > 0 else BUY
        ro = [o for o in acct.orders.values()
              if o.symbol == symbol and o.flags & FLAG_REDUCE_ONLY and o.state != UNTRIGGERED
              and o.pending != PENDING_CANCEL]
        if not ro:
            return
        total = 0
        for o in ro:
            if size == 0 or o.side != reducing_side:
                self._send_cancel(o, REASON_REDUCE_ONLY)
            else:
                # an amend in flight counts at the smaller of its leaves before and after it,
                # and its answer queues the cut again: counted at the leaves before it, a cut's
                # own amend down was cut twice (older orders went too); counted at those after
                # it, an amend up the CrossEngine then refused had an older order cut for it
                after = o.amend_leaves
                total += after if after < o.leaves else o.leaves
        excess = total - room
        for o in sorted(ro, key=_order_id, reverse=True):
            if excess <= 0:
                break
            if o.pending == PENDING_CANCEL or size == 0 or o.side != reducing_side:
                continue
            if o.pending == PENDING_AMEND:
                # its cut waits for its answer (_amended and an amend's reject queue the cut
                # again): worked out from the leaves before the amend, a cut behind a
                # trader's amend down took the order back up by lots counted nowhere, and with
                # two amends in flight the cut's answer was taken for the trader's next one.
                # The others are cut meanwhile, so amends kept in flight in turn do not put
                # the cut off for ever; each order holds what it would open.
                continue
            if o.leaves <= excess:
                excess -= o.leaves
                self._send_cancel(o, REASON_REDUCE_ONLY)
            else:
                self._send_amend(o, o.price, o.cum + o.leaves - excess)
                excess = 0

    # -- sessions (PROTOCOL.md §4; docs/order-path.md §3) ----------------------------------------

    def _smsg(self, key: tuple, template, fields: tuple) -> None:
        """A SessionMessage to the session ``key`` (if it is live) with its next server SeqNo;
        ``fields`` are the root block's after the SeqNo."""
        sess: Session = self.sessions.get(key)
        if sess is None or key in self.finalized:
            return
        seq = sess.next_seq
        sess.next_seq = seq + 1
        self._out.append(_SMSG(SESSION_MESSAGE, key[0], key[1], template)
                         + _P[template](seq, *fields))

    def _exec_id(self) -> int:
        """Unique across the venue and deterministic: the record's seq and the report's rank
        in it, times n_shards, plus the shard (one shard: the seq and the rank alone). Unique
        while the shard's seq is below 2^44 / n_shards (2 shards: 8.8e12 records); past that
        it wraps modulo 2^64 rather than halting the shard on a report it cannot encode."""
        n = self._exec_n
        self._exec_n = n + 1
        return (((self.seq << 20) | n) * self.n_shards + self.shard) & _U64_MAX

    def _session_state(self, key: tuple, conn_id: int, sess, status: int) -> None:
        ne, ns = (sess.next_expected, sess.next_seq) if sess is not None else (0, 0)
        ne = min(ne, _U64_MAX)           # 2^64 after SeqNo 2^64 - 1: says 2^64 - 1, never 0
        self._out.append(_PACK[SESSION_STATE](SESSION_STATE, key[0], key[1], conn_id, ne, ns,
                                                status))

    def _business_reject(self, key: tuple, ref_seq: int, ref_id: int, template: int, reason: int,
                         text: bytes) -> None:
        self._smsg(key, P_BUSINESS_REJECT,
                   (self.ts_ns, ref_seq, ref_id, template, reason, 0, text))

    def _session_er(self, o: Order, exec_type, status, last_px, last_qty,
                    code, liquidity) -> None:
        """The PROTOCOL.md ExecutionReport of a session's order, to its session (and a copy to
        the session whose cancel or replace it answers, if that is another)."""
        if exec_type not in _P_EXEC_TYPES:
            return                       # Triggered, PendingNew: not in PROTOCOL.md
        tick = self.specs[o.symbol].tick
        coid, orig, extra = o.client_order_id, P_NULL_ID, None
        if exec_type == EXEC_CANCELED and o.cxl is not None:
            coid, orig, extra = o.cxl[0], o.client_order_id, o.cxl[1]
            if coid == P_NULL_ID:        # a mass cancel's copy: the report is the order's
                coid, orig = o.client_order_id, P_NULL_ID
            o.cxl = None
        elif exec_type == EXEC_REPLACED and o.rpl is not None:
            coid, orig, extra = o.rpl[0], o.client_order_id, o.rpl[1]
            self._rpl_done(o)
            o.rpl = None
            acct = self.accounts[o.account]
            if acct.by_client.get((orig, o.sess)) is o:   # FIX: the order now goes by the new id
                _unindex_client(acct, (orig, o.sess))
                _index_client(acct, coid, o)
            o.client_order_id = coid
            owner = self.sessions.get(o.sess) if o.sess is not None else None
            if owner is not None:        # another session's replace: the id is the order's
                owner.clordids[coid] = None   # session's now (no new order of it by that id)
        if exec_type == EXEC_REJECTED:
            reason = fix_ord_rej_reason(code)
        elif exec_type == EXEC_CANCELED or exec_type == EXEC_EXPIRED:
            reason = session_cancel_reason(code)
        else:
            reason = 0
        fields = (self.ts_ns, coid, orig, o.order_id, self._exec_id(),
                  P_NULL_PRICE if o.ord_type == MARKET else o.price * tick, o.qty,
                  last_px * tick if exec_type == EXEC_TRADE else P_NULL_PRICE, last_qty,
                  o.leaves, o.cum, o.symbol, o.account, exec_type, status, o.side, o.ord_type,
                  o.tif, reason, liquidity, 0)
        if o.sess is not None:
            self._smsg(o.sess, P_EXEC_REPORT, fields)
            if status == STATUS_FILLED or status == STATUS_CANCELED or status == STATUS_EXPIRED:
                sess = self.sessions.get(o.sess)      # finished: a later cancel is too late
                if sess is not None:
                    self._keep_finished(sess, o, status)
        if extra is not None and extra != o.sess:
            self._smsg(extra, P_EXEC_REPORT, fields)
        if (o.cxl is not None or o.rpl is not None) and (o.leaves == 0
                                                          or o.order_id not in self.orders):
            # the order is done while a session's cancel or replace of it is in flight: that
            # request can only fail (the CrossEngine's answer will find no order): too late
            for req, to in ((o.cxl, 1), (o.rpl, 2)):
                if req is not None and req[0] != P_NULL_ID:   # (not a mass cancel's copy)
                    late = (self.ts_ns, req[0], o.client_order_id, o.order_id, o.symbol,
                            status, 48 + to, 0, 0)
                    self._smsg(req[1], P_CANCEL_REJECT, late)
                    if o.sess is not None and o.sess != req[1]:
                        self._smsg(o.sess, P_CANCEL_REJECT, late)
            self._rpl_done(o)
            o.cxl = o.rpl = None

    def _session_reject_er(self, key: tuple, coid: int, account: int, symbol: int, side: int,
                           ord_type: int, tif: int, price: int, qty: int, reason: int) -> None:
        """ExecutionReport '8' of a NewOrderSingle refused before it became an order."""
        self._smsg(key, P_EXEC_REPORT, (
            self.ts_ns, coid, P_NULL_ID, P_NULL_ID, self._exec_id(), price, qty,
            P_NULL_PRICE, 0, 0, 0, symbol & 0xFFFFFFFF, account & 0xFFFFFFFF, EXEC_REJECTED,
            STATUS_REJECTED, side & 0xFF, ord_type & 0xFF, tif & 0xFF, reason, 0, 0))

    def _session_cancel_reject(self, key: tuple, coid: int, orig: int, order_id: int, to: int,
                               reason: int, finished=None) -> None:
        """OrderCancelReject of the request being applied (self._ctx): OrderID and OrdStatus
        those of the order it found, open or finished (else the request's, Rejected). A
        request that named the order by OrderID alone gets the order's ClOrdID as its
        OrigClOrdID, as the answer of a cancel that the CrossEngine found too late does."""
        ctx = self._ctx
        o = ctx[8]
        status = STATUS_REJECTED
        if finished is not None:
            order_id, status = finished[0], finished[1][1]
            if orig == P_NULL_ID:
                orig = finished[1][0]
        elif o is not None:
            order_id = o.order_id
            if orig == P_NULL_ID:
                orig = o.client_order_id
            if order_id in self.orders:
                status = _ord_status(o)
        self._smsg(key, P_CANCEL_REJECT, (
            self.ts_ns, coid, orig, order_id, ctx[7] & 0xFFFFFFFF, status, 48 + to, reason, 0))

    def _session_async_cancel_reject(self, o: Order, to: int, code: int) -> None:
        """The CrossEngine refused a cancel or amend the engine had sent for ``o``."""
        req = o.cxl if to == 1 else o.rpl
        if req is not None and req[0] == P_NULL_ID:
            req = None                   # a mass cancel's copy: refused as an engine's cancel
        if to == 1:
            o.cxl = None
        else:
            self._rpl_done(o)
            o.rpl = None
        coid = req[0] if req is not None else 0
        fields = (self.ts_ns, coid, o.client_order_id, o.order_id, o.symbol, _ord_status(o),
                  48 + to, fix_cxl_rej_reason(code), 0)
        if o.sess is not None:
            self._smsg(o.sess, P_CANCEL_REJECT, fields)
        if req is not None and req[1] != o.sess:
            self._smsg(req[1], P_CANCEL_REJECT, fields)

    def _session_logon(self, payload: bytes) -> None:
        n = len(payload)
        if n < SESSION_LOGON_S.size:
            self._reject_request(SESSION_LOGON, 2001, 0, 0, 0)
            return
        user, sid, conn_id, default, mode, cod_ms, count = SESSION_LOGON_S.unpack_from(payload)
        size = SESSION_LOGON_S.size
        accounts: list = []
        want = 0                         # the Logon's NextExpectedSeqNo, if the gateway sent it
        if n == size + 4 * count + 8:
            want = _U64(payload, n - 8)[0]
            n -= 8
        if n == size + 4 * count and count <= MAX_SESSION_ACCOUNTS:
            accounts = sorted(dict.fromkeys(struct.unpack_from(f"<{count}I", payload, size)))
            if not accounts:
                accounts = [default]
        if (n != size + 4 * count or count > MAX_SESSION_ACCOUNTS or mode > 2
                or default not in accounts or not all(self._mine(a) for a in accounts)):
            self._reject_request(SESSION_LOGON, 2037, user, 0, sid)
            return
        key = (user, sid)
        self._expire_finalized()
        if key in self.finalized:
            self._session_state(key, conn_id, None, SESSION_FINALIZED)
            return
        sess = self.sessions.get(key)
        if sess is not None and sess.bound and sess.conn_id != conn_id:
            self._session_state(key, conn_id, sess, SESSION_BOUND_ELSEWHERE)
            return
        if want > (sess.next_seq if sess is not None else 1):
            # PROTOCOL.md §4.5: LogonReject(5); refused before anything changes
            self._session_state(key, conn_id, sess or Session(user, sid), SESSION_BEYOND)
            return
        if sess is None:
            n_open = self.user_sessions.get(user, 0)
            if n_open >= MAX_USER_SESSIONS:
                self._session_state(key, conn_id, None, SESSION_LIMIT)
                return
            self.user_sessions[user] = n_open + 1
            sess = self.sessions[key] = Session(user, sid)
            status = SESSION_NEW
        else:
            status = SESSION_RESUMED
        sess.conn_id, sess.bound = conn_id, True
        sess.default_account, sess.accounts = default, accounts
        sess.cod_mode, sess.cod_timeout_ms = mode, cod_ms
        if sess.cod_deadline:
            sess.cod_deadline = sess.cod_cursor = 0
            del self.cod[key]
            self._reset_timer()
        if sess.held is not None:
            sess.held = None           # an earlier connection's logon, never answered
            del self.held[key]
        if status == SESSION_RESUMED:
            waiting = self._awaiting(key, sess)
            if waiting:
                # PROTOCOL.md §4: what LogonAck counts as applied has its answer in the
                # replay. An order the session entered is applied when it is sequenced here,
                # but its ExecutionReport New (a cancel's Canceled, a replace's Replaced)
                # comes with the CrossEngine's answer: the SessionState, which the LogonAck
                # and the replay's end come from, waits for those answers (LOGON_HOLD_NS at
                # most), the orders that wait named, so that each check looks at them alone
                sess.held = [conn_id, status, self.ts_ns, sess.next_expected, waiting]
                self.held[key] = None
                return
        self._session_state(key, conn_id, sess, status)

    def _awaiting(self, key: tuple, sess) -> list:
        """The ids of the orders of the session's accounts that wait for the CrossEngine's
        answer to a request of the session: a new order's, a cancel's or a replace's."""
        o: Order
        out = []
        for a in sess.accounts:
            acct = self.accounts.get(a)
            if acct is None:
                continue
            for o in acct.orders.values():
                if _waits(o, key):
                    out.append(o.order_id)
        return out

    def _release_held(self, answers: bool) -> None:
        """Send each held SessionState whose session's requests are all answered (looked at
        on the records that carry the CrossEngines' answers, and on Ticks), or that waited
        LOGON_HOLD_NS (on any record: a busy stream has no Ticks); drop the ones whose
        connection has gone."""
        for key in sorted(self.held):
            sess = self.sessions.get(key)
            if sess is None or sess.held is None:
                del self.held[key]
                continue
            conn_id, status, since, expected, waiting = sess.held
            gone = not sess.bound or sess.conn_id != conn_id
            if not gone and self.ts_ns - since < LOGON_HOLD_NS:
                if not answers:
                    continue
                if sess.next_expected != expected:
                    # a message of the session applied while held: look at every order again
                    waiting = self._awaiting(key, sess)
                    sess.held[3] = sess.next_expected
                else:
                    orders = self.orders
                    waiting = [i for i in waiting
                               if i in orders and _waits(orders[i], key)]
                sess.held[4] = waiting
                if waiting:
                    continue
            sess.held = None
            del self.held[key]
            if not gone:
                self._session_state(key, conn_id, sess, status)

    def _session_end(self, payload: bytes) -> None:
        if len(payload) != SESSION_END_S.size:
            self._reject_request(SESSION_END, 2001, 0, 0, 0)
            return
        user, sid, conn_id, reason = SESSION_END_S.unpack(payload)
        key = (user, sid)
        sess = self.sessions.get(key)
        if sess is None or key in self.finalized or reason > END_FINALIZE:
            self._reject_request(SESSION_END, 2001 if sess is not None and reason >
                                 END_FINALIZE else 2034, user, 0, sid)
            return
        if sess.bound and sess.conn_id == conn_id:
            sess.bound = False
            if sess.held is not None:      # its logon, held, has no connection to answer
                sess.held = None
                del self.held[key]
            self._arm_cod(key, sess, END_LOGOUT if reason == END_FINALIZE else reason)
        if reason == END_FINALIZE:
            self._finalize(key, sess)

    def _gateway_start(self, payload: bytes) -> None:
        if len(payload) != GATEWAY_START_S.size:
            self._reject_request(GATEWAY_START, 2001, 0, 0, 0)
            return
        g = GATEWAY_START_S.unpack(payload)[0]
        for key in sorted(self.sessions):
            sess = self.sessions[key]
            if sess.bound and sess.conn_id >> 48 == g:
                sess.bound = False
                self._arm_cod(key, sess, END_DISCONNECT)

    def _arm_cod(self, key: tuple, sess, reason: int) -> None:
        mode = sess.cod_mode
        if not (mode == COD_ON_DISCONNECT_OR_LOGOUT
                or mode == COD_ON_DISCONNECT and reason == END_DISCONNECT):
            return
        sess.cod_cursor = 0
        if sess.cod_timeout_ms == 0 and self._cancel_on_disconnect(key, sess):
            return
        # (with no grace and work left over, it is due now: it goes on at the next record)
        sess.cod_deadline = self.ts_ns + sess.cod_timeout_ms * 1_000_000
        self.cod[key] = sess.cod_deadline
        self._reset_timer()

    def _cancel_on_disconnect(self, key: tuple, sess) -> bool:
        """Cancel every open order the session entered (ExecutionReport '4' reason 2), one
        account a unit of work (as a sweep is); False when the output budget stopped it (the
        session's cursor says where it goes on)."""
        accounts = sess.accounts
        for i in range(sess.cod_cursor, len(accounts)):
            if not self._may_go_on():
                sess.cod_cursor = i
                return False
            acct = self.accounts.get(accounts[i])
            if acct is None:
                continue
            for o in list(acct.orders.values()):
                if o.sess == key:
                    self._end_order(acct, o, REASON_CANCEL_ON_DISCONNECT)
        sess.cod_cursor = 0
        return True

    def _finalize(self, key: tuple, sess) -> None:
        """End the session for good (PROTOCOL.md §4.9). An armed cancel-on-disconnect fires
        now: no Logon can come back to disarm it. While its cancels outrun one record's output
        budget, the session stays (unbound, finalized: it takes no message and sends none) and
        its timer, due at once, goes on at the next record; it is dropped when they are done."""
        if sess.held is not None:          # a logon held: answered by the finalization
            sess.held = None
            del self.held[key]
        self._session_state(key, sess.conn_id, sess, SESSION_FINALIZED)
        self._expire_finalized()
        self.finalized[key] = self.ts_ns
        if key in self.cod:
            if not self._cancel_on_disconnect(key, sess):
                self.cod[key] = sess.cod_deadline = self.ts_ns
                self._reset_timer()
                return
            del self.cod[key]
            sess.cod_deadline = 0
            self._reset_timer()
        self._drop_session(key)

    def _drop_session(self, key: tuple) -> None:
        for order_id in self.sessions.pop(key).done:
            del self.done_sess[order_id]
        _count_down(self.user_sessions, key[0])

    def _expire_finalized(self) -> None:
        fin = self.finalized
        cutoff = self.ts_ns - FINALIZED_TTL_NS
        while fin:
            key = next(iter(fin))
            if fin[key] > cutoff or key in self.sessions:
                # (a session still there is finalized with its cancel-on-disconnect going on:
                # it stays finalized until it is dropped, or a Logon would resume it; the ids
                # after it, finalized later, wait for it)
                break
            del fin[key]

    def _client_message(self, payload: bytes) -> None:
        head = _CLIENT_MESSAGE_SIZE
        if len(payload) < head + 8:
            self._reject_request(CLIENT_MESSAGE, 2001, 0, 0, 0)
            return
        user, sid, gflags, template = _CLIENT_MESSAGE(payload)
        key = (user, sid)
        sess: Session = self.sessions.get(key)
        if sess is not None and key in self.finalized:
            sess = None                       # finalized, its cancel-on-disconnect going on
        if sess is None or not 100 <= template <= 199:
            self._reject_request(CLIENT_MESSAGE, 2034 if sess is None else 2001, user, 0, sid)
            return
        block = payload[head:]
        seqno = _U64(block)[0]
        expected = sess.next_expected
        if seqno < expected:
            self.duplicates_dropped += 1      # PROTOCOL.md §4.3: dropped silently
            return
        if seqno > expected:
            # order-path.md §4: NotApplied.Count is a u32; a longer jump says 2^32 - 1
            self._smsg(key, P_NOT_APPLIED, (expected, min(seqno - expected, 0xFFFF_FFFF)))
        sess.next_expected = seqno + 1
        size = _P_BLOCK_SIZE(template)
        ref = _U64(block, 16)[0] if size is not None and len(block) >= 24 else P_NULL_ID
        if size is None:
            self._business_reject(key, seqno, ref, template, 3, b"unsupported message type")
        elif len(block) != size:
            self._business_reject(key, seqno, ref, template, 5, b"block length")
        elif gflags & GW_THROTTLED:
            self._business_reject(key, seqno, ref, template, 8, b"throttled")
        elif gflags & GW_SHED:
            self._business_reject(key, seqno, ref, template, 4, b"overloaded")
        elif len(sess.clordids) >= MAX_SESSION_CLORDIDS:
            self._business_reject(key, seqno, ref, template, 0, b"start a new session")
        elif template == P_NEW_ORDER:
            self._s_new_order(key, sess, block, seqno)
        elif template == P_CANCEL:
            self._s_cancel(key, sess, block)
        elif template == P_REPLACE:
            self._s_replace(key, sess, block)
        else:
            self._s_mass_cancel(key, sess, block)

    def _s_new_order(self, key: tuple, sess: Session, block: bytes, seqno) -> None:
        (_, _, coid, price, qty, symbol, account, side, ord_type, tif,
         flags) = _P_NOS(block)
        if account == 0:
            account = sess.default_account
        if account not in sess.accounts:
            self._business_reject(key, seqno, coid, P_NEW_ORDER, 6, b"account not authorised")
            return
        self._ctx = [key, P_NEW_ORDER, coid, P_NULL_ID, P_NULL_ID, tif, price, symbol,
                     None]
        try:
            if coid == P_NULL_ID:        # OrigClOrdID's null: could never be cancelled by it
                self._reject_order(coid, account, symbol, side, ord_type, 0, qty, 2039)
                return
            if coid in sess.clordids:
                self._reject_order(coid, account, symbol, side, ord_type, 0, qty, 2015)
                return
            sess.clordids[coid] = None
            spec = self.specs.get(symbol)
            ticks = code = 0
            if spec is None:
                pass                                   # the engine says symbol_unknown
            elif ord_type == MARKET:
                if price != P_NULL_PRICE and price != 0:
                    code = 2008
            elif price == P_NULL_PRICE or price <= 0:
                code = 2008
            elif price % spec.tick:
                code = 2035
            else:
                ticks = price // spec.tick
            if code:
                self._reject_order(coid, account, symbol, side, ord_type, 0, qty, code)
                return
            eflags = POST_ONLY if flags & P_FLAG_POST_ONLY else 0
            self._enter_order(coid, account, symbol, ticks, qty, 0, side, ord_type, tif, eflags,
                              0, BY_MARK)
        finally:
            self._ctx = None

    def _find_order(self, key: tuple, sess, orig: int, order_id: int):
        """The order a cancel or replace names, by OrderID or else by OrigClOrdID, among the
        session user's accounts. By OrigClOrdID: the session's own order that goes by it, or
        whose replace in flight takes it; nothing else (PROTOCOL.md §4.3: ClOrdIDs are the
        session's; another session's order is named by its OrderID). Another session's order
        that happens to share the id is never found: sessions of one user number their
        ClOrdIDs alike (the SDK starts each at 1), and a cancel of an id whose own order was
        refused cancelled a sibling strategy's order. Given both, they must name one order
        (OrigClOrdID its ClOrdID, or its replace's in flight)."""
        if order_id != P_NULL_ID and order_id != 0:
            o = self.orders.get(order_id)
            if o is None or o.account not in sess.accounts:
                return None
            if orig != P_NULL_ID and orig != o.client_order_id and (
                    o.rpl is None or o.rpl[0] != orig):
                return None              # OrderID and OrigClOrdID name two orders
            return o
        if orig == P_NULL_ID:
            return None
        for a in sess.accounts:
            acct = self.accounts.get(a)
            if acct is None:
                continue
            o = acct.by_client.get((orig, key))
            if o is None and acct.replacing:
                o = acct.replacing.get((orig, key))
            if o is not None:
                return o
        return None

    def _s_cancel(self, key: tuple, sess, block: bytes) -> None:
        _, _, coid, orig, order_id, symbol, side, _flags = _P_CANCEL(block)
        o = self._find_order(key, sess, orig, order_id)
        if o is not None and (o.symbol != symbol or o.side != side):
            o = None                     # not the order named: unknown (FIX 102 reason 1)
        self._ctx = [key, P_CANCEL, coid, orig, order_id, 0, 0,
                     o.symbol if o is not None else symbol, o]
        try:
            account = o.account if o is not None else sess.default_account
            if coid == P_NULL_ID:
                self._cancel_rejected(account, coid, orig, 2039, 1)
                return
            if coid in sess.clordids:
                self._cancel_rejected(account, coid, orig, 2015, 1)
                return
            sess.clordids[coid] = None
            if o is None:
                self._cancel_unknown(account, coid, orig, self._finished(sess, orig, order_id,
                                                                         symbol, side), 1)
            elif o.pending == PENDING_CANCEL:
                self._cancel_rejected(account, coid, orig, 2017, 1)
            else:
                o.cxl = (coid, key)
                self._cancel_order(self.accounts[o.account], o, coid, o.client_order_id,
                                   o.account)
                if o.pending != PENDING_CANCEL:
                    o.cxl = None
        finally:
            self._ctx = None

    def _s_replace(self, key: tuple, sess, block: bytes) -> None:
        (_, _, coid, orig, order_id, price, qty, symbol, side, ord_type, tif,
         flags) = _P_REPLACE(block)
        o = self._find_order(key, sess, orig, order_id)
        if o is not None and (o.symbol != symbol or o.side != side):
            o = None                     # not the order named: unknown (FIX 102 reason 1)
        self._ctx = [key, P_REPLACE, coid, orig, order_id, 0, price,
                     o.symbol if o is not None else symbol, o]
        try:
            account = o.account if o is not None else sess.default_account
            if coid == P_NULL_ID:      # the order would go by OrigClOrdID's null
                self._cancel_rejected(account, coid, orig, 2039, 2)
                return
            if coid in sess.clordids:
                self._cancel_rejected(account, coid, orig, 2015, 2)
                return
            sess.clordids[coid] = None
            if o is None:
                self._cancel_unknown(account, coid, orig, self._finished(sess, orig, order_id,
                                                                         symbol, side), 2)
                return
            if o.pending:
                self._cancel_rejected(account, coid, orig, 2017, 2)
                return
            tick = self.specs[o.symbol].tick
            code = ticks = 0
            if ord_type != o.ord_type or tif != o.tif:
                code = 2042              # an order keeps its OrdType and TimeInForce
            elif flags & P_FLAG_POST_ONLY and not o.flags & POST_ONLY:
                code = 2041              # the CrossEngine keeps an order's own PostOnly only
            elif qty == 0:
                code = 2009              # OrderQty is the new total quantity (FIX semantics)
            elif price == P_NULL_PRICE:
                if o.ord_type != MARKET:
                    code = 2008          # a limit order's replace carries its price
            elif price <= 0:
                code = 2008
            elif price % tick:
                code = 2035
            else:
                ticks = price // tick
            acct = self.accounts[o.account]
            owner = self.sessions.get(o.sess) if o.sess is not None and o.sess != key else None
            if not code and (_clordid_taken(acct, coid, o.sess) or owner is not None and
                             self._key_taken(coid, o.sess, owner)):
                code = 2015              # an open order of the order's session goes by it
            if code:
                self._cancel_rejected(account, coid, orig, code, 2)
                return
            o.rpl = (coid, key)
            self._amend_order(acct, o, coid, o.client_order_id, o.account, ticks, qty)
            if o.pending != PENDING_AMEND:
                self._rpl_done(o)
                o.rpl = None
            elif o.rpl is not None:
                acct.replacing[coid, o.sess] = o
                self._replacing_more(o.sess)
        finally:
            self._ctx = None

    def _s_mass_cancel(self, key: tuple, sess, block: bytes) -> None:
        _, _, coid, asked, mtype, side, _flags = _P_MASS(block)
        symbol = asked                     # the report echoes the SecurityID asked
        reject = 0
        if coid in sess.clordids:
            reject = 99
        elif mtype == 0x31:                # '1': one security
            if symbol not in self.specs:
                reject = 1
        elif mtype == 0x37:                # '7': all
            symbol = 0
        else:
            reject = 0x100                 # not supported (FIX 532 value 0)
        if not reject and side not in (0x30, BUY, SELL):
            reject = 99
        if reject:
            if coid not in sess.clordids:
                sess.clordids[coid] = None
            self._smsg(key, P_MASS_CANCEL_REPORT,   # the SecurityID asked, echoed
                       (self.ts_ns, coid, 0, asked & 0xFFFFFFFF, mtype, 0x30, reject & 0xFF, 0))
            return
        sess.clordids[coid] = None
        # Every account of the session (the message names none): the default account's orders
        # in this record, the others' as a sweep, one account a unit within the output budget
        # (64 accounts of 200 orders would be 12,800 cancels, and the CrossEngine's answer to
        # them one record too large to report). The report follows the last account's cancels.
        side = 0 if side == 0x30 else side
        acct = self.accounts.get(sess.default_account)
        n = 0
        if acct is not None:
            n = self._cancel_orders(acct, symbol, side, REASON_MASS_CANCEL, -1, key)
        others = [a for a in sess.accounts if a != sess.default_account]
        if others:   # the orders there now: not those entered while the sweep runs
            self.sweeps.append([SWEEP_SESSION_MASS_CANCEL, symbol, 0, key[0], key[1], side,
                                coid, asked, mtype, n, others, self.next_order_id - 1])
            return
        self._smsg(key, P_MASS_CANCEL_REPORT, (self.ts_ns, coid, n, asked, mtype, mtype, 0, 0))

    def _sweep_session_mass_cancel(self, sw: list) -> bool:
        """The rest of a session's mass cancel: its other accounts, one a unit; then the
        OrderMassCancelReport with the whole count (if the session is still there to take it)."""
        _, symbol, cursor, user, sid, side, coid, asked, mtype, n, accounts, upto = sw
        for i in range(cursor, len(accounts)):
            if not self._may_go_on():
                sw[2], sw[9] = i, n
                return False
            acct = self.accounts.get(accounts[i])
            if acct is not None:
                n += self._cancel_orders(acct, symbol, side, REASON_MASS_CANCEL, upto,
                                         (user, sid))
        self._smsg((user, sid), P_MASS_CANCEL_REPORT,
                   (self.ts_ns, coid, n, asked, mtype, mtype, 0, 0))
        return True


    # -- the audit, snapshots and the state hash ----------------------------------------------

    def audit(self) -> None:
        """Check the books balance to the minor unit; raise EngineHalted with a report if not."""
        marks = self.marks
        total = self.fee_pool + self.dust
        for sw in self.sweeps:
            if sw[0] == SWEEP_FUNDING:
                total += sw[5] - sw[6]      # funding taken in and not yet paid out, or back
        net: dict[int, int] = {}
        for acct in [*self.accounts.values(), self.clearing, self.liquidation]:
            total += acct.balance
            for sym, pos in acct.positions.items():
                if pos.size or pos.cost:
                    total += pos.size * marks.get(sym, 0) * self.specs[sym].value - pos.cost
                    net[sym] = net.get(sym, 0) + pos.size
        expected = self.deposits - self.withdrawals
        unbalanced = sorted(s for s, n in net.items() if n)
        off = [a for a in self._all_accounts() if a.balance != _ledger(a)]
        if total != expected or unbalanced or off:
            raise EngineHalted(self._audit_report(total, expected, unbalanced, off))

    def _all_accounts(self) -> list[Account]:
        return [self.accounts[a] for a in sorted(self.accounts)] + [self.clearing,
                                                                    self.liquidation]

    def _audit_report(self, total: int, expected: int, unbalanced: list[int],
                      off: list[Account]) -> str:
        lines = [f"audit failed at seq {self.seq}: books {total} vs deposits - withdrawals "
                 f"{expected} (difference {total - expected}); symbols whose positions do not "
                 f"net to zero: {unbalanced}; accounts whose balance is not their ledger: "
                 f"{[a.account_id for a in off]}"]
        for a in off:
            lines.append(f"  account {a.account_id}: balance {a.balance}, ledger {_ledger(a)} "
                         f"(transferred {a.transferred}, fees {a.fees_paid}, funding "
                         f"{a.funding_paid}, liquidated {a.liquidated}, covered {a.covered}, "
                         f"realised {sum(p.realised for p in a.positions.values())})")
        for a in self._all_accounts():
            for sym in sorted(a.positions):
                pos = a.positions[sym]
                if pos.size == 0 and pos.cost:
                    lines.append(f"  account {a.account_id} symbol {sym}: no size but cost "
                                 f"{pos.cost}")
        return "\n".join(lines)

    def check_invariants(self) -> None:
        """Every derived figure equals what the state implies; no client balance is negative.
        For tests and the checked replica; raises EngineHalted."""
        # (a shard's fee pool may go below zero: its makers' rebates on trades whose takers
        # pay their fee in another shard; over all shards it never does)
        if self.dust < 0:
            raise EngineHalted(f"dust {self.dust} below zero: a rounding favoured a trader")
        n_done = 0
        for key, sess in self.sessions.items():
            n_done += len(sess.done)
            last: dict[int, int] = {}
            for order_id, d in sess.done.items():
                if self.done_sess.get(order_id) != key or order_id in self.orders:
                    raise EngineHalted(f"finished order {order_id} of session {key} drifted")
                last[d[0]] = order_id
            if last != sess.finished:
                raise EngineHalted(f"the finished ClOrdIDs of session {key} drifted")
        if n_done != len(self.done_sess):
            raise EngineHalted("the finished orders' sessions drifted")
        replacing: dict[tuple[int, int], int] = {}
        for acct in self.accounts.values():
            for _coid, sess_key in acct.replacing:
                replacing[sess_key] = replacing.get(sess_key, 0) + 1
        if replacing != self._sess_replacing:
            raise EngineHalted("the replaces in flight by session drifted")
        for acct in self.accounts.values():
            if acct.balance < 0:
                raise EngineHalted(f"account {acct.account_id} balance {acct.balance} < 0")
            if acct.order_margin != sum(o.margin for o in acct.orders.values()):
                raise EngineHalted(f"account {acct.account_id}: order margin drifted")
            if acct.position_margin != sum(p.margin for p in acct.positions.values()):
                raise EngineHalted(f"account {acct.account_id}: position margin drifted")
            for sym, pos in acct.positions.items():
                live = [o for o in acct.orders.values()
                        if o.symbol == sym and o.state != UNTRIGGERED]
                if pos.buy_leaves != sum(o.leaves + o.amend_grow for o in live if o.side == BUY) \
                        or pos.sell_leaves != sum(o.leaves + o.amend_grow for o in live
                                                  if o.side == SELL):
                    raise EngineHalted(f"account {acct.account_id} symbol {sym}: leaves drifted")
                if pos.reduce_only != sum(1 for o in live if o.flags & FLAG_REDUCE_ONLY):
                    raise EngineHalted(f"account {acct.account_id} symbol {sym}: reduce-only "
                                       "count drifted")
                if pos.size == 0 and (pos.cost or pos.margin):
                    raise EngineHalted(f"account {acct.account_id} symbol {sym}: flat position "
                                       f"with cost {pos.cost} margin {pos.margin}")
            for o in acct.orders.values():
                if o.margin < 0 or o.leaves <= 0 and o.state != UNTRIGGERED:
                    raise EngineHalted(f"order {o.order_id}: margin {o.margin} leaves {o.leaves}")
        self.audit()

    def _state(self) -> list:
        def account_row(a: Account) -> list:
            return [a.account_id, a.balance, a.dms_timeout_ms, a.dms_deadline,
                    [a.transferred, a.fees_paid, a.funding_paid, a.liquidated, a.covered],
                    [[s, *a.positions[s].row()] for s in sorted(a.positions)],
                    [a.orders[i].row() for i in sorted(a.orders)]]
        return [
            SNAPSHOT_VERSION if self.liq_sources or self.stp else SNAPSHOT_VERSION_NO_LIQ,
            self.shard, self.n_shards, self.seq, self.ts_ns,
            [_spec_row(s) for s in self.specs.values()],
            self.next_order_id, self.fee_pool, self.dust, self.deposits, self.withdrawals,
            sorted(self.marks.items()), sorted(self.last_prices.items()),
            sorted([s, p, i] for s, (p, i) in self.funding_inputs.items()),
            sorted(self.next_funding.items()),
            [self.transfer_floor, sorted([ts, tid] for tid, ts in self.transfers.items())],
            [account_row(self.accounts[a]) for a in sorted(self.accounts)],
            account_row(self.clearing), account_row(self.liquidation),
            [list(sw) for sw in self.sweeps],
            [None if self.ce_sources is None else sorted(self.ce_sources.items()),
             self.oracle_sources, self.gateway_sources]
            + ([self.liq_sources] if self.liq_sources or self.stp else [])
            + ([self.stp] if self.stp else []),   # (a shard that allows self-trades: as before)
            [self.sessions[k].row() for k in sorted(self.sessions)],
            [[u, s, ts] for (u, s), ts in self.finalized.items()],
        ]

    def snapshot(self) -> bytes:
        return msgpack.packb(self._state(), use_bin_type=True)

    def state_hash(self) -> bytes:
        return hashlib.sha256(self.snapshot()).digest()

    @classmethod
    def restore(cls, data: bytes) -> TradingEngine:
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if state[0] == 3:
            # written before transfer ids expired and sweeps existed: its transfer ids count
            # as seen at the snapshot's time, and no sweep is in progress
            state = [4, *state[1:15], [0, sorted([state[4], t] for t in state[15])],
                     *state[16:], []]
        if state[0] == 4:   # written before sources were configured and sessions existed
            state = [5, *state[1:], [None, None, None], [], []]
        if state[0] in (5, 6) and state[2] != 1:
            raise ValueError(f"snapshot version {state[0]} of shard {state[1]} of {state[2]}: "
                             f"written when each shard numbered its orders from 1; not "
                             f"restored (the shard replays its log instead)")
        if state[0] in (5, 6, 7, 8):
            # before sessions kept their finished orders: exact only if no session has used
            # a ClOrdID (so none can have finished an order)
            if any(row[12] for row in state[21]):
                raise ValueError(f"snapshot version {state[0]}: written before sessions kept "
                                 f"their finished orders; not restored (the shard replays its "
                                 f"log instead)")
            state = [SNAPSHOT_VERSION_NO_LIQ if state[0] in (5, 7) else SNAPSHOT_VERSION,
                     *state[1:21], [[*row, []] for row in state[21]], *state[22:]]
        if state[0] == SNAPSHOT_VERSION_NO_LIQ:       # no liq_sources: 9 is 10 without them
            state = [SNAPSHOT_VERSION, *state[1:20], [*state[20], None], *state[21:]]
        if state[0] != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {state[0]} is not {SNAPSHOT_VERSION}")
        (_, shard, n_shards, seq, ts_ns, specs, next_order_id, fee_pool, dust, deposits,
         withdrawals, marks, last_prices, funding_inputs, next_funding,
         (transfer_floor, transfers), accounts, clearing, liquidation, sweeps,
         sources, sessions, finalized) = state
        ce_sources, oracle_sources, gateway_sources, liq_sources = sources[:4]
        eng = cls([_spec_from_row(r) for r in specs], shard, n_shards,
                  ce_sources=None if ce_sources is None else dict(ce_sources),
                  oracle_sources=oracle_sources, gateway_sources=gateway_sources,
                  liq_sources=liq_sources, self_trade=sources[4] if len(sources) > 4 else 0)
        for row in sessions:
            sess = Session.from_row(row)
            key = (sess.user, sess.session_id)
            eng.sessions[key] = sess
            for order_id in sess.done:
                eng.done_sess[order_id] = key
            eng.user_sessions[sess.user] = eng.user_sessions.get(sess.user, 0) + 1
            if sess.cod_deadline:
                eng.cod[key] = sess.cod_deadline
            if sess.held is not None:
                eng.held[key] = None
        for u, s, ts in finalized:
            eng.finalized[(u, s)] = ts
        eng.seq, eng.ts_ns, eng.next_order_id = seq, ts_ns, next_order_id
        eng.fee_pool, eng.dust, eng.deposits, eng.withdrawals = fee_pool, dust, deposits, withdrawals
        eng.marks = dict(marks)
        eng.last_prices = dict(last_prices)
        eng.funding_inputs = {s: (p, i) for s, p, i in funding_inputs}
        eng.next_funding = dict(next_funding)
        for ts, tid in transfers:
            eng.transfers[tid] = ts
            eng._transfer_queue.append((ts, tid))
        eng.transfer_floor = transfer_floor
        eng.sweeps = [list(sw) for sw in sweeps]
        for row in accounts:
            acct = eng._account_from_row(row)
            eng.accounts[acct.account_id] = acct
        eng.clearing = eng._account_from_row(clearing)
        eng.liquidation = eng._account_from_row(liquidation)
        eng._reset_timer()
        eng._liq_dirty = dict.fromkeys(eng.accounts)    # the index is derived: rebuilt lazily
        eng.check_invariants()
        return eng

    def _account_from_row(self, row: list) -> Account:
        account_id, balance, dms_timeout_ms, dms_deadline, ledger, positions, orders = row
        acct = Account(account_id)
        acct.balance = balance
        (acct.transferred, acct.fees_paid, acct.funding_paid, acct.liquidated,
         acct.covered) = ledger
        acct.dms_timeout_ms, acct.dms_deadline = dms_timeout_ms, dms_deadline
        if dms_deadline:
            self.dms[account_id] = dms_deadline
        for sym, size, cost, margin, extra, lev, mode, realised in positions:
            pos = acct.positions[sym] = Position(lev)
            pos.size, pos.cost, pos.margin, pos.extra, pos.mode = size, cost, margin, extra, mode
            pos.realised = realised
            acct.position_margin += margin
            if size and account_id >= 0:
                self.holders[sym][account_id] = None
        for r in orders:
            o = Order.from_row(r)
            acct.orders[o.order_id] = o
            _index_client(acct, o.client_order_id, o)
            if o.rpl is not None:
                acct.replacing[o.rpl[0], o.sess] = o
                self._replacing_more(o.sess)
            acct.order_margin += o.margin
            self.orders[o.order_id] = o
            if o.state == UNTRIGGERED:
                self.conditional[o.symbol][o.order_id] = o
                self._trig_add(o)
            else:
                pos = acct.positions[o.symbol]
                if o.side == BUY:
                    pos.buy_leaves += o.leaves + o.amend_grow
                else:
                    pos.sell_leaves += o.leaves + o.amend_grow
                if o.flags & FLAG_REDUCE_ONLY:
                    pos.reduce_only += 1
                if o.ce_id:
                    self.ce_orders[o.symbol][o.ce_id] = o
        return acct


# FIX 103 OrdRejReason of each reject code (PROTOCOL.md §3, ExecutionReport '8'); any other: 99
ORD_REJ_REASON = {
    2004: 1, 3008: 2, 2010: 2,                      # unknown security; exchange closed
    2011: 3, 2012: 3, 2013: 3, 2027: 3, 2030: 3, 2043: 3, 2044: 3,   # exceeds limit
    3016: 3, 3018: 3, 3007: 3,
    2016: 5, 3005: 5,                               # unknown order
    2015: 6, 3009: 6,                               # duplicate order (ClOrdID reuse)
    2005: 11, 2006: 11, 2007: 11, 2018: 11, 2028: 11, 3010: 11, 3011: 11, 3012: 11,
    3013: 11,                                       # unsupported characteristic
    2014: 0, 2019: 0, 3006: 0,                      # exchange option (reduce-only, post-only)
    2009: 13, 3003: 13, 3004: 13, 3014: 13,         # incorrect quantity
    2035: 18, 3001: 18,                             # invalid price increment
}
# FIX 102 CxlRejReason of each code: 0 too late, 1 unknown order, 3 already pending,
# 6 duplicate ClOrdID; any other: 99
CXL_REJ_REASON = {2016: 1, 2040: 0, 3005: 0, 2017: 3, 2015: 6, 3009: 6}
# the session's cancel reason of an engine reason (ExecutionReport '4' / 'C'): PROTOCOL.md's
# 0-5 as they are; the engine's own from 7 up; the CrossEngine's match limit (6 in the engine)
# is 10, since PROTOCOL.md's 6 is the end of day
_CANCEL_REASON = {REASON_MATCH_LIMIT: 10, REASON_END_OF_DAY: 6}


def fix_ord_rej_reason(code: int) -> int:
    return ORD_REJ_REASON.get(code, 99)


def fix_cxl_rej_reason(code: int) -> int:
    return CXL_REJ_REASON.get(code, 99)


def session_cancel_reason(reason: int) -> int:
    return _CANCEL_REASON.get(reason, reason) & 0xFF


def _ord_status(o: Order) -> int:
    if o.leaves == 0 and o.cum == o.qty:
        return STATUS_FILLED
    return STATUS_PARTIAL if o.cum else STATUS_NEW


def _int(x) -> int:
    """A source id or symbol from a configuration: an int, or a string ("0x7000_0001" or
    decimal, as JSON object keys must be strings)."""
    return int(x, 0) if isinstance(x, str) else int(x)


def _own_margin_pays(pos: Position, boundary_size: int) -> bool:
    """Whether the funding of ``pos`` on ``boundary_size`` is paid out of its own margin first:
    an isolated position still open on the same side, no smaller than at the boundary (one
    that closed or shrank pays out of the cross balance first, where its margin went)."""
    size = pos.size
    return pos.mode == ISOLATED and (size >= boundary_size > 0 or size <= boundary_size < 0)


def _ledger(a: Account) -> int:
    """What an account's balance must be, from its own history."""
    return (a.transferred - a.fees_paid - a.funding_paid - a.liquidated + a.covered
            + sum(p.realised for p in a.positions.values()))


def _fires(o: Order, price: int) -> bool:
    """A stop buys when the price rises to it and sells when it falls to it; a take-profit
    the other way round."""
    up = (o.trigger_kind == TRIGGER_STOP) == (o.side == BUY)
    return price >= o.trigger_price if up else price <= o.trigger_price


def _order_id(o: Order) -> int:
    return o.order_id


def _sym(s: ContractSpec) -> int:
    return s.symbol


def _spec_row(s: ContractSpec) -> list:
    return [s.symbol, s.value, s.max_leverage_x100,
            [[t.limit, t.mmr_ppm, t.mm_amount, t.max_leverage_x100] for t in s.tiers],
            s.maker_fee_ppm, s.taker_fee_ppm, s.funding_interval_ns, s.band_ppm,
            s.funding_cap_ppm, s.max_qty, s.max_price, s.tick, s.lot]


def _spec_from_row(r: list) -> ContractSpec:
    return ContractSpec(r[0], r[1], r[2], tuple(Tier(*t) for t in r[3]), *r[4:])


def spec_from_dict(d: dict) -> ContractSpec:
    """A contract spec from a topology table (deploy/ and tests)."""
    tiers = tuple(Tier(**t) for t in d["tiers"])
    return ContractSpec(**{**d, "tiers": tiers})


__all__ = ["CLEARING_ID", "LIQUIDATION_ID", "Account", "EngineHalted", "Order", "Position",
           "TradingEngine", "spec_from_dict"]
