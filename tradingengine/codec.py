"""The TradingEngine's binary codec: commands in (record payloads of in.te.N), events out.

Every layout of the TradingEngine lives here as a ``struct.Struct`` whose size is checked at
import. Little-endian, packed. Enumerations carry FIX values as PROTOCOL.md does (Side '1' buy
'2' sell, OrdType '1' market '2' limit, TimeInForce '1' GTC '3' IOC '4' FOK), so the gateway
copies fields from NewOrderSingle; prices are ticks and quantities lots (the gateway converts
PROTOCOL.md's 1e-8 mantissas with the contract's tick and lot).

Input record kinds (KIND_TICK = 1 is the sequencer's idle tick: time only):

    NEW_ORDER          <QIIqQqBBBBBB client_order_id, account, symbol, price (0 market),
                                     qty, trigger price (0: none), side, ord_type, tif,
                                     flags (bit0 reduce-only, bit1 post-only),
                                     trigger kind (0 none, 1 stop, 2 take-profit),
                                     trigger by (1 mark price, 2 last price)
    CANCEL             <QQI          client_order_id of this request, the order's, account
    AMEND              <QQIqQ        client_order_id of this request, the order's, account,
                                     new price (0 unchanged), new total qty (0 unchanged)
    CANCEL_ALL         <QIIB         client_order_id, account, symbol (0 all), side (0 both)
    SET_LEVERAGE       <III          account, symbol, leverage x100
    SET_MARGIN_MODE    <IIB          account, symbol, mode (0 cross, 1 isolated)
    ADJUST_MARGIN      <IIq          account, symbol, amount (> 0 add, < 0 remove; isolated)
    DEPOSIT, WITHDRAW  <QIq          transfer id (unique; a repeat within the window is a
                                     no-op, an id at or below the expired ones is refused),
                                     account, amount
    MARK_PRICE         <Iq           symbol, mark price
    FUNDING_INPUTS     <Iii          symbol, premium index ppm, interest rate ppm
    DEAD_MANS_SWITCH   <IQ           account, timeout ms (0 disarms); re-sent to refresh
    CE_EVENTS          <I + events   symbol, then a CrossEngine output payload as it is
    SESSION_LOGON      <IQQIBHB + n x <I  user, session_id, conn_id, default account,
                                     cancel-on-disconnect mode, CodTimeoutMs, n; the user's
                                     n accounts (n <= 64)
    SESSION_END        <IQQB         user, session_id, conn_id, reason (0 logout, 1 disconnect,
                                     2 finalize)
    GATEWAY_START      <I            gateway index g
    CLIENT_MESSAGE     <IQBH + block user, session_id, gateway flags (bit0 throttled, bit1
                                     shed), templateId, the PROTOCOL.md root block (v1 size)

Output: one record per input record, same seq; its payload is the events of that command,
each starting with its u8 type (EVENT_STRUCTS). CE_COMMAND carries an order, cancel or amend
for the CrossEngine of its symbol, in the CrossEngine's own layout (CE_* below mirror
crossengine/codec.py byte for byte; a test compares them, since engines never import each
other).
"""
from __future__ import annotations

import struct

# -- input kinds --------------------------------------------------------------------------------
KIND_TICK = 1
NEW_ORDER = 64
CANCEL = 65
AMEND = 66
CANCEL_ALL = 67
SET_LEVERAGE = 68
SET_MARGIN_MODE = 69
ADJUST_MARGIN = 70
DEPOSIT = 71
WITHDRAW = 72
MARK_PRICE = 73
FUNDING_INPUTS = 74
DEAD_MANS_SWITCH = 75
CE_EVENTS = 76
SESSION_LOGON = 80
SESSION_END = 81
GATEWAY_START = 82
CLIENT_MESSAGE = 83

