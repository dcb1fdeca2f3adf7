"""The CrossEngine's binary codec: commands in (record payloads), events out.

Every layout of the CrossEngine lives here, as a ``struct.Struct`` whose size is checked at
import; the compiled engine (crossengine/engine.pyx) writes the same bytes and a test compares
the two byte for byte. Enumerations carry FIX values as in PROTOCOL.md (Side '1' buy '2' sell,
OrdType '1' market '2' limit, TimeInForce '1' GTC '3' IOC '4' FOK), so that the gateway copies
fields. Little-endian, packed.

Input record kinds and payloads:
    NEW_ORDER    <QqQIBBBBB  client_order_id, price, qty_lots, account, side, ord_type, tif,
                             flags (bit0 reduce-only, bit1 post-only), stp mode
    CANCEL       <QQI        order_id (0: by client order id), client_order_id, account
    AMEND        <QQIqQ      order_id (0: by client order id), client_order_id, account,
                             new price (0: unchanged), new total qty (0: unchanged; FIX semantics)
    CANCEL_ALL   <IB         account, side (0 both)
    MASS_CANCEL, HALT, RESUME: empty
    KIND_TICK (mq): ignored, an empty output.

Output: one record per input record, same seq; its payload is the events of that command,
each starting with its u8 type (EVENT_STRUCTS below). Level-2 deltas come last, one per
price level the command changed, in the order the levels were first touched (none after a
MassCancel: its one MassCancelled event says the whole book is gone).

Bounds. Every output must fit one record (mq MAX_PAYLOAD) with room to spare, so one command
does a bounded amount of work: a taker matches at most ``max_fills`` makers (the rest of it
expires, reason 6), and so do all the takers of one TradingEngine or LiqEngine record together
(its commands are answered by one output record), an account rests at most ``max_account_orders`` orders, and CancelAll /
MassCancel answer with one MassCancelled event whatever they cancel. ``worst_case_sizes``
gives the largest output of each command kind from these bounds; the check below proves at
import that the largest fits MAX_PAYLOAD less the TradingEngine's 4-byte CE_EVENTS prefix,
with a margin.
"""
from __future__ import annotations

import struct

# -- input kinds (record.kind) ---------------------------------------------------------------
KIND_TICK = 1
NEW_ORDER = 32
CANCEL = 33
AMEND = 34
CANCEL_ALL = 35
MASS_CANCEL = 36
HALT = 37
RESUME = 38

NEW_ORDER_S = struct.Struct("<QqQIBBBBB")
CANCEL_S = struct.Struct("<QQI")
AMEND_S = struct.Struct("<QQIqQ")
CANCEL_ALL_S = struct.Struct("<IB")
COMMAND_STRUCTS = {NEW_ORDER: NEW_ORDER_S, CANCEL: CANCEL_S, AMEND: AMEND_S,
                   CANCEL_ALL: CANCEL_ALL_S, MASS_CANCEL: None, HALT: None, RESUME: None}

# -- enumerations (FIX values) ----------------------------------------------------------------
BUY, SELL = ord("1"), ord("2")
MARKET, LIMIT = ord("1"), ord("2")
GTC, IOC, FOK = ord("1"), ord("3"), ord("4")
FLAG_REDUCE_ONLY, FLAG_POST_ONLY = 1, 2
STP_NONE, STP_CANCEL_NEWEST, STP_CANCEL_OLDEST, STP_CANCEL_BOTH, STP_DECREMENT = 0, 1, 2, 3, 4

# -- events -----------------------------------------------------------------------------------
EV_ACCEPTED = 1   # <BQQIBBqQBB  order_id, client_order_id, account, side, ord_type, price, qty, tif, flags
EV_REJECTED = 2   # <BQIHQ       client_order_id, account, code, order_id (0 when none)
EV_TRADE = 3      # <BQQQIIqQBQQBB trade_id, maker order, taker order, maker account, taker account,
                  #              price, qty, aggressor side, maker leaves, taker leaves,
                  #              maker flags, taker flags
