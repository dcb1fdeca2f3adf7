"""The LiqEngine's binary codec (docs/liqengine.md §3-4), and the layouts it reads.

Every layout lives here as a ``struct.Struct`` whose size is checked at import. Little-endian,
packed. Prices are ticks, quantities lots, money minor units.

Input record kinds of ``in.liq`` (§3):

    KIND_TICK     empty               time only: drives the close-out schedule and indicators
    MARK_PRICE    <Iq   (12)          symbol, mark (ticks); oracle sources and the operator
    FUND_DEPOSIT  <Qq   (16)          transfer id, amount (> 0 in, < 0 out); the operator only
    any kind      a TradingEngine output payload (from ``te_sources``)
    any kind      a CrossEngine output payload (from ``ce_sources``)

Output events of ``out.liq`` (§4), each starting with its u8 type: EVENT_STRUCTS.

The TradingEngine's and the CrossEngine's layouts below (TE_*, CE_*) mirror
tradingengine/codec.py and crossengine/codec.py byte for byte (engines never import each other;
tests/unit/test_liq_codec.py compares them). The LiqEngine reads TE events 4, 5, 8, 10 and 15
and walks the others by size; it reads the CE events that name LIQ_ACCOUNT and walks the rest.
"""
from __future__ import annotations

import struct

# -- the LIQ account and routes (§1) -------------------------------------------------------------
LIQ_ACCOUNT = 0xFFFF_FFF0          # the LiqEngine's trading account; no TradingEngine shard's
RESERVED_ACCOUNT_MIN = 0xFFFF_0000
ROUTE_LIQ = 1 << 63                # route bit 63: a record that concerns the LiqEngine
MAX_SHARDS = 63

# -- source ids (§2) -----------------------------------------------------------------------------
TE_SOURCE_BASE = 0x7400_0000       # | N: upstream out.te.N
CE_SOURCE_BASE = 0x7500_0000       # | symbol_id: upstream out.ce.SYM
LIQ_SOURCE = 0x7600_0000           # upstream out.liq (into in.ce.SYM and in.te.N)
ORACLE_SOURCE_BASE = 0x7100_0000   # | i: mark-price source i

# -- input kinds (§3) ----------------------------------------------------------------------------
KIND_TICK = 1
MARK_PRICE = 73
FUND_DEPOSIT = 90
MARK_PRICE_S = struct.Struct("<Iq")
FUND_DEPOSIT_S = struct.Struct("<Qq")
COMMAND_STRUCTS = {MARK_PRICE: MARK_PRICE_S, FUND_DEPOSIT: FUND_DEPOSIT_S}
COMMAND_NAMES = {KIND_TICK: "Tick", MARK_PRICE: "MarkPrice", FUND_DEPOSIT: "FundDeposit"}

# -- output events (§4) --------------------------------------------------------------------------
CE_COMMAND = 1      # <BIHH symbol, CrossEngine kind (32 new, 33 cancel), length; then the command
ADL = 2             # <BQIIqq adl id, account, symbol, qty (signed change to the account's
                    #   position: opposite to its sign), price
TAKEOVER = 3        # <BIIIqqq shard, account, symbol, size taken (signed: LIQ's new side),
                    #   bankruptcy price, residue received by the fund
FUND_CHANGED = 4    # <BqqB fund balance after, change, reason (FUND_*)
ADL_INDICATOR = 5   # <BIIB account, symbol, quintile 1-5 (5: first in line)
REJECTED = 6        # <BHHQ code (4xxx), input kind, reference
LIQ_POSITION = 7    # <BIqqq symbol, LIQ's size, cost, realised (lifetime)

EVENT_STRUCTS = {
    CE_COMMAND: struct.Struct("<BIHH"),
    ADL: struct.Struct("<BQIIqq"),
    TAKEOVER: struct.Struct("<BIIIqqq"),
    FUND_CHANGED: struct.Struct("<BqqB"),
    ADL_INDICATOR: struct.Struct("<BIIB"),
    REJECTED: struct.Struct("<BHHQ"),
    LIQ_POSITION: struct.Struct("<BIqqq"),
}
EVENT_SIZES = {k: s.size for k, s in EVENT_STRUCTS.items()}
EVENT_NAMES = {CE_COMMAND: "CrossEngineCommand", ADL: "Adl", TAKEOVER: "Takeover",
               FUND_CHANGED: "FundChanged", ADL_INDICATOR: "AdlIndicator",
               REJECTED: "Rejected", LIQ_POSITION: "LiqPosition"}
FUND_DEPOSIT_REASON, FUND_RESIDUE, FUND_CLOSE_OUT, FUND_DEFICIT = 1, 2, 3, 4
FUND_FUNDING = 5          # a shard's clearing paid (or received) funding: the fund's