NEW_ORDER_S = struct.Struct("<QIIqQqBBBBBB")
CANCEL_S = struct.Struct("<QQI")
AMEND_S = struct.Struct("<QQIqQ")
CANCEL_ALL_S = struct.Struct("<QIIB")
SET_LEVERAGE_S = struct.Struct("<III")
SET_MARGIN_MODE_S = struct.Struct("<IIB")
ADJUST_MARGIN_S = struct.Struct("<IIq")
TRANSFER_S = struct.Struct("<QIq")
MARK_PRICE_S = struct.Struct("<Iq")
FUNDING_INPUTS_S = struct.Struct("<Iii")
DEAD_MANS_SWITCH_S = struct.Struct("<IQ")
CE_EVENTS_S = struct.Struct("<I")
SESSION_LOGON_S = struct.Struct("<IQQIBHB")    # then n x <I accounts
SESSION_END_S = struct.Struct("<IQQB")
GATEWAY_START_S = struct.Struct("<I")
CLIENT_MESSAGE_S = struct.Struct("<IQBH")       # then the root block
SESSION_KINDS = (SESSION_LOGON, SESSION_END, GATEWAY_START, CLIENT_MESSAGE)
MAX_SESSION_ACCOUNTS = 64
GW_THROTTLED, GW_SHED = 1, 2                    # CLIENT_MESSAGE gateway flags
END_LOGOUT, END_DISCONNECT, END_FINALIZE = 0, 1, 2
COD_OFF, COD_ON_DISCONNECT_OR_LOGOUT, COD_ON_DISCONNECT = 0, 1, 2

COMMAND_STRUCTS = {NEW_ORDER: NEW_ORDER_S, CANCEL: CANCEL_S, AMEND: AMEND_S,
                   CANCEL_ALL: CANCEL_ALL_S, SET_LEVERAGE: SET_LEVERAGE_S,
                   SET_MARGIN_MODE: SET_MARGIN_MODE_S, ADJUST_MARGIN: ADJUST_MARGIN_S,
                   DEPOSIT: TRANSFER_S, WITHDRAW: TRANSFER_S, MARK_PRICE: MARK_PRICE_S,
                   FUNDING_INPUTS: FUNDING_INPUTS_S, DEAD_MANS_SWITCH: DEAD_MANS_SWITCH_S,
                   CE_EVENTS: CE_EVENTS_S}
COMMAND_NAMES = {NEW_ORDER: "NewOrder", CANCEL: "CancelOrder", AMEND: "AmendOrder",
                 CANCEL_ALL: "CancelAllOrders", SET_LEVERAGE: "SetLeverage",
                 SET_MARGIN_MODE: "SetMarginMode", ADJUST_MARGIN: "AdjustIsolatedMargin",
                 DEPOSIT: "Deposit", WITHDRAW: "Withdraw", MARK_PRICE: "MarkPrice",
                 FUNDING_INPUTS: "FundingInputs", DEAD_MANS_SWITCH: "DeadMansSwitch",
                 CE_EVENTS: "CrossEngineEvents", SESSION_LOGON: "SessionLogon",
                 SESSION_END: "SessionEnd", GATEWAY_START: "GatewayStart",
                 CLIENT_MESSAGE: "ClientMessage"}

# -- enumerations -------------------------------------------------------------------------------
BUY, SELL = ord("1"), ord("2")
MARKET, LIMIT = ord("1"), ord("2")
GTC, IOC, FOK = ord("1"), ord("3"), ord("4")
DAY = ord("0")      # rests as GTC; expired at the end of its UTC day of sequenced time
FLAG_REDUCE_ONLY, FLAG_POST_ONLY = 1, 2
TRIGGER_NONE, TRIGGER_STOP, TRIGGER_TAKE_PROFIT = 0, 1, 2
BY_MARK, BY_LAST = 1, 2
CROSS, ISOLATED = 0, 1

# ExecType / OrdStatus (FIX 150 / 39)
EXEC_NEW, EXEC_CANCELED, EXEC_REPLACED, EXEC_REJECTED = ord("0"), ord("4"), ord("5"), ord("8")
EXEC_EXPIRED, EXEC_TRADE, EXEC_PENDING_NEW, EXEC_TRIGGERED = ord("C"), ord("F"), ord("A"), ord("L")
STATUS_NEW, STATUS_PARTIAL, STATUS_FILLED = ord("0"), ord("1"), ord("2")
STATUS_CANCELED, STATUS_REJECTED, STATUS_EXPIRED = ord("4"), ord("8"), ord("C")
STATUS_UNTRIGGERED = ord("A")   # a stop or take-profit waiting for its price