EV_CANCELLED = 4  # <BQQIQB      order_id, client_order_id, account, qty cancelled, reason
EV_AMENDED = 5    # <BQQIqQQB    order_id, client_order_id, account, price, leaves, total qty,
                  #              kept priority (1) or not (0)
EV_EXPIRED = 6    # <BQQIQB      like CANCELLED: the unfilled rest of a market / IOC / FOK order
EV_LEVEL = 7      # <BBqQI       side, price, new level total (0: level gone), orders at the level
EV_HALTED = 8     # <B
EV_RESUMED = 9    # <B
EV_MASS_CANCELLED = 10  # <BBIBBQQ scope (1 one account, 2 the whole book), account (0 for the
                        #          book), side (0 both), reason, orders cancelled, the highest
                        #          order id the engine had assigned (every cancelled order's id
                        #          is at or below it)

EVENT_STRUCTS = {
    EV_ACCEPTED: struct.Struct("<BQQIBBqQBB"),
    EV_REJECTED: struct.Struct("<BQIHQ"),
    EV_TRADE: struct.Struct("<BQQQIIqQBQQBB"),
    EV_CANCELLED: struct.Struct("<BQQIQB"),
    EV_AMENDED: struct.Struct("<BQQIqQQB"),
    EV_EXPIRED: struct.Struct("<BQQIQB"),
    EV_LEVEL: struct.Struct("<BBqQI"),
    EV_HALTED: struct.Struct("<B"),
    EV_RESUMED: struct.Struct("<B"),
    EV_MASS_CANCELLED: struct.Struct("<BBIBBQQ"),
}
EVENT_SIZES = {k: s.size for k, s in EVENT_STRUCTS.items()}
_EXPECTED_SIZES = {EV_ACCEPTED: 41, EV_REJECTED: 23, EV_TRADE: 68, EV_CANCELLED: 30,
                   EV_AMENDED: 46, EV_EXPIRED: 30, EV_LEVEL: 22, EV_HALTED: 1, EV_RESUMED: 1,
                   EV_MASS_CANCELLED: 24}
if EVENT_SIZES != _EXPECTED_SIZES or NEW_ORDER_S.size != 33 or CANCEL_S.size != 20 \
        or AMEND_S.size != 36 or CANCEL_ALL_S.size != 5:
    raise ImportError("crossengine codec layouts changed size: update engine.pyx and the docs")

EVENT_NAMES = {EV_ACCEPTED: "OrderAccepted", EV_REJECTED: "OrderRejected", EV_TRADE: "Trade",
               EV_CANCELLED: "OrderCancelled", EV_AMENDED: "OrderAmended",
               EV_EXPIRED: "OrderExpired", EV_LEVEL: "LevelChanged", EV_HALTED: "SymbolHalted",
               EV_RESUMED: "SymbolResumed", EV_MASS_CANCELLED: "MassCancelled"}
SCOPE_ACCOUNT, SCOPE_BOOK = 1, 2

# -- cancel reasons (PROTOCOL.md ExecutionReport Reason for ExecType '4' / 'C') --------------
REASON_CLIENT = 0
REASON_MASS_CANCEL = 1
REASON_IOC_REMAINDER = 3
REASON_SELF_TRADE = 4
REASON_ADMIN = 5
REASON_MATCH_LIMIT = 6     # the taker reached max_fills: its rest expires