# -- reject codes: 4xxx, named as sentences, never reused ---------------------------------------
REJECT_CODES = {
    4001: "command_malformed",
    4002: "source_not_allowed",     # a kind the configured sources say this source may not send
    4003: "kind_unknown",
    4004: "symbol_unknown",
    4005: "price_invalid",
    4006: "amount_invalid",
    4007: "fund_insufficient",      # a withdrawal from the fund larger than what is free
    4008: "transfer_id_in_use",
}
CODES = {name: code for code, name in REJECT_CODES.items()}

# -- the TradingEngine's events (tradingengine/codec.py), as this engine reads them -------------
TE_CE_COMMAND = 1
TE_ACCOUNT = 4            # <BIqqqq account, balance, available, order margin, position margin
TE_POSITION = 5           # <BIIqqqqqqIB account, symbol, size, cost, margin, liquidation price,
                          #   bankruptcy price, realised, leverage x100, mode
TE_LIQUIDATION = 8        # <BIIqqqq account, symbol, size, bankruptcy price, cost at it, residue
TE_FUNDING = 7            # <BIIiq account, symbol, rate ppm, amount (> 0 paid); LIQ_ACCOUNT:
                          #   the shard's clearing account's, the fund's to book
TE_DEFICIT_COVERED = 10   # <BIq account, amount
TE_SESSION_MESSAGE = 14   # <BIQH + the PROTOCOL.md root block of templateId
TE_ADL_APPLIED = 15       # <BQIIqqq adl id, account, symbol, qty closed (signed), price, realised
TE_EVENT_STRUCTS = {
    1: struct.Struct("<BIHH"),
    2: struct.Struct("<BBBIIQQBBqQqQQQqHB"),
    3: struct.Struct("<BHHIIQ"),
    4: struct.Struct("<BIqqqq"),
    5: struct.Struct("<BIIqqqqqqIB"),
    6: struct.Struct("<BQIqqB"),
    7: struct.Struct("<BIIiq"),
    8: struct.Struct("<BIIqqqq"),
    9: struct.Struct("<BIiqqqq"),
    10: struct.Struct("<BIq"),
    11: struct.Struct("<BIQQHB"),
    12: struct.Struct("<BIQ"),
    13: struct.Struct("<BIQQQQB"),
    14: struct.Struct("<BIQH"),
    15: struct.Struct("<BQIIqqq"),
}
TE_EVENT_SIZES = {k: s.size for k, s in TE_EVENT_STRUCTS.items()}
# PROTOCOL.md root block sizes by templateId (tradingengine/codec.py P_BLOCK_SIZES)
TE_P_BLOCK_SIZES = {10: 20, 100: 52, 101: 46, 102: 64, 103: 31, 200: 112, 201: 48, 202: 36,
                    203: 68}

# -- the CrossEngine's layouts (crossengine/codec.py) -------------------------------------------
CE_NEW_ORDER, CE_CANCEL = 32, 33
CE_NEW_ORDER_S = struct.Struct("<QqQIBBBBB")   # client_order_id, price, qty, account, side,
                                               # ord_type, tif, flags, stp
CE_CANCEL_S = struct.Struct("<QQI")            # order_id, client_order_id, account
BUY, SELL = ord("1"), ord("2")
LIMIT = ord("2")
GTC, IOC = ord("1"), ord("3")
CE_ACCEPTED, CE_REJECTED, CE_TRADE, CE_CANCELLED = 1, 2, 3, 4
CE_AMENDED, CE_EXPIRED, CE_LEVEL, CE_HALTED, CE_RESUMED, CE_MASS_CANCELLED = 5, 6, 7, 8, 9, 10
CE_SCOPE_ACCOUNT, CE_SCOPE_BOOK = 1, 2
CE_REASON_MATCH_LIMIT = 6   # an IOC's rest expired at the matching limit, the book still crossing
CE_EVENT_STRUCTS = {
    CE_ACCEPTED: struct.Struct("<BQQIBBqQBB"),    # order_id, client_order_id, account, side,
                                                  # ord_type, price, qty, tif, flags
    CE_REJECTED: struct.Struct("<BQIHQ"),         # client_order_id, account, code, order_id
    CE_TRADE: struct.Struct("<BQQQIIqQBQQBB"),    # trade_id, maker order, taker order, maker
                                                  # account, taker account, price, qty,
                                                  # aggressor side, leaves x2, flags x2
    CE_CANCELLED: struct.Struct("<BQQIQB"),       # order_id, client_order_id, account, qty, reason
    CE_AMENDED: struct.Struct("<BQQIqQQB"),
    CE_EXPIRED: struct.Struct("<BQQIQB"),         # as CANCELLED: the rest of an IOC
    CE_LEVEL: struct.Struct("<BBqQI"),
    CE_HALTED: struct.Struct("<B"),
    CE_RESUMED: struct.Struct("<B"),
    CE_MASS_CANCELLED: struct.Struct("<BBIBBQQ"),  # scope, account, side, reason, count, last id
}
CE_EVENT_SIZES = {k: s.size for k, s in CE_EVENT_STRUCTS.items()}