# cancel reasons (PROTOCOL.md ExecutionReport Reason for ExecType '4' / 'C'), plus engine ones
REASON_CLIENT, REASON_MASS_CANCEL, REASON_IOC_REMAINDER = 0, 1, 3
REASON_SELF_TRADE, REASON_ADMIN = 4, 5
REASON_MATCH_LIMIT = 6          # the CrossEngine stopped the order at its max fills: rest expired
REASON_REDUCE_ONLY = 7          # cut down or cancelled because the position shrank
REASON_LIQUIDATION = 8          # cancelled because the account reached maintenance
REASON_DEAD_MANS_SWITCH = 9
REASON_CANCEL_ON_DISCONNECT = 2
REASON_END_OF_DAY = 11         # a Day order at the end of its day (PROTOCOL.md's 6)

# -- events -------------------------------------------------------------------------------------
CE_COMMAND = 1        # <BIHH symbol, CrossEngine kind, length; then that many bytes of command
EXEC_REPORT = 2       # <BBBIIQQBBqQqQQQqHB exec type, ord status, account, symbol,
                      #   client_order_id, order id (the engine's), side, ord type, price, qty,
                      #   last price, last qty, leaves, cum qty, fee, code (2xxx/3xxx or reason),
                      #   liquidity (1 maker, 2 taker)
REQUEST_REJECTED = 3  # <BHHIIQ code, input kind, account, symbol, reference (transfer id / 0)
ACCOUNT = 4           # <BIqqqq account, balance, available, order margin, position margin
POSITION = 5          # <BIIqqqqqqIB account, symbol, size, cost, margin, liquidation price,
                      #   bankruptcy price, realised PnL (lifetime), leverage x100, mode
TRANSFER = 6          # <BQIqqB transfer id, account, amount, balance after, kind (DEPOSIT/WITHDRAW)
FUNDING = 7           # <BIIiq account, symbol, rate ppm, amount (> 0 paid, < 0 received)
LIQUIDATION = 8       # <BIIqqqq account, symbol, size, bankruptcy price, cost at that price,
                      #   money moved to the liquidation account (its margin residue)
FUNDING_SETTLED = 9   # <BIiqqqq symbol, rate ppm, mark, paid by payers, received, dust added
DEFICIT_COVERED = 10  # <BIq account, amount the liquidation account covered (balance went < 0)
CANCEL_REJECTED = 11  # <BIQQHB account, request client_order_id, order's client_order_id,
                      #   code, response to (1 cancel, 2 amend)
DEAD_MANS_SWITCH_FIRED = 12  # <BIQ account, orders cancelled
SESSION_STATE = 13    # <BIQQQQB user, session_id, conn_id, nextExpected (client), NextSeqNo
                      #   (server: last issued + 1), status (SESSION_* below)
SESSION_MESSAGE = 14  # <BIQH user, session_id, templateId; then the PROTOCOL.md root block of
                      #   that template (P_BLOCK_SIZES), SeqNo = the server SeqNo, Flags 0
ADL_APPLIED = 15      # <BQIIqqq adl id, account, symbol, qty closed (signed change to the
                      #   position; 0: nothing closed), price, realised PnL (docs/liqengine.md)
SESSION_RESUMED, SESSION_NEW, SESSION_BOUND_ELSEWHERE, SESSION_FINALIZED = 0, 1, 2, 3
SESSION_BEYOND = 4          # the Logon asked for a server SeqNo beyond NextSeqNo: nothing changed
SESSION_LIMIT = 5   # a new session over the user's limit (engine.MAX_USER_SESSIONS)