# -- reject codes: 3xxx, named as sentences, never reused -------------------------------------
REJECT_CODES = {
    3001: "price_not_on_tick",
    3002: "price_out_of_range",
    3003: "qty_below_min",
    3004: "qty_above_max",
    3005: "order_unknown",
    3006: "post_only_would_take",
    3007: "fok_not_fillable",
    3008: "symbol_halted",
    3009: "client_order_id_in_use",
    3010: "side_invalid",
    3011: "order_type_invalid",
    3012: "time_in_force_invalid",
    3013: "stp_mode_invalid",
    3014: "amend_qty_not_above_filled",
    3015: "command_malformed",
    3016: "book_full",
    3017: "amend_nothing_to_change",
    3018: "account_order_limit",
    3019: "order_ids_exhausted",
    3020: "source_not_operator",    # MassCancel, Halt, Resume from a source not the operator's
}
CODES = {name: code for code, name in REJECT_CODES.items()}

# -- bounds of one command's work, and so of its output ---------------------------------------
MAX_FILLS_LIMIT = 1000            # max_fills is configured in 1 .. this (the default)
MAX_ACCOUNT_ORDERS_LIMIT = 20_000  # max_account_orders in 1 .. this
DEFAULT_ACCOUNT_ORDERS = 10_000
ORDER_COUNTER_MAX = (1 << 40) - 1  # order ids are symbol_id << 40 | n, n in 1 .. this
MAX_PAYLOAD = 1 << 20             # mq.record.MAX_PAYLOAD (a test checks they agree)
CE_EVENTS_PREFIX = 4              # the TradingEngine's in record: <I symbol> + this payload
OUTPUT_MARGIN = 0.5               # the worst case stays below half of what a record holds


def worst_case_sizes(max_fills: int = MAX_FILLS_LIMIT,
                     max_account_orders: int = MAX_ACCOUNT_ORDERS_LIMIT) -> dict[int, int]:
    """The largest output payload, in bytes, of each command kind.

    A matching step is one maker met: a trade (68) or a self-trade prevention step (at most two
    cancels, 60); a taker takes at most ``max_fills`` steps. It touches one level each step,
    plus its own (where it rests) and, for an amend, the level it left. It ends with at most
    one event of its own (an expiry, 30). CancelAll touches at most the levels of the
    account's resting orders; MassCancel lists no level (the book is empty after it).
    """
    size = EVENT_SIZES
    step = max(size[EV_TRADE], 2 * size[EV_CANCELLED])
    matching = max_fills * step + size[EV_EXPIRED] + (max_fills + 2) * size[EV_LEVEL]
    return {
        NEW_ORDER: max(size[EV_REJECTED], size[EV_ACCEPTED] + matching),
        CANCEL: max(size[EV_REJECTED], size[EV_CANCELLED] + size[EV_LEVEL]),
        AMEND: max(size[EV_REJECTED], size[EV_AMENDED] + matching),
        CANCEL_ALL: max(size[EV_REJECTED],
                        size[EV_MASS_CANCELLED] + max_account_orders * size[EV_LEVEL]),
        MASS_CANCEL: max(size[EV_REJECTED], size[EV_MASS_CANCELLED]),
        HALT: max(size[EV_REJECTED], size[EV_HALTED]),
        RESUME: max(size[EV_REJECTED], size[EV_RESUMED]),
        KIND_TICK: 0,
    }


# -- the LiqEngine (docs/liqengine.md §1) -------------------------------------------------------
# LIQ, the LiqEngine's account: an event naming it routes to bit 63 (ROUTE_LIQ), not to a shard
LIQ_ACCOUNT = 0xFFFF_FFF0
ROUTE_LIQ = 1 << 63

# -- snapshots of an older version ------------------------------------------------------------
SNAP_HEADER_V1 = struct.Struct("<4sHIqQQqQQQBQ")      # before max_fills / max_account_orders
SNAP_HEADER_V2 = struct.Struct("<4sHIqQQqQIIQQBQ")
# Version 3 (the current one) adds n_shards (u8) and the count of te_sources (u16); the
# te_sources follow the header as u32s, then the orders.
SNAP_HEADER_V3 = struct.Struct("<4sHIqQQqQIIQQBQBH")
# Version 4 is version 3 plus the count of liq_sources (u16); they follow the te_sources as
# u32s. It is written only by an engine with liq_sources (one without writes version 3).
SNAP_HEADER_V4 = struct.Struct("<4sHIqQQqQIIQQBQBHH")


