"""Every record of every stream in words: the tools' view of the log (`seqex replay`, `tail`,
the client's outcomes).

``decode_record(stream, record, units)`` gives a dict: the record header, then the command
(in.ce.*, in.te.*, in.liq) or the events (out.ce.*, out.te.*, out.liq) decoded with the
engine's own codec (crossengine/codec.py, tradingengine/codec.py, liqengine/codec.py; read
only). A record taken from another engine's out stream (its source is one of
deploy/topology.py's SRC_* ids: an order from out.te.N in in.ce.SYM, fills from out.ce.SYM in
in.te.N) is ``"command": "Upstream"`` with ``"from"`` naming that stream and its events
decoded (in.ce.SYM shows the CrossEngine commands for its symbol, as the engine applies them). Field names follow the codecs'
comments; sides, order types, times in force, flags, reasons and reject codes are words;
prices and quantities are decimal strings in the contract's units (ticks times ``tick_size``,
lots times ``lot_size`` from the topology), money stays in integer minor units (fields named
``*_minor``) in the dict and reads in the settlement currency in ``line()`` (the suffix
dropped: ``balance=100000``). A stream with no known codec keeps its payload as hex. A payload that its codec
cannot parse is shown as ``"malformed"`` with the codec's message and the hex, never dropped.

Field name lists are checked against the codecs' structs at import: a layout that gains or
loses a field fails here instead of being mislabelled.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from crossengine import codec as ce
from deploy import topology as _topo
from gateway import client as sdk
from gateway import wire as gw
from liqengine import codec as liq
from tradingengine import codec as te

KIND_TICK = 1


@dataclass(frozen=True)
class Units:
    """One symbol's contract units: the value of one tick and of one lot."""
    name: str
    symbol_id: int
    tick_size: Decimal = Decimal(1)
    lot_size: Decimal = Decimal(1)

    def price(self, ticks: int) -> str:
        return _fmt(ticks * self.tick_size)

    def qty(self, lots: int) -> str:
        return _fmt(lots * self.lot_size)