EVENT_STRUCTS = {
    CE_COMMAND: struct.Struct("<BIHH"),
    EXEC_REPORT: struct.Struct("<BBBIIQQBBqQqQQQqHB"),
    REQUEST_REJECTED: struct.Struct("<BHHIIQ"),
    ACCOUNT: struct.Struct("<BIqqqq"),
    POSITION: struct.Struct("<BIIqqqqqqIB"),
    TRANSFER: struct.Struct("<BQIqqB"),
    FUNDING: struct.Struct("<BIIiq"),
    LIQUIDATION: struct.Struct("<BIIqqqq"),
    FUNDING_SETTLED: struct.Struct("<BIiqqqq"),
    DEFICIT_COVERED: struct.Struct("<BIq"),
    CANCEL_REJECTED: struct.Struct("<BIQQHB"),
    DEAD_MANS_SWITCH_FIRED: struct.Struct("<BIQ"),
    SESSION_STATE: struct.Struct("<BIQQQQB"),
    SESSION_MESSAGE: struct.Struct("<BIQH"),
    ADL_APPLIED: struct.Struct("<BQIIqqq"),
}
EVENT_NAMES = {CE_COMMAND: "CrossEngineCommand", EXEC_REPORT: "ExecutionReport",
               REQUEST_REJECTED: "RequestRejected", ACCOUNT: "AccountStatus",
               POSITION: "PositionStatus", TRANSFER: "TransferApplied",
               FUNDING: "FundingPaid", LIQUIDATION: "PositionHandedToLiquidation",
               FUNDING_SETTLED: "FundingSettled", DEFICIT_COVERED: "DeficitCovered",
               CANCEL_REJECTED: "CancelRejected",
               DEAD_MANS_SWITCH_FIRED: "DeadMansSwitchFired",
               SESSION_STATE: "SessionState", SESSION_MESSAGE: "SessionMessage",
               ADL_APPLIED: "AdlApplied"}

_EXPECTED = {CE_COMMAND: 9, EXEC_REPORT: 88, REQUEST_REJECTED: 21, ACCOUNT: 37, POSITION: 62,
             TRANSFER: 30, FUNDING: 21, LIQUIDATION: 41, FUNDING_SETTLED: 41,
             DEFICIT_COVERED: 13, CANCEL_REJECTED: 24, DEAD_MANS_SWITCH_FIRED: 13,
             SESSION_STATE: 38, SESSION_MESSAGE: 15, ADL_APPLIED: 41}
_EXPECTED_COMMANDS = {NEW_ORDER: 46, CANCEL: 20, AMEND: 36, CANCEL_ALL: 17, SET_LEVERAGE: 12,
                      SET_MARGIN_MODE: 9, ADJUST_MARGIN: 16, DEPOSIT: 20, WITHDRAW: 20,
                      MARK_PRICE: 12, FUNDING_INPUTS: 12, DEAD_MANS_SWITCH: 12, CE_EVENTS: 4}

# -- the CrossEngine's layouts, as this engine writes and reads them ---------------------------
CE_NEW_ORDER, CE_CANCEL, CE_AMEND, CE_CANCEL_ALL = 32, 33, 34, 35
CE_NEW_ORDER_S = struct.Struct("<QqQIBBBBB")   # client_order_id, price, qty, account, side,
                                               # ord_type, tif, flags, stp
CE_CANCEL_S = struct.Struct("<QQI")            # order_id, client_order_id, account
CE_AMEND_S = struct.Struct("<QQIqQ")           # order_id, client_order_id, account, price, qty
CE_CANCEL_ALL_S = struct.Struct("<IB")         # account, side
CE_ACCEPTED, CE_REJECTED, CE_TRADE, CE_CANCELLED = 1, 2, 3, 4
CE_AMENDED, CE_EXPIRED, CE_LEVEL, CE_HALTED, CE_RESUMED = 5, 6, 7, 8, 9
CE_MASS_CANCELLED = 10         # scope, account, side, reason, count, last order id assigned
CE_SCOPE_ACCOUNT, CE_SCOPE_BOOK = 1, 2
CE_MAX_FILLS = 1000            # the CrossEngine's MAX_FILLS_LIMIT: makers one record's takers meet
CE_FOK_NOT_FILLABLE = 3007     # the CrossEngine's reject code of an FOK it cannot fill in full
CE_UNKNOWN_ORDER = 3005        # its reject of a command naming no order it holds
CE_EVENT_STRUCTS = {
    CE_ACCEPTED: struct.Struct("<BQQIBBqQBB"),
    CE_REJECTED: struct.Struct("<BQIHQ"),
    CE_TRADE: struct.Struct("<BQQQIIqQBQQBB"),
    CE_CANCELLED: struct.Struct("<BQQIQB"),
    CE_AMENDED: struct.Struct("<BQQIqQQB"),
    CE_EXPIRED: struct.Struct("<BQQIQB"),
    CE_LEVEL: struct.Struct("<BBqQI"),
    CE_HALTED: struct.Struct("<B"),
    CE_RESUMED: struct.Struct("<B"),
    CE_MASS_CANCELLED: struct.Struct("<BBIBBQQ"),
}