_EXPECTED = {CE_COMMAND: 9, ADL: 33, TAKEOVER: 37, FUND_CHANGED: 18, ADL_INDICATOR: 10,
             REJECTED: 13, LIQ_POSITION: 29}
_EXPECTED_TE = {1: 9, 2: 88, 3: 21, 4: 37, 5: 62, 6: 30, 7: 21, 8: 41, 9: 41, 10: 13, 11: 24,
                12: 13, 13: 38, 14: 15, 15: 41}
_EXPECTED_CE = {1: 41, 2: 23, 3: 68, 4: 30, 5: 46, 6: 30, 7: 22, 8: 1, 9: 1, 10: 24}
if (EVENT_SIZES != _EXPECTED or TE_EVENT_SIZES != _EXPECTED_TE
        or CE_EVENT_SIZES != _EXPECTED_CE or MARK_PRICE_S.size != 12
        or FUND_DEPOSIT_S.size != 16 or CE_NEW_ORDER_S.size != 33 or CE_CANCEL_S.size != 20):
    raise ImportError("liqengine codec layouts changed size: update docs/liqengine.md and tests")

_CMD = EVENT_STRUCTS[CE_COMMAND]


# -- encoders (the operator, oracles, tests) -----------------------------------------------------

def mark_price(symbol: int, mark: int) -> bytes:
    return MARK_PRICE_S.pack(symbol, mark)


def fund_deposit(transfer_id: int, amount: int) -> bytes:
    return FUND_DEPOSIT_S.pack(transfer_id, amount)


def ce_new_order(symbol: int, client_order_id: int, side: int, price: int, qty: int,
                 tif: int) -> bytes:
    """CrossEngineCommand: a limit order of LIQ for the CrossEngine of ``symbol``."""
    return _CMD.pack(CE_COMMAND, symbol, CE_NEW_ORDER, CE_NEW_ORDER_S.size) + CE_NEW_ORDER_S.pack(
        client_order_id, price, qty, LIQ_ACCOUNT, side, LIMIT, tif, 0, 0)


def ce_cancel(symbol: int, order_id: int, client_order_id: int) -> bytes:
    return _CMD.pack(CE_COMMAND, symbol, CE_CANCEL, CE_CANCEL_S.size) + CE_CANCEL_S.pack(
        order_id, client_order_id, LIQ_ACCOUNT)


def decode_events(payload: bytes) -> list[tuple]:
    """[(type, *fields)] of one LiqEngine output payload; a CrossEngineCommand comes as
    (1, symbol, kind, length, command bytes). Raises ValueError on a malformed payload."""
    out = []
    off = 0
    n = len(payload)
    while off < n:
        kind = payload[off]
        s = EVENT_STRUCTS.get(kind)
        if s is None or off + s.size > n:
            raise ValueError(f"malformed event at offset {off} (type {kind})")
        ev = s.unpack_from(payload, off)
        off += s.size
        if kind == CE_COMMAND:
            if off + ev[3] > n:
                raise ValueError(f"truncated CrossEngineCommand at offset {off}")
            ev = ev + (bytes(payload[off:off + ev[3]]),)
            off += ev[3]
        out.append(ev)
    return out


def walk_te(payload: bytes) -> list[tuple[int, int]]:
    """[(type, offset)] of the events of a TradingEngine output payload; ValueError if it does
    not parse (a deployment mismatch)."""
    out = []
    off = 0
    n = len(payload)
    sizes = TE_EVENT_SIZES
    while off < n:
        kind = payload[off]
        size = sizes.get(kind)
        if size is None or off + size > n:
            raise ValueError(f"TradingEngine event at offset {off} (type {kind}) does not parse")
        out.append((kind, off))
        if kind == TE_CE_COMMAND:
            size += int.from_bytes(payload[off + 7:off + 9], "little")
        elif kind == TE_SESSION_MESSAGE:
            template = int.from_bytes(payload[off + 13:off + 15], "little")
            block = TE_P_BLOCK_SIZES.get(template)
            if block is None:
                raise ValueError(f"SessionMessage at offset {off}: template {template} unknown")
            size += block
        off += size
        if off > n:
            raise ValueError(f"TradingEngine event at offset {off} runs past the payload")
    return out


def walk_ce(payload: bytes) -> list[tuple[int, int]]:
    """[(type, offset)] of the events of a CrossEngine output payload; ValueError if it does
    not parse."""
    out = []
    off = 0
    n = len(payload)
    sizes = CE_EVENT_SIZES
    while off < n:
        kind = payload[off]
        size = sizes.get(kind)
        if size is None or off + size > n:
            raise ValueError(f"CrossEngine event at offset {off} (type {kind}) does not parse")
        out.append((kind, off))
        off += size
    return out