def upgrade_snapshot(data: bytes) -> bytes:
    """A version 1 or 2 snapshot as version 3; any other snapshot unchanged. Version 1 predates
    the bounds: they get their defaults (or, for an account already resting more than the
    default, its count, up to the hard limit). Version 1 and 2 predate routes and TradingEngine
    inputs: one shard, no te_sources (the engine as it ran then). Replicas restart from
    snapshots written before an upgrade."""
    if len(data) >= SNAP_HEADER_V2.size and bytes(data[:6]) == b"SQCE\x02\x00":
        fields = SNAP_HEADER_V2.unpack_from(data)
        return SNAP_HEADER_V3.pack(fields[0], 3, *fields[2:], 1, 0) + \
            bytes(data[SNAP_HEADER_V2.size:])
    if len(data) < SNAP_HEADER_V1.size or bytes(data[:6]) != b"SQCE\x01\x00":
        return data
    (magic, _v, symbol_id, tick, min_qty, max_qty, max_price, max_orders, counter, trade_id,
     halted, n) = SNAP_HEADER_V1.unpack_from(data)
    orders = bytes(data[SNAP_HEADER_V1.size:])
    if len(orders) != n * 47:
        # n is the file's word: counting accounts over it before the length is checked walked
        # up to 2**64 empty orders (a bit flipped in a version 3 header's version reads as one)
        raise ValueError("CrossEngine snapshot has the wrong length")
    per_account: dict[int, int] = {}
    for k in range(n):
        account = int.from_bytes(orders[k * 47 + 16:k * 47 + 20], "little")
        per_account[account] = per_account.get(account, 0) + 1
    limit = min(MAX_ACCOUNT_ORDERS_LIMIT, max([DEFAULT_ACCOUNT_ORDERS, *per_account.values()]))
    return SNAP_HEADER_V3.pack(magic, 3, symbol_id, tick, min_qty, max_qty, max_price,
                               max_orders, MAX_FILLS_LIMIT, limit, counter, trade_id, halted,
                               n, 1, 0) + orders


WORST_CASE_OUTPUT = max(worst_case_sizes().values())
if WORST_CASE_OUTPUT + CE_EVENTS_PREFIX > MAX_PAYLOAD * OUTPUT_MARGIN:
    raise ImportError(f"crossengine: a command can output {WORST_CASE_OUTPUT} bytes, over "
                      f"{OUTPUT_MARGIN:.0%} of a record's {MAX_PAYLOAD}: lower the bounds")


def new_order(client_order_id: int, side: int, price: int, qty: int, account: int,
              ord_type: int = LIMIT, tif: int = GTC, flags: int = 0, stp: int = STP_NONE) -> bytes:
    return NEW_ORDER_S.pack(client_order_id, price, qty, account, side, ord_type, tif, flags, stp)


def cancel(order_id: int = 0, client_order_id: int = 0, account: int = 0) -> bytes:
    return CANCEL_S.pack(order_id, client_order_id, account)


def amend(order_id: int = 0, client_order_id: int = 0, account: int = 0, price: int = 0,
          qty: int = 0) -> bytes:
    return AMEND_S.pack(order_id, client_order_id, account, price, qty)


def cancel_all(account: int, side: int = 0) -> bytes:
    return CANCEL_ALL_S.pack(account, side)


def decode_events(payload: bytes) -> list[tuple]:
    """[(type, *fields)] of one output payload; raises ValueError on a malformed one."""
    out = []
    off = 0
    while off < len(payload):
        kind = payload[off]
        s = EVENT_STRUCTS.get(kind)
        if s is None or off + s.size > len(payload):
            raise ValueError(f"malformed event at offset {off} (type {kind})")
        out.append(s.unpack_from(payload, off))
        off += s.size
    return out