# -- the LiqEngine (docs/liqengine.md §1, §4) ---------------------------------------------------
# LIQ, the LiqEngine's trading account, belongs to no shard: ids from RESERVED_ACCOUNT_MIN up are
# reserved (Deposit refuses them) and a trade leg naming one is always a foreign leg (clearing).
LIQ_ACCOUNT = 0xFFFF_FFF0
RESERVED_ACCOUNT_MIN = 0xFFFF_0000
ROUTE_LIQ = 1 << 63            # route bit: the record concerns the LiqEngine (in.liq takes it)
ROUTE_LIQ_EVENTS = (ACCOUNT, POSITION, LIQUIDATION, DEFICIT_COVERED, ADL_APPLIED)
# the LiqEngine's output events as this engine walks them (liq_sources), mirrored from
# liqengine/codec.py (engines never import each other): type -> fixed size; a CrossEngineCommand
# (1) is followed by its u16 length (at offset 7) of command bytes
LIQ_CE_COMMAND, LIQ_ADL = 1, 2
LIQ_EVENT_SIZES = {1: 9, 2: 33, 3: 37, 4: 18, 5: 10, 6: 13, 7: 29}
LIQ_ADL_S = struct.Struct("<BQIIqq")   # adl id, account, symbol, qty (signed change), price

# -- PROTOCOL.md root blocks (chars as u8: the same bytes) --------------------------------------
P_NOT_APPLIED, P_NEW_ORDER, P_CANCEL, P_REPLACE, P_MASS_CANCEL = 10, 100, 101, 102, 103
P_EXEC_REPORT, P_CANCEL_REJECT, P_MASS_CANCEL_REPORT, P_BUSINESS_REJECT = 200, 201, 202, 203
P_STRUCTS = {
    P_NOT_APPLIED: struct.Struct("<QQI"),
    P_NEW_ORDER: struct.Struct("<QQQqQIIBBBB"),
    P_CANCEL: struct.Struct("<QQQQQIBB"),
    P_REPLACE: struct.Struct("<QQQQQqQIBBBB"),
    P_MASS_CANCEL: struct.Struct("<QQQIBBB"),
    P_EXEC_REPORT: struct.Struct("<QQQQQQqQqQQQIIBBBBBBBB"),
    P_CANCEL_REJECT: struct.Struct("<QQQQQIBBBB"),
    P_MASS_CANCEL_REPORT: struct.Struct("<QQQIIBBBB"),
    P_BUSINESS_REJECT: struct.Struct("<QQQQHBB32s"),
}
P_BLOCK_SIZES = {t: s.size for t, s in P_STRUCTS.items()}
P_NULL_ID = (1 << 64) - 1          # null u64 (ClOrdID, OrderID)
P_NULL_PRICE = -(1 << 63)          # null Price (INT64_MIN)
P_NULL_SECURITY = (1 << 32) - 1    # null SecurityID
P_PRICE_SCALE = 10**8              # PROTOCOL price mantissa: x 1e-8; ContractSpec.tick is x 1e8
P_FLAG_POST_ONLY = 2
if P_BLOCK_SIZES != {10: 20, 100: 52, 101: 46, 102: 64, 103: 31, 200: 112, 201: 48, 202: 36,
                     203: 68}:
    raise ImportError("PROTOCOL.md block sizes changed: update tradingengine/codec.py")