def _fmt(d: Decimal) -> str:
    """A decimal without exponent or trailing zeros ('100', '0.5', '-2.25')."""
    s = format(d, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


UNKNOWN = Units("?", 0)


def units_of(symbols: dict[str, dict]) -> dict[int, Units]:
    """symbol_id -> Units, from a topology's symbol tables (seqex.json)."""
    out = {}
    for name, s in symbols.items():
        sid = s.get("symbol_id", s.get("engine", {}).get("symbol_id", 0))
        out[sid] = Units(name, sid, Decimal(str(s.get("tick_size", 1))),
                         Decimal(str(s.get("lot_size", 1))))
    return out


# -- words ------------------------------------------------------------------------------------
SIDES = {ce.BUY: "buy", ce.SELL: "sell", 0: "both"}
ORD_TYPES = {ce.MARKET: "market", ce.LIMIT: "limit"}
TIFS = {ce.GTC: "gtc", ce.IOC: "ioc", ce.FOK: "fok"}
STP = {ce.STP_NONE: "none", ce.STP_CANCEL_NEWEST: "cancel_newest",
       ce.STP_CANCEL_OLDEST: "cancel_oldest", ce.STP_CANCEL_BOTH: "cancel_both",
       ce.STP_DECREMENT: "decrement"}
CE_REASONS = {ce.REASON_CLIENT: "client", ce.REASON_MASS_CANCEL: "mass_cancel",
              ce.REASON_IOC_REMAINDER: "ioc_remainder", ce.REASON_SELF_TRADE: "self_trade",
              ce.REASON_ADMIN: "admin", ce.REASON_MATCH_LIMIT: "match_limit"}
SCOPES = {ce.SCOPE_ACCOUNT: "account", ce.SCOPE_BOOK: "book"}
TE_REASONS = {te.REASON_CLIENT: "client", te.REASON_MASS_CANCEL: "mass_cancel",
              te.REASON_IOC_REMAINDER: "ioc_remainder", te.REASON_SELF_TRADE: "self_trade",
              te.REASON_ADMIN: "admin", te.REASON_MATCH_LIMIT: "match_limit",
              te.REASON_REDUCE_ONLY: "reduce_only",
              te.REASON_LIQUIDATION: "liquidation",
              te.REASON_DEAD_MANS_SWITCH: "dead_mans_switch",
              te.REASON_CANCEL_ON_DISCONNECT: "cancel_on_disconnect",
              te.REASON_END_OF_DAY: "end_of_day"}
EXEC_TYPES = {te.EXEC_NEW: "new", te.EXEC_CANCELED: "canceled", te.EXEC_REPLACED: "replaced",
              te.EXEC_REJECTED: "rejected", te.EXEC_EXPIRED: "expired", te.EXEC_TRADE: "trade",
              te.EXEC_PENDING_NEW: "pending_new", te.EXEC_TRIGGERED: "triggered"}
ORD_STATUSES = {te.STATUS_NEW: "new", te.STATUS_PARTIAL: "partially_filled",
                te.STATUS_FILLED: "filled", te.STATUS_CANCELED: "canceled",
                te.STATUS_REJECTED: "rejected", te.STATUS_EXPIRED: "expired",
                te.STATUS_UNTRIGGERED: "untriggered"}
TRIGGER_KINDS = {te.TRIGGER_NONE: "none", te.TRIGGER_STOP: "stop",
                 te.TRIGGER_TAKE_PROFIT: "take_profit"}
TRIGGER_BY = {te.BY_MARK: "mark_price", te.BY_LAST: "last_price"}
MARGIN_MODES = {te.CROSS: "cross", te.ISOLATED: "isolated"}
LIQUIDITY = {0: "none", 1: "maker", 2: "taker"}
TRANSFER_KINDS = {te.DEPOSIT: "deposit", te.WITHDRAW: "withdraw"}
RESPONSE_TO = {1: "cancel", 2: "amend"}

# Reject codes as sentences a trader reads: what was wrong and what to change.
REJECT_TEXT = {
    3001: "the price is not a multiple of the tick size",
    3002: "the price is out of range (a limit order needs a price above 0, within the maximum)",
    3003: "the quantity is below the symbol's minimum",
    3004: "the quantity is above the symbol's maximum",
    3005: "no such order is open",
    3006: "a post-only order would have taken liquidity",
    3007: "a fill-or-kill order could not be filled in full",
    3008: "the symbol is halted",
    3009: "this client order id is already in use by an open order",
    3010: "the side is neither buy nor sell",
    3011: "the order type is neither market nor limit",
    3012: "the time in force is not gtc, ioc or fok",
    3013: "the self-trade prevention mode is unknown",
    3014: "the new quantity is not above what is already filled",
    3015: "the command is malformed",
    3016: "the order book is full",
    3017: "the amendment changes nothing",
    3018: "the account has as many resting orders as the symbol allows",
    3019: "the symbol has given out every order id it can",
    2001: "the request is malformed",
    2002: "the account belongs to another shard",
    2003: "the account is unknown (deposit first)",
    2004: "the symbol is unknown",
    2005: "the side is neither buy nor sell",
    2006: "the order type is neither market nor limit",
    2007: "the time in force is not gtc, ioc or fok",
    2008: "the price is invalid",
    2009: "the quantity is invalid",
    2010: "the symbol has no mark price yet",
    2011: "the price is outside the band around the mark price",
    2012: "the available margin is insufficient",
    2013: "the position would exceed the risk limit",
    2014: "a reduce-only order would increase the position",
    2015: "this client order id is already in use",
    2016: "no such order is open",
    2017: "the order is still pending at the matching engine",
    2018: "the trigger is invalid",
    2019: "the trigger would fire at once",
    2020: "the leverage is out of range",
    2021: "the margin is insufficient for this leverage, or it would leave the isolated "
          "position below maintenance at the mark",
    2022: "the margin mode cannot change while a position or orders are open",
    2023: "the amount is invalid",
    2024: "the withdrawal exceeds the available balance, or would leave the account below "
          "maintenance at the mark or a resting closing order beyond its bankruptcy price",
    2025: "isolated margin does not apply in cross mode",
    2026: "the isolated margin would fall below the requirement, or leave the position "
          "below maintenance at the mark",
    2027: "too many open orders",
    2028: "post-only applies to limit orders only",
    2029: "the amendment changes nothing",
    2030: "the account balance would exceed its limit",
    2031: "the transfer id is at or below ids that have expired",
    2043: "the order would close the position beyond its bankruptcy price",
    2044: "the margin it would hold leaves a resting closing order beyond its position's "
          "bankruptcy price (cancel or move that order first)",
    2045: "the account's funding payment of this interval is still being settled: no margin "
          "moves into an isolated position until it is; retry in a moment",
    2046: "a funding premium index or interest rate beyond +/-100% (1,000,000 ppm): the "
          "source is broken; the inputs stay as they were",
}


def reject_name(code: int) -> str:
    return ce.REJECT_CODES.get(code) or te.REJECT_CODES.get(code) \
        or liq.REJECT_CODES.get(code) or f"code_{code}"


def reject_text(code: int) -> str:
    return REJECT_TEXT.get(code, reject_name(code).replace("_", " "))


def _word(table: dict[int, str], v: int) -> str:
    return table.get(v, f"invalid({v})")


def _flags(v: int) -> list[str]:
    out = []
    if v & ce.FLAG_REDUCE_ONLY:
        out.append("reduce_only")
    if v & ce.FLAG_POST_ONLY:
        out.append("post_only")
    if v & ~(ce.FLAG_REDUCE_ONLY | ce.FLAG_POST_ONLY):
        out.append(f"unknown({v})")
    return out


# -- layouts: (name, struct, field names, how each field is shown) ----------------------------
# Shown as: p = price (0 means none), P = price (0 is a price), q = qty in lots, z = signed size
# in lots, m = money in minor units, s = side, o = order type, t = tif, f = flags, x = stp,
# r = CrossEngine reason, R = TradingEngine reason or code, c = reject code, y = symbol,
# G = mass-cancel scope, and any other letter: the integer as it is.
CE_COMMANDS = {
    ce.NEW_ORDER: ("NewOrder", ce.NEW_ORDER_S,
                   "client_order_id price qty account side ord_type tif flags stp", "ipqisotfx"),
    ce.CANCEL: ("CancelOrder", ce.CANCEL_S, "order_id client_order_id account", "iii"),
    ce.AMEND: ("AmendOrder", ce.AMEND_S, "order_id client_order_id account price qty", "iiipq"),
    ce.CANCEL_ALL: ("CancelAllOrders", ce.CANCEL_ALL_S, "account side", "is"),
    ce.MASS_CANCEL: ("MassCancel", None, "", ""),
    ce.HALT: ("HaltSymbol", None, "", ""),
    ce.RESUME: ("ResumeSymbol", None, "", ""),
}
CE_EVENTS = {
    ce.EV_ACCEPTED: ("order_id client_order_id account side ord_type price qty tif flags",
                     "iiisopqtf"),
    ce.EV_REJECTED: ("client_order_id account code order_id", "iici"),
    ce.EV_TRADE: ("trade_id maker_order_id taker_order_id maker_account taker_account price qty "
                  "aggressor_side maker_leaves taker_leaves maker_flags taker_flags",
                  "iiiiiPqsqqff"),
    ce.EV_CANCELLED: ("order_id client_order_id account qty reason", "iiiqr"),
    ce.EV_AMENDED: ("order_id client_order_id account price leaves qty kept_priority",
                    "iiiPqqb"),
    ce.EV_EXPIRED: ("order_id client_order_id account qty reason", "iiiqr"),
    ce.EV_LEVEL: ("side price qty orders", "sPqi"),
    ce.EV_HALTED: ("", ""),
    ce.EV_RESUMED: ("", ""),
    ce.EV_MASS_CANCELLED: ("scope account side reason orders_cancelled last_order_id",
                           "Gisrii"),
}
TE_COMMANDS = {
    te.NEW_ORDER: ("client_order_id account symbol price qty trigger_price side ord_type tif "
                   "flags trigger_kind trigger_by", "iiypqpsotfKB"),
    te.CANCEL: ("client_order_id orig_client_order_id account", "iii"),
    te.AMEND: ("client_order_id orig_client_order_id account price qty", "iiipq"),
    te.CANCEL_ALL: ("client_order_id account symbol side", "iiys"),
    te.SET_LEVERAGE: ("account symbol leverage_x100", "iyi"),
    te.SET_MARGIN_MODE: ("account symbol mode", "iyM"),
    te.ADJUST_MARGIN: ("account symbol amount_minor", "iym"),
    te.DEPOSIT: ("transfer_id account amount_minor", "iim"),
    te.WITHDRAW: ("transfer_id account amount_minor", "iim"),
    te.MARK_PRICE: ("symbol price", "yP"),
    te.FUNDING_INPUTS: ("symbol premium_ppm interest_ppm", "yii"),
    te.DEAD_MANS_SWITCH: ("account timeout_ms", "ii"),
    te.CE_EVENTS: ("symbol", "y"),
}
TE_EVENTS = {
    te.CE_COMMAND: ("symbol ce_kind length", "yii"),
    te.EXEC_REPORT: ("exec_type ord_status account symbol client_order_id order_id side "
                     "ord_type price qty last_price last_qty leaves cum_qty fee_minor code "
                     "liquidity", "EOiyiisopqPqqqmRL"),
    te.REQUEST_REJECTED: ("code input_kind account symbol reference", "cKiyi"),
    te.ACCOUNT: ("account balance_minor available_minor order_margin_minor "
                 "position_margin_minor", "immmm"),
    te.POSITION: ("account symbol size cost_minor margin_minor liquidation_price "
                  "bankruptcy_price realised_pnl_minor leverage_x100 mode", "iyzmmPPmiM"),
    te.TRANSFER: ("transfer_id account amount_minor balance_minor kind", "iimmT"),
    te.FUNDING: ("account symbol rate_ppm amount_minor", "iyim"),
    te.LIQUIDATION: ("account symbol size bankruptcy_price cost_minor moved_minor", "iyzPmm"),
    te.FUNDING_SETTLED: ("symbol rate_ppm mark_price paid_minor received_minor dust_minor",
                         "yiPmmm"),
    te.DEFICIT_COVERED: ("account amount_minor", "im"),
    te.CANCEL_REJECTED: ("account client_order_id orig_client_order_id code response_to",
                         "iiicX"),
    te.DEAD_MANS_SWITCH_FIRED: ("account orders_cancelled", "ii"),
    te.SESSION_STATE: ("user session_id conn_id next_expected next_seq status", "iiiiii"),
    te.SESSION_MESSAGE: ("user session_id template", "iii"),
    te.ADL_APPLIED: ("adl_id account symbol qty price realised_pnl_minor", "iiyzPm"),
}
# the PROTOCOL.md root blocks a SessionMessage carries (prices as 1e-8 mantissas, as sent)
SESSION_BLOCKS = {
    te.P_NOT_APPLIED: ("NotApplied", "seq_no from_seq_no count"),
    te.P_EXEC_REPORT: ("ExecutionReport", "seq_no transact_time client_order_id "
                       "orig_client_order_id order_id exec_id price_e8 qty last_price_e8 "
                       "last_qty leaves cum_qty symbol account exec_type ord_status side "
                       "ord_type tif reason liquidity flags"),
    te.P_CANCEL_REJECT: ("OrderCancelReject", "seq_no transact_time client_order_id "
                         "orig_client_order_id order_id symbol ord_status response_to reason "
                         "flags"),
    te.P_MASS_CANCEL_REPORT: ("OrderMassCancelReport", "seq_no transact_time client_order_id "
                              "total_affected symbol request_type response reason flags"),
    te.P_BUSINESS_REJECT: ("BusinessReject", "seq_no transact_time ref_seq_no ref_id "
                           "ref_template reason flags text"),
}
SESSION_BLOCKS.update({
    te.P_NEW_ORDER: ("NewOrderSingle", "seq_no sending_time client_order_id price_e8 qty "
                     "security_id account side ord_type tif flags"),
    te.P_CANCEL: ("OrderCancelRequest", "seq_no sending_time client_order_id "
                  "orig_client_order_id order_id security_id side flags"),
    te.P_REPLACE: ("OrderCancelReplaceRequest", "seq_no sending_time client_order_id "
                   "orig_client_order_id order_id price_e8 qty security_id side ord_type tif "
                   "flags"),
    te.P_MASS_CANCEL: ("OrderMassCancelRequest", "seq_no sending_time client_order_id "
                       "security_id request_type side flags"),
})
SESSION_COMMANDS = {te.SESSION_LOGON: "SessionLogon", te.SESSION_END: "SessionEnd",
                    te.GATEWAY_START: "GatewayStart", te.CLIENT_MESSAGE: "ClientMessage"}
# the gateway's session records into in.te.N (tradingengine/codec.py): fixed part, names
SESSION_PAYLOADS = {
    te.SESSION_LOGON: (te.SESSION_LOGON_S, "user session_id conn_id default_account "
                       "cancel_on_disconnect cod_timeout_ms n_accounts"),
    te.SESSION_END: (te.SESSION_END_S, "user session_id conn_id reason"),
    te.GATEWAY_START: (te.GATEWAY_START_S, "gateway"),
    te.CLIENT_MESSAGE: (te.CLIENT_MESSAGE_S, "user session_id gateway_flags template"),
}
LIQ_COMMANDS = {
    liq.MARK_PRICE: ("symbol price", "yP"),
    liq.FUND_DEPOSIT: ("transfer_id amount_minor", "im"),
}
FUND_REASONS = {liq.FUND_DEPOSIT_REASON: "deposit", liq.FUND_RESIDUE: "residue",
                liq.FUND_CLOSE_OUT: "close_out", liq.FUND_DEFICIT: "deficit",
                liq.FUND_FUNDING: "funding"}
LIQ_EVENTS = {
    liq.CE_COMMAND: ("symbol ce_kind length", "yii"),
    liq.ADL: ("adl_id account symbol qty price", "iiyzP"),
    liq.TAKEOVER: ("shard account symbol size bankruptcy_price residue_minor", "iiyzPm"),
    liq.FUND_CHANGED: ("balance_minor change_minor reason", "mmF"),
    liq.ADL_INDICATOR: ("account symbol quintile", "iyi"),
    liq.REJECTED: ("code input_kind reference", "cii"),
    liq.LIQ_POSITION: ("symbol size cost_minor realised_pnl_minor", "yzmm"),
}


# The show letters of fields that print as a word from a table of names.
WORDS = {"s": SIDES, "o": ORD_TYPES, "t": TIFS, "x": STP, "r": CE_REASONS, "E": EXEC_TYPES,
         "O": ORD_STATUSES, "B": TRIGGER_BY, "M": MARGIN_MODES, "L": LIQUIDITY,
         "T": TRANSFER_KINDS, "X": RESPONSE_TO, "G": SCOPES, "F": FUND_REASONS}


def _n_fields(s: struct.Struct | None) -> int:
    return len(s.unpack(bytes(s.size))) if s is not None else 0


def _check_layouts() -> None:
    """Every name list matches its struct: one source for every layout."""
    pairs = [(f"CrossEngine command {k}", s, names, shows)
             for k, (_n, s, names, shows) in CE_COMMANDS.items()]
    pairs += [(f"CrossEngine event {k}", ce.EVENT_STRUCTS[k], names, shows, )
              for k, (names, shows) in CE_EVENTS.items()]
    pairs += [(f"TradingEngine command {k}", te.COMMAND_STRUCTS[k], names, shows)
              for k, (names, shows) in TE_COMMANDS.items()]
    pairs += [(f"TradingEngine event {k}", te.EVENT_STRUCTS[k], names, shows)
              for k, (names, shows) in TE_EVENTS.items()]
    pairs += [(f"LiqEngine command {k}", liq.COMMAND_STRUCTS[k], names, shows)
              for k, (names, shows) in LIQ_COMMANDS.items()]
    pairs += [(f"LiqEngine event {k}", liq.EVENT_STRUCTS[k], names, shows)
              for k, (names, shows) in LIQ_EVENTS.items()]
    pairs += [(f"TradingEngine session command {k}", st, names, "i" * len(names.split()))
              for k, (st, names) in SESSION_PAYLOADS.items()]
    pairs += [(f"PROTOCOL.md template {k}", te.P_STRUCTS[k], names, "i" * len(names.split()))
              for k, (_m, names) in SESSION_BLOCKS.items()]
    for what, s, names, shows in pairs:
        n = _n_fields(s) - (1 if what.startswith(("CrossEngine event", "TradingEngine event",
                                                  "LiqEngine event")) else 0)
        if len(names.split()) != n or len(shows) != n:
            raise ImportError(f"deploy/decode.py: {what} has {n} fields, the decoder names "
                              f"{len(names.split())}: update it with the codec")
    missing = (set(ce.COMMAND_STRUCTS) - set(CE_COMMANDS)) | (set(ce.EVENT_STRUCTS)
                                                               - set(CE_EVENTS)) \
        | (set(te.COMMAND_STRUCTS) - set(TE_COMMANDS)) | (set(te.EVENT_STRUCTS) - set(TE_EVENTS)) \
        | (set(liq.COMMAND_STRUCTS) - set(LIQ_COMMANDS)) | (set(liq.EVENT_STRUCTS)
                                                            - set(LIQ_EVENTS)) \
        | (set(te.P_STRUCTS) - set(SESSION_BLOCKS))
    if missing:
        raise ImportError(f"deploy/decode.py: no decoder for kinds {sorted(missing)}")


_check_layouts()


def _show(names: str, shows: str, values: tuple, units: Units,
          by_id: dict[int, Units]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # A record's symbol field (TradingEngine layouts) picks the units of its other fields.
    if "y" in shows:
        sid = values[shows.index("y")]
        units = by_id.get(sid, Units(f"symbol {sid}", sid))
    for name, how, v in zip(names.split(), shows, values, strict=True):
        if how in WORDS:
            out[name] = _word(WORDS[how], v)
        elif how == "p":
            out[name] = units.price(v) if v else None
        elif how == "P":
            out[name] = units.price(v)
        elif how in "qz":
            out[name] = units.qty(v)
        elif how == "f":
            out[name] = _flags(v)
        elif how == "c":
            out[name] = v
            out["reason"] = reject_name(v)
            out["text"] = reject_text(v)
        elif how == "R":
            # An execution report's code: a reject code on rejects, else a cancel reason.
            out[name] = v
            if v >= 1000:
                out["reason"] = reject_name(v)
                out["text"] = reject_text(v)
            elif out.get("exec_type") in ("canceled", "expired"):
                out["reason"] = _word(TE_REASONS, v)
        elif how == "y":
            out[name] = units.name if v in by_id else v
        elif how == "K":   # a trigger's kind, or the command a TradingEngine answers
            out[name] = (_word(TRIGGER_KINDS, v) if name == "trigger_kind"
                         else te.COMMAND_NAMES.get(v, v))
        elif how == "b":
            out[name] = bool(v)
        else:
            out[name] = v
    return out


def ce_command(kind: int, payload: bytes, units: Units) -> dict[str, Any]:
    if kind == KIND_TICK:
        return {"command": "Tick"}
    spec = CE_COMMANDS.get(kind)
    if spec is None:
        return {"command": f"unknown({kind})", "payload_hex": payload.hex()}
    name, s, names, shows = spec
    size = s.size if s is not None else 0
    if len(payload) != size:
        return {"command": name, "malformed": f"{len(payload)} bytes, the layout has {size}",
                "payload_hex": payload.hex()}
    return {"command": name, **(_show(names, shows, s.unpack(payload), units, {})
                                if s is not None else {})}


def ce_events(payload: bytes, units: Units) -> list[dict[str, Any]]:
    try:
        events = ce.decode_events(payload)
    except ValueError as exc:
        return [{"event": "malformed", "error": str(exc), "payload_hex": payload.hex()}]
    out = []
    for ev in events:
        names, shows = CE_EVENTS[ev[0]]
        out.append({"event": ce.EVENT_NAMES[ev[0]], **_show(names, shows, ev[1:], units, {})})
    return out


def te_command(kind: int, payload: bytes, by_id: dict[int, Units]) -> dict[str, Any]:
    if kind == KIND_TICK:
        return {"command": "Tick"}
    if kind in SESSION_COMMANDS:
        return session_command(kind, payload, by_id)
    s = te.COMMAND_STRUCTS.get(kind)
    if s is None:
        return {"command": f"unknown({kind})", "payload_hex": payload.hex()}
    name = te.COMMAND_NAMES[kind]
    body = payload if kind != te.CE_EVENTS else payload[:s.size]
    if len(body) != s.size:
        return {"command": name, "malformed": f"{len(payload)} bytes, the layout has {s.size}",
                "payload_hex": payload.hex()}
    names, shows = TE_COMMANDS[kind]
    values = s.unpack(body)
    out = {"command": name, **_show(names, shows, values, UNKNOWN, by_id)}
    if kind == te.CE_EVENTS:
        out["events"] = ce_events(payload[s.size:], by_id.get(values[0], UNKNOWN))
    return out


def session_command(kind: int, payload: bytes, by_id: dict[int, Units]) -> dict[str, Any]:
    """A gateway's session record into in.te.N: its fields, the user's accounts (SessionLogon)
    and the client's PROTOCOL.md message (ClientMessage), as the TradingEngine reads them."""
    name = SESSION_COMMANDS[kind]
    st, names = SESSION_PAYLOADS[kind]
    if len(payload) < st.size:
        return {"command": name, "malformed": f"{len(payload)} bytes, the layout has at least "
                                              f"{st.size}", "payload_hex": payload.hex()}
    values = st.unpack_from(payload)
    out: dict[str, Any] = {"command": name, **dict(zip(names.split(), values, strict=True))}
    rest = payload[st.size:]
    if kind == te.SESSION_LOGON:
        n = out.pop("n_accounts")
        if len(rest) in (4 * n, 4 * n + 8):
            out["accounts"] = list(struct.unpack_from(f"<{n}I", rest))
            if len(rest) == 4 * n + 8:
                out["next_expected"] = struct.unpack_from("<Q", rest, 4 * n)[0]
            rest = b""
    elif kind == te.CLIENT_MESSAGE:
        template = out["template"]
        block = SESSION_BLOCKS.get(template)
        if block is not None and len(rest) == te.P_STRUCTS[template].size:
            out["message"] = _session_block(template, rest, by_id)
            rest = b""
    if rest:
        out["rest_hex"] = rest.hex()
    return out


# PROTOCOL.md's 1e-8 price mantissas and quantities in lots
P_PRICES = {"price_e8", "last_price_e8"}
P_QTYS = {"qty", "last_qty", "leaves", "cum_qty"}


# PROTOCOL.md's FIX enums (gateway/wire.py holds their characters) by field: their names
P_ENUMS: dict[str, dict[bytes, str]] = {
    "side": sdk.SIDE_NAMES,          # the SDK's names (gateway/client.py), one table each
    "ord_type": {gw.ORD_TYPE_MARKET: "market", gw.ORD_TYPE_LIMIT: "limit"},
    "tif": sdk.TIF_NAMES,
    "exec_type": sdk.EXEC_TYPES,
    "ord_status": {gw.ORD_STATUS_NEW: "new", gw.ORD_STATUS_PARTIALLY_FILLED: "partially_filled",
                   gw.ORD_STATUS_FILLED: "filled", gw.ORD_STATUS_CANCELED: "canceled",
                   gw.ORD_STATUS_REJECTED: "rejected", gw.ORD_STATUS_EXPIRED: "expired"},
    "response_to": {gw.CXL_REJ_RESPONSE_TO_CANCEL: "cancel",
                    gw.CXL_REJ_RESPONSE_TO_REPLACE: "amend"},
    "request_type": {gw.MASS_CANCEL_ONE_SECURITY: "one_security", gw.MASS_CANCEL_ALL: "all"},
    "response": {gw.MASS_CANCEL_RESPONSE_REJECTED: "rejected",
                 gw.MASS_CANCEL_ONE_SECURITY: "one_security", gw.MASS_CANCEL_ALL: "all"},
}
# ExecutionReport.Reason: FIX 103 OrdRejReason of a reject, the project's cancel reason of a
# cancel or an expiry (PROTOCOL.md §3)
P_REJECT_REASONS = {gw.ORD_REJ_EXCHANGE_OPTION: "exchange_option",
                    gw.ORD_REJ_UNKNOWN_SECURITY: "unknown_security",
                    gw.ORD_REJ_EXCHANGE_CLOSED: "exchange_closed",
                    gw.ORD_REJ_EXCEEDS_LIMIT: "exceeds_limit",
                    gw.ORD_REJ_UNKNOWN_ORDER: "unknown_order",
                    gw.ORD_REJ_DUPLICATE_ORDER: "duplicate_order",
                    gw.ORD_REJ_UNSUPPORTED: "unsupported",
                    gw.ORD_REJ_INCORRECT_QUANTITY: "incorrect_quantity",
                    gw.ORD_REJ_INVALID_PRICE_INCREMENT: "invalid_price_increment",
                    gw.ORD_REJ_OTHER: "other"}
P_CANCEL_REASONS = {gw.CANCEL_REASON_CLIENT: "client", gw.CANCEL_REASON_MASS_CANCEL: "mass_cancel",
                    gw.CANCEL_REASON_CANCEL_ON_DISCONNECT: "cancel_on_disconnect",
                    gw.CANCEL_REASON_IOC_FOK_REMAINDER: "ioc_fok_remainder",
                    gw.CANCEL_REASON_SELF_TRADE: "self_trade_prevention",
                    gw.CANCEL_REASON_ADMIN: "operator", gw.CANCEL_REASON_END_OF_DAY: "end_of_day"}
P_TIMES = {"transact_time", "sending_time"}
P_IDS = {"orig_client_order_id", "order_id", "client_order_id"}   # u64, null: not given
P_U32 = {"symbol", "security_id", "account"}                       # u32, null: not given


def utc_iso(ns: int) -> str:
    """A wall-clock time in ns as ISO 8601 UTC with microseconds."""
    import time
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + \
        f".{ns % 10**9 // 1000:06d}Z"


def _session_block(template: int, block: bytes, by_id: dict[int, Units]) -> dict[str, Any]:
    """A PROTOCOL.md root block as the TradingEngine keeps it, as a person reads it: enums by
    name, null sentinels as None (not shown), times in ISO 8601 UTC, the SecurityID as its
    symbol, prices in the quote currency (the wire's 1e-8 mantissa), quantities in the
    contract's units when the SecurityID is known."""
    msg, block_names = SESSION_BLOCKS[template]
    d = dict(zip(block_names.split(), te.P_STRUCTS[template].unpack(block), strict=True))
    units = by_id.get(d.get("security_id", d.get("symbol", -1)))
    out: dict[str, Any] = {"name": msg}
    for k, v in d.items():
        if isinstance(v, bytes):
            out[k] = v.rstrip(b"\0").decode("ascii", "replace")
        elif k in P_ENUMS:
            char = bytes([v]) if 0 <= v < 256 else b""
            out[k] = P_ENUMS[k].get(char, chr(v) if 32 < v < 127 else v)
        elif k in P_PRICES:
            out[k[:-3]] = None if v == te.P_NULL_PRICE else _fmt(Decimal(v) / te.P_PRICE_SCALE)
        elif k in P_QTYS and units is not None:
            out[k] = units.qty(v)
        elif k in P_TIMES:
            out[k] = utc_iso(v) if v > 0 else None
        elif k in P_IDS:
            out[k] = None if v == te.P_NULL_ID else v
        elif k in P_U32:
            out[k] = None if v == te.P_NULL_SECURITY else v
            if k != "account" and v in by_id:
                out[k] = by_id[v].name
        elif k == "liquidity":
            out[k] = LIQUIDITY.get(v, v)
        else:
            out[k] = v
    if msg == "ExecutionReport":
        exec_type = out.get("exec_type")
        table = P_REJECT_REASONS if exec_type == "rejected" else \
            P_CANCEL_REASONS if exec_type in ("canceled", "expired") else None
        if table is None:
            out.pop("reason", None)   # no meaning outside a reject, a cancel or an expiry
        else:
            out["reason"] = table.get(out["reason"], out["reason"])
    return out


def _engine_events(codec, table: dict, payload: bytes, by_id: dict[int, Units],
                   head_only: tuple[int, ...], more=None) -> list[dict[str, Any]]:
    """An engine's output payload event by event (the TradingEngine's and the LiqEngine's codecs
    share the layout): each event's fields shown, a CrossEngineCommand with its command
    decoded; head_only names the kinds whose variable tail is not a plain field (ev[4]), and
    more(ev, d) adds what a codec's own kinds show."""
    try:
        events = codec.decode_events(payload)
    except ValueError as exc:
        return [{"event": "malformed", "error": str(exc), "payload_hex": payload.hex()}]
    out = []
    for ev in events:
        names, shows = table[ev[0]]
        fields = ev[1:4] if ev[0] in head_only else ev[1:]
        d = {"event": codec.EVENT_NAMES[ev[0]], **_show(names, shows, fields, UNKNOWN, by_id)}
        if ev[0] == codec.CE_COMMAND:
            d["command"] = ce_command(ev[2], ev[4], by_id.get(ev[1], UNKNOWN))
            d["ce_kind"] = d["command"]["command"]
        if more is not None:
            more(ev, d)
        out.append(d)
    return out


def liq_events(payload: bytes, by_id: dict[int, Units]) -> list[dict[str, Any]]:
    """A LiqEngine output payload (out.liq, and out.liq taken into in.ce.* and in.te.*)."""
    return _engine_events(liq, LIQ_EVENTS, payload, by_id, (liq.CE_COMMAND,))


def liq_command(kind: int, payload: bytes, by_id: dict[int, Units]) -> dict[str, Any]:
    if kind == KIND_TICK:
        return {"command": "Tick"}
    s = liq.COMMAND_STRUCTS.get(kind)
    if s is None:
        return {"command": f"unknown({kind})", "payload_hex": payload.hex()}
    name = liq.COMMAND_NAMES[kind]
    if len(payload) != s.size:
        return {"command": name, "malformed": f"{len(payload)} bytes, the layout has {s.size}",
                "payload_hex": payload.hex()}
    names, shows = LIQ_COMMANDS[kind]
    return {"command": name, **_show(names, shows, s.unpack(payload), UNKNOWN, by_id)}


# -- upstream records: one engine's out stream taken into another's in stream ----------------

def upstream_of(source: int) -> tuple[str, int] | None:
    """("out.ce", symbol_id), ("out.te", shard) or ("out.liq", 0) for a source id that is
    another engine's out stream (deploy/topology.py SRC_*, docs/order-path.md §1-§2); None for
    a producer (a gateway, an oracle, the operator, a tool). Such a record's kind is the kind
    of the record upstream, and its payload that engine's output events."""
    base, n = source & 0xFF00_0000, source & 0x00FF_FFFF
    if base in (_topo.SRC_CE_OUT, _topo.SRC_CE_TO_LIQ):
        return "out.ce", n
    if base in (_topo.SRC_TE_OUT, _topo.SRC_TE_TO_LIQ):
        return "out.te", n
    if source == _topo.SRC_LIQ_OUT:
        return "out.liq", 0
    return None


def source_name(source: int, by_id: dict[int, Units]) -> str:
    """Who wrote a record, for a person: the out stream it was taken from, ``oracle0``,
    ``gateway0``, ``operator``/``operator+N`` (the operator's range, mq/sources.py), else the
    number (a client's own source id)."""
    from mq.sources import OPERATOR_SOURCE, OPERATOR_SOURCE_MIN, is_operator
    up = upstream_of(source)
    if up is not None:
        kind, n = up
        if kind == "out.ce":
            return f"out.ce.{by_id[n].name}" if n in by_id else f"out.ce.{n}"
        return f"out.te.{n}" if kind == "out.te" else "out.liq"
    base, n = source & 0xFF00_0000, source & 0x00FF_FFFF
    if base == _topo.SRC_ORACLE:
        return f"oracle{n}"
    if base == _topo.SRC_GATEWAY:
        return f"gateway{n}"
    if source == OPERATOR_SOURCE:
        return "operator"
    if is_operator(source):
        return f"operator+{source - OPERATOR_SOURCE_MIN:#x}"
    return str(source)


def route_names(stream: str, route: int, by_id: dict[int, Units],
                n_shards: int | None = None) -> list[str]:
    """The streams an engine's output record in ``stream`` (out.*) is routed to
    (docs/order-path.md §1-§2): out.ce.SYM sets bit N for in.te.N, out.te.N bit (symbol_id %
    64) for in.ce.SYM (every symbol of that bit), and either sets bit 63 for in.liq; out.liq
    sets bit N for in.te.N (N < the shard count, when known) and for in.ce.SYM of symbol_id % 64
    == N alike. In bit order, in.liq last; a bit no stream answers to is ``bitN``."""
    syms: dict[int, list[str]] = {}
    for u in sorted(by_id.values(), key=lambda u: u.symbol_id):
        syms.setdefault(_topo.symbol_route(u.symbol_id), []).append(u.name)
    names = []
    for b in range(63):
        if not route >> b & 1:
            continue
        shard = [f"in.te.{b}"] if n_shards is None or b < n_shards else []
        ce_streams = [f"in.ce.{n}" for n in syms.get(1 << b, [])]
        got = shard if stream.startswith("out.ce.") else ce_streams \
            if stream.startswith("out.te.") else shard + ce_streams
        names += got or [f"bit{b}"]
    if route & _topo.LIQ_ROUTE:
        names.append("in.liq")
    return names


def _upstream(up: tuple[str, int], payload: bytes, by_id: dict[int, Units]
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header fields and the events of a record taken from another engine's out stream."""
    kind, n = up
    if kind == "out.ce":
        units = by_id.get(n, Units(f"symbol {n}", n))
        return {"from": f"out.ce.{units.name}"}, ce_events(payload, units)
    if kind == "out.te":
        return {"from": f"out.te.{n}"}, te_events(payload, by_id)
    return {"from": "out.liq"}, liq_events(payload, by_id)


def _ce_commands_of(events: list[dict[str, Any]], units: Units) -> list[dict[str, Any]]:
    """The CrossEngine commands among an upstream record's events that in.ce.SYM applies:
    those for its symbol (all of them, each naming its symbol, when the symbol is unknown)."""
    out = []
    for e in events:
        cmd = e.get("command")
        if e.get("event") != "CrossEngineCommand" or not isinstance(cmd, dict):
            if e.get("event") == "malformed":
                out.append(e)
            continue
        if units is UNKNOWN:
            out.append({**cmd, "symbol": e.get("symbol")})
        elif e.get("symbol") == units.name:
            out.append(cmd)
    return out


def te_events(payload: bytes, by_id: dict[int, Units]) -> list[dict[str, Any]]:
    """A TradingEngine output payload (out.te.N, and out.te.N taken into in.ce.*)."""
    def session_message(ev: tuple, d: dict[str, Any]) -> None:
        if ev[0] == te.SESSION_MESSAGE:
            d["message"] = _session_block(ev[3], ev[4], by_id)
    return _engine_events(te, TE_EVENTS, payload, by_id, (te.CE_COMMAND, te.SESSION_MESSAGE),
                          session_message)


def decode_record(stream: str, rec: tuple, by_id: dict[int, Units],
                  stream_units: Units | None = None,
                  n_shards: int | None = None) -> dict[str, Any]:
    """One record (seq, ts_ns, source, source_seq, epoch, kind, payload[, route]) as a dict;
    its route only when it has one (an engine's output record routed downstream; in an out
    stream also the streams it goes to, ``routed_to``). stream_units: the symbol of a
    CrossEngine stream (in.ce.SYM / out.ce.SYM); n_shards: the TradingEngine shards, if known."""
    seq, ts, src, ss, epoch, kind, payload = rec[:7]
    d: dict[str, Any] = {"seq": seq, "ts_ns": ts, "source": src, "source_seq": ss,
                         "epoch": epoch, "kind": kind}
    if len(rec) > 7 and rec[7]:
        d["route"] = rec[7]
        if stream.startswith("out."):   # in an in stream: the route it was taken by
            d["routed_to"] = route_names(stream, rec[7], by_id, n_shards)
    name = source_name(src, by_id)
    if name != str(src):            # a client's own source id stays a number
        d["source_name"] = name
    units = stream_units or UNKNOWN
    # A record taken from another engine's out stream (an order from out.te.N into in.ce.SYM,
    # fills from out.ce.SYM into in.te.N, ...) is named by where it comes from: its kind is
    # the upstream record's, its payload that engine's events.
    up = upstream_of(src) if kind != KIND_TICK else None
    if stream.startswith("in.") and up is not None:
        head, events = _upstream(up, payload, by_id)
        d.update({"command": "Upstream", **head})
        if stream.startswith("in.ce."):
            events = _ce_commands_of(events, units)
        d["events"] = events
    elif stream.startswith("in.ce."):
        d.update(ce_command(kind, payload, units))
    elif stream.startswith("out.ce."):
        d.update(_out_command(kind, up, CE_COMMANDS.get(kind, (None,))[0], by_id))
        d["events"] = ce_events(payload, units)
    elif stream.startswith("in.te."):
        d.update(te_command(kind, payload, by_id))
    elif stream.startswith("out.te."):
        d.update(_out_command(kind, up, te.COMMAND_NAMES.get(kind), by_id))
        d["events"] = te_events(payload, by_id)
    elif stream == "in.liq":
        d.update(liq_command(kind, payload, by_id))
    elif stream == "out.liq":
        d.update(_out_command(kind, up, liq.COMMAND_NAMES.get(kind), by_id))
        d["events"] = liq_events(payload, by_id)
    else:
        d["payload_hex"] = payload.hex()
    return d


def _out_command(kind: int, up: tuple[str, int] | None, name: str | None,
                 by_id: dict[int, Units]) -> dict[str, Any]:
    """What an output record answers: its input's command, or the upstream stream its input
    came from (an output record keeps its input's source, kind and seq)."""
    if kind == KIND_TICK:
        return {"command": "Tick"}
    if up is not None:
        n = up[1]
        return {"command": "Upstream", "from": (f"out.ce.{by_id[n].name}" if up[0] == "out.ce"
                                                and n in by_id else
                                                f"{up[0]}.{n}" if up[0] != "out.liq"
                                                else "out.liq")}
    return {"command": name or f"unknown({kind})"}


def is_tick(rec: tuple) -> bool:
    return rec[5] == KIND_TICK


# -- filters ----------------------------------------------------------------------------------

def _walk(d: Any):
    if isinstance(d, dict):
        for k, v in d.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(d, list):
        for v in d:
            yield from _walk(v)


def known_names() -> set[str]:
    """Every command and event name the codecs give, lower case (what --kind accepts)."""
    names = {"tick", "malformed", "upstream"} | {n.lower() for n, *_ in CE_COMMANDS.values()}
    for table in (ce.EVENT_NAMES, te.COMMAND_NAMES, te.EVENT_NAMES, liq.COMMAND_NAMES,
                  liq.EVENT_NAMES):
        names |= {str(n).lower() for n in table.values()}
    return names


def matches(d: dict[str, Any], kind: str | None = None, account: int | None = None,
            order: int | None = None) -> bool:
    """--kind NAME (a command or event name, any case, or a kind number), --account N
    (any account field), --order N (any order id or client order id field)."""
    pairs = list(_walk(d))
    if kind is not None:
        want = kind.lower()
        names = {str(v).lower() for k, v in pairs if k in ("command", "event")}
        if want not in names and want != str(d.get("kind")):
            return False
    if account is not None and not any(k.endswith("account") and v == account
                                       for k, v in pairs):
        return False
    if order is not None and not any(k.endswith("order_id") and v == order for k, v in pairs):
        return False
    return True


def line(d: dict[str, Any]) -> str:
    """One record as one human line: seq, source, then the decoded fields."""
    src = d.get("source_name", d["source"])
    head = f"{d['seq']:>10} {src:>6}:{d['source_seq']:<8}"
    if d.get("routed_to"):
        head += " to=" + ",".join(d["routed_to"])
    # the record header's keys, shown above; an event's own fields of those names (a
    # TransferApplied's kind) are shown with the event
    header = {"seq", "ts_ns", "source", "source_seq", "epoch", "kind", "route", "routed_to",
              "source_name", "events"}

    def fields(x: dict, skip: set[str]) -> str:
        name = x.get("command") if "event" not in x else x["event"]
        command = x.get("command") if "event" in x else None
        if isinstance(command, dict):   # a CrossEngineCommand: its command, not its size
            skip = skip | {"ce_kind", "length"}
        rest = " ".join(_money(k, v) for k, v in x.items()
                        if k not in skip and k not in ("command", "event", "text")
                        and v not in (None, []))
        if isinstance(command, dict):
            rest += f" command={{{fields(command, set())}}}"
        return f"{name} {rest}".rstrip()

    parts = [fields(d, header)]
    parts += [fields(e, set()) for e in d.get("events", [])]
    if "events" in d and not d["events"] and d.get("command") != "Tick":
        # an output record that answers its input with nothing (a mark that moved no one):
        # the command's name alone read as if its fields were lost
        parts.append("no events")
    return f"{head} " + " | ".join(parts)


MINOR_PER_UNIT = Decimal(10) ** 8   # money: minor units (1e-8) per unit of the settlement currency


def _money(k: str, v: Any) -> str:
    """key=value for a person: money (an integer field named *_minor) in the settlement
    currency, without the suffix (balance_minor=10000000000000 reads balance=100000)."""
    if k.endswith("_minor") and type(v) is int:
        return f"{k[:-len('_minor')]}={_fmt(Decimal(v) / MINOR_PER_UNIT)}"
    if k.endswith("_x100") and type(v) is int:     # leverage in hundredths: 500 reads 5x
        return f"{k[:-len('_x100')]}={_fmt(Decimal(v) / 100)}x"
    return f"{k}={_short(v)}"


def _short(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v))
    if isinstance(v, dict):
        return "{" + line_fields(v) + "}"
    return str(v)


def line_fields(x: dict) -> str:
    return " ".join(_money(k, v) for k, v in x.items() if v not in (None, []))