if ({k: s.size for k, s in EVENT_STRUCTS.items()} != _EXPECTED
        or {k: s.size for k, s in COMMAND_STRUCTS.items()} != _EXPECTED_COMMANDS
        or CE_NEW_ORDER_S.size != 33 or CE_EVENT_STRUCTS[CE_TRADE].size != 68
        or LIQ_ADL_S.size != LIQ_EVENT_SIZES[LIQ_ADL]):
    raise ImportError("tradingengine codec layouts changed size: update the docs and tests")

# -- reject codes: 2xxx, named as sentences, never reused --------------------------------------
REJECT_CODES = {
    2001: "command_malformed",
    2002: "account_not_in_shard",
    2003: "account_unknown",
    2004: "symbol_unknown",
    2005: "side_invalid",
    2006: "order_type_invalid",
    2007: "time_in_force_invalid",
    2008: "price_invalid",
    2009: "qty_invalid",
    2010: "mark_price_unknown",
    2011: "price_outside_band",
    2012: "margin_insufficient",
    2013: "risk_limit_exceeded",
    2014: "reduce_only_would_increase",
    2015: "client_order_id_in_use",
    2016: "order_unknown",
    2017: "order_pending",
    2018: "trigger_invalid",
    2019: "trigger_would_fire_at_once",
    2020: "leverage_invalid",
    2021: "leverage_margin_insufficient",
    2022: "margin_mode_locked_by_position_or_orders",
    2023: "amount_invalid",
    2024: "withdrawal_exceeds_available",
    2025: "isolated_margin_not_applicable",
    2026: "isolated_margin_below_requirement",
    2027: "too_many_open_orders",
    2028: "post_only_not_limit",
    2029: "amend_nothing_to_change",
    2030: "account_balance_limit",
    2031: "transfer_id_expired",
    2032: "source_not_operator",    # a deposit or withdrawal from a source not the operator's
    2033: "source_not_allowed",     # a kind the configured sources say this source may not send
    2034: "session_unknown",        # a ClientMessage or SessionEnd for no live session
    2035: "price_not_whole_ticks",  # a PROTOCOL.md price that is not a whole number of ticks
    2036: "account_not_authorised",  # an account the session's user does not own
    2037: "session_invalid",        # a SessionLogon with a bad mode, account list or size
    2038: "account_reserved",       # a Deposit to an account id >= RESERVED_ACCOUNT_MIN (LIQ's)
    2039: "client_order_id_null",   # a session's ClOrdID of 2^64 - 1 (OrigClOrdID's null)
    2040: "order_done",             # a session's cancel or replace of its finished order
    2041: "post_only_not_addable",  # a replace asking PostOnly of an order entered without it
    2042: "replace_changes_type",   # a replace whose OrdType or TimeInForce is not the order's
    2043: "price_beyond_bankruptcy",  # a closing order priced through its position's bankruptcy
    2044: "margin_strands_closing_order",  # the margin it holds moves a resting close beyond bk
    2045: "funding_pending",  # the account's funding of the interval is not settled yet
    2046: "funding_inputs_invalid",  # a premium index or interest rate beyond +/-100%
}
CODES = {name: code for code, name in REJECT_CODES.items()}


# -- encoders of commands (clients, the gateway, tests) ----------------------------------------

def new_order(client_order_id: int, account: int, symbol: int, side: int, price: int, qty: int,
              ord_type: int = LIMIT, tif: int = GTC, flags: int = 0, trigger_price: int = 0,
              trigger_kind: int = TRIGGER_NONE, trigger_by: int = BY_MARK) -> bytes:
    return NEW_ORDER_S.pack(client_order_id, account, symbol, price, qty, trigger_price, side,
                            ord_type, tif, flags, trigger_kind, trigger_by)


def cancel(client_order_id: int, orig_client_order_id: int, account: int) -> bytes:
    return CANCEL_S.pack(client_order_id, orig_client_order_id, account)


def amend(client_order_id: int, orig_client_order_id: int, account: int, price: int = 0,
          qty: int = 0) -> bytes:
    return AMEND_S.pack(client_order_id, orig_client_order_id, account, price, qty)


def cancel_all(client_order_id: int, account: int, symbol: int = 0, side: int = 0) -> bytes:
    return CANCEL_ALL_S.pack(client_order_id, account, symbol, side)


def set_leverage(account: int, symbol: int, leverage_x100: int) -> bytes:
    return SET_LEVERAGE_S.pack(account, symbol, leverage_x100)


def set_margin_mode(account: int, symbol: int, mode: int) -> bytes:
    return SET_MARGIN_MODE_S.pack(account, symbol, mode)


def adjust_margin(account: int, symbol: int, amount: int) -> bytes:
    return ADJUST_MARGIN_S.pack(account, symbol, amount)


def transfer(transfer_id: int, account: int, amount: int) -> bytes:
    return TRANSFER_S.pack(transfer_id, account, amount)


def mark_price(symbol: int, price: int) -> bytes:
    return MARK_PRICE_S.pack(symbol, price)


def funding_inputs(symbol: int, premium_ppm: int, interest_ppm: int) -> bytes:
    return FUNDING_INPUTS_S.pack(symbol, premium_ppm, interest_ppm)


def dead_mans_switch(account: int, timeout_ms: int) -> bytes:
    return DEAD_MANS_SWITCH_S.pack(account, timeout_ms)


def ce_events(symbol: int, events: bytes) -> bytes:
    return CE_EVENTS_S.pack(symbol) + events


def liq_adl(adl_id: int, account: int, symbol: int, qty: int, price: int) -> bytes:
    """A LiqEngine Adl event (docs/liqengine.md §4), as this engine reads it from liq_sources."""
    return LIQ_ADL_S.pack(LIQ_ADL, adl_id, account, symbol, qty, price)


def session_logon(user: int, session_id: int, conn_id: int, default_account: int,
                  accounts: list[int] | None = None, cod_mode: int = COD_OFF,
                  cod_timeout_ms: int = 0, next_expected: int | None = None) -> bytes:
    """next_expected: the Logon's NextExpectedSeqNo (a trailing u64; without it, not checked)."""
    accounts = [default_account] if accounts is None else list(accounts)
    return (SESSION_LOGON_S.pack(user, session_id, conn_id, default_account, cod_mode,
                                 cod_timeout_ms, len(accounts))
            + b"".join(struct.pack("<I", a) for a in accounts)
            + (b"" if next_expected is None else struct.pack("<Q", next_expected)))


def session_end(user: int, session_id: int, conn_id: int, reason: int = END_DISCONNECT) -> bytes:
    return SESSION_END_S.pack(user, session_id, conn_id, reason)


def gateway_start(g: int) -> bytes:
    return GATEWAY_START_S.pack(g)


def client_message(user: int, session_id: int, template: int, block: bytes,
                   gateway_flags: int = 0) -> bytes:
    return CLIENT_MESSAGE_S.pack(user, session_id, gateway_flags, template) + block


def session_messages(payload: bytes) -> list[tuple[int, int, int, tuple]]:
    """[(user, session_id, templateId, block fields)] of the SessionMessages of a payload."""
    return [(e[1], e[2], e[3], P_STRUCTS[e[3]].unpack(e[4]))
            for e in decode_events(payload) if e[0] == SESSION_MESSAGE]


def decode_events(payload: bytes) -> list[tuple]:
    """[(type, *fields)] of one output payload; a CE_COMMAND gets its command bytes appended,
    a SESSION_MESSAGE its root block.
    Raises ValueError on a malformed payload."""
    out: list[tuple] = []
    off = 0
    n = len(payload)
    while off < n:
        kind = payload[off]
        s = EVENT_STRUCTS.get(kind)
        if s is None or off + s.size > n:
            raise ValueError(f"malformed event at offset {off} (type {kind})")
        fields = s.unpack_from(payload, off)
        off += s.size
        if kind == CE_COMMAND:
            length = fields[3]
            if off + length > n:
                raise ValueError(f"truncated CrossEngine command at offset {off}")
            fields = fields + (payload[off:off + length],)
            off += length
        elif kind == SESSION_MESSAGE:
            length = P_BLOCK_SIZES.get(fields[3], -1)
            if length < 0 or off + length > n:
                raise ValueError(f"bad session message at offset {off}")
            fields = fields + (payload[off:off + length],)
            off += length
        out.append(fields)
    return out
