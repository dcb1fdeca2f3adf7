"""The client protocol's wire layouts (PROTOCOL.md §1-§3), in one module.

Every frame is a 12-byte prefix (`<HHHHHH`: frameLength, encodingType 0xEB50, blockLength,
templateId, schemaId 1, version) followed by a fixed root block and, for the market-data
Snapshot and Incremental only, one repeating group (`<HH` blockLength, numInGroup, then the
entries). Everything is little-endian and packed.

Contract:
* `TEMPLATES[id]` holds each template's precompiled block `struct.Struct`, its field names,
  the offset of its Flags byte (None when it has none) and its group entry struct; the block
  sizes are checked against PROTOCOL.md §2's table at import, so a typo cannot ship.
* `encode(template_id, *fields, entries=())` builds one whole frame; `frame_from_block` wraps
  a root block that is already packed (the TradingEngine's SessionMessage carries one).
* `read_frame(buf, pos)` finds the next whole frame in a receive buffer and validates its
  framing exactly as §1 says; a stream that breaks the rules raises `FramingError` (the caller
  answers Logout(2) and closes). `decode(frame)` unpacks the v1 fields of a known template,
  ignoring the trailing fields a newer sender appended; a block shorter than the v1 size is a
  protocol error (`FramingError`).
* Nothing here does I/O or keeps state; the gateway and the client SDK both import it.
"""
from __future__ import annotations

import struct
from collections import namedtuple
from decimal import Decimal, InvalidOperation

# ---------------------------------------------------------------- §1 framing

PREFIX = struct.Struct("<HHHHHH")  # frameLength, encodingType, blockLength, templateId, schemaId, version
PREFIX_SIZE = 12
ENCODING_TYPE = 0xEB50  # SOFH "SBE 1.0 little-endian"; on the wire 50 EB
SCHEMA_ID = 1
VERSION = 1  # the schema version this module speaks
MAX_FRAME = 0xFFFF
GROUP_HEADER = struct.Struct("<HH")  # entry blockLength, numInGroup

# Null values (§1 Types)
PRICE_NULL = -(1 << 63)  # INT64_MIN
U64_NULL = (1 << 64) - 1
U32_NULL = (1 << 32) - 1
PRICE_EXPONENT = -8
PRICE_SCALE = 10 ** 8
PRICE_MAX = (1 << 63) - 1

# Flags bits (§1)
FLAG_POSS_DUP = 0x01  # PossDupOrResend: client resend / server replay
FLAG_POST_ONLY = 0x02
FLAG_LAST_FRAGMENT = 0x04
FLAG_NEW_SESSION = 0x08

# ---------------------------------------------------------------- enums (FIX values, 1-byte chars)

SIDE_BUY = b"1"
SIDE_SELL = b"2"
SIDE_BOTH = b"0"  # mass cancel only
ORD_TYPE_MARKET = b"1"
ORD_TYPE_LIMIT = b"2"
TIF_DAY = b"0"
TIF_GTC = b"1"
TIF_IOC = b"3"
TIF_FOK = b"4"
EXEC_TYPE_NEW = b"0"
EXEC_TYPE_CANCELED = b"4"
EXEC_TYPE_REPLACED = b"5"
EXEC_TYPE_REJECTED = b"8"
EXEC_TYPE_EXPIRED = b"C"
EXEC_TYPE_TRADE = b"F"
EXEC_TYPE_STATUS = b"I"
ORD_STATUS_NEW = b"0"
ORD_STATUS_PARTIALLY_FILLED = b"1"
ORD_STATUS_FILLED = b"2"
ORD_STATUS_CANCELED = b"4"
ORD_STATUS_REJECTED = b"8"
ORD_STATUS_EXPIRED = b"C"
CXL_REJ_RESPONSE_TO_CANCEL = b"1"
CXL_REJ_RESPONSE_TO_REPLACE = b"2"
MASS_CANCEL_ONE_SECURITY = b"1"
MASS_CANCEL_ALL = b"7"
MASS_CANCEL_RESPONSE_REJECTED = b"0"
SUBSCRIPTION_SNAPSHOT = b"0"
SUBSCRIPTION_SNAPSHOT_UPDATES = b"1"
SUBSCRIPTION_UNSUBSCRIBE = b"2"
MD_ENTRY_BID = b"0"
MD_ENTRY_OFFER = b"1"
MD_UPDATE_NEW = b"0"
MD_UPDATE_CHANGE = b"1"
MD_UPDATE_DELETE = b"2"
LIQUIDITY_ADDED = 1
LIQUIDITY_REMOVED = 2
TRADING_STATUS_HALTED = 2
TRADING_STATUS_READY = 17
TRADING_STATUS_NOT_AVAILABLE = 18
COD_OFF = 0
COD_ON_DISCONNECT_OR_LOGOUT = 1
COD_ON_DISCONNECT_ONLY = 2

# ---------------------------------------------------------------- reason codes

# LogonReject.Reason
LOGON_REJECT_BAD_CREDENTIALS = 1
LOGON_REJECT_SESSION_BOUND = 2
LOGON_REJECT_SESSION_FINALIZED = 3
LOGON_REJECT_HEARTBEAT_RANGE = 4
LOGON_REJECT_SEQ_BEYOND = 5
LOGON_REJECT_NOT_OPEN = 6
LOGON_REJECT_UNSUPPORTED_VERSION = 7
# Logout.Reason
LOGOUT_NORMAL = 0
LOGOUT_HEARTBEAT_TIMEOUT = 1
LOGOUT_PROTOCOL_ERROR = 2
LOGOUT_RETRANSMIT_VIOLATION = 3
LOGOUT_THROTTLE_ABUSE = 4
LOGOUT_END_OF_SESSION = 5
LOGOUT_ADMIN = 6
LOGOUT_SLOW_CONSUMER = 7
# RetransmitReject.Reason
RETRANSMIT_REJECT_OUT_OF_RANGE = 0
RETRANSMIT_REJECT_OVER_LIMIT = 1
RETRANSMIT_REJECT_IN_PROGRESS = 2
# ExecutionReport.Reason when ExecType '8' (OrdRejReason, FIX 103)
ORD_REJ_EXCHANGE_OPTION = 0
ORD_REJ_UNKNOWN_SECURITY = 1
ORD_REJ_EXCHANGE_CLOSED = 2
ORD_REJ_EXCEEDS_LIMIT = 3
ORD_REJ_UNKNOWN_ORDER = 5
ORD_REJ_DUPLICATE_ORDER = 6
ORD_REJ_UNSUPPORTED = 11
ORD_REJ_INCORRECT_QUANTITY = 13
ORD_REJ_INVALID_PRICE_INCREMENT = 18
ORD_REJ_OTHER = 99
# ExecutionReport.Reason when ExecType '4' / 'C' (project codes)
CANCEL_REASON_CLIENT = 0
CANCEL_REASON_MASS_CANCEL = 1
CANCEL_REASON_CANCEL_ON_DISCONNECT = 2
CANCEL_REASON_IOC_FOK_REMAINDER = 3
CANCEL_REASON_SELF_TRADE = 4
CANCEL_REASON_ADMIN = 5
CANCEL_REASON_END_OF_DAY = 6
# OrderCancelReject.CxlRejReason (FIX 102)
CXL_REJ_TOO_LATE = 0
CXL_REJ_UNKNOWN_ORDER = 1
CXL_REJ_ALREADY_PENDING = 3
CXL_REJ_DUPLICATE_CLORDID = 6
CXL_REJ_OTHER = 99
# BusinessReject.BusinessRejectReason (FIX 380)
BUSINESS_REJECT_OTHER = 0
BUSINESS_REJECT_UNKNOWN_ID = 1
BUSINESS_REJECT_UNKNOWN_SECURITY = 2
BUSINESS_REJECT_UNSUPPORTED_MESSAGE = 3
BUSINESS_REJECT_NOT_AVAILABLE = 4
BUSINESS_REJECT_FIELD_MISSING = 5
BUSINESS_REJECT_NOT_AUTHORIZED = 6
BUSINESS_REJECT_THROTTLED = 8
# MarketDataRequestReject.Reason (FIX 281)
MD_REJECT_UNKNOWN_SYMBOL = 0
MD_REJECT_DUPLICATE_ID = 1
MD_REJECT_UNSUPPORTED_SUBSCRIPTION = 4
MD_REJECT_UNSUPPORTED_DEPTH = 5

# ---------------------------------------------------------------- §2 catalogue

LOGON = 1
LOGON_ACK = 2
LOGON_REJECT = 3
LOGOUT = 4
HEARTBEAT = 5
TEST_REQUEST = 6
RETRANSMIT_REQUEST = 7
RETRANSMISSION = 8
RETRANSMIT_REJECT = 9
NOT_APPLIED = 10
NEW_ORDER_SINGLE = 100
ORDER_CANCEL_REQUEST = 101
ORDER_CANCEL_REPLACE_REQUEST = 102
ORDER_MASS_CANCEL_REQUEST = 103
EXECUTION_REPORT = 200
ORDER_CANCEL_REJECT = 201
ORDER_MASS_CANCEL_REPORT = 202
BUSINESS_REJECT = 203
MARKET_DATA_REQUEST = 300
MARKET_DATA_REQUEST_REJECT = 301
SECURITY_DEFINITION = 302
MARKET_DATA_SNAPSHOT = 303
MARKET_DATA_INCREMENTAL = 304
TRADE = 305

CLIENT_REQUESTS = range(100, 200)  # forwarded to the TradingEngine as ClientMessage
SESSION_TEMPLATES = range(1, 100)
MARKET_DATA_TEMPLATES = range(300, 400)


class Template:
    """One message: its block struct, field names, Flags offset and group entry (if any)."""

    __slots__ = ("id", "name", "block", "size", "fields", "tuple", "flags_offset", "sequenced",
                 "entry", "entry_fields", "entry_tuple")

    def __init__(self, tid, name, fmt, size, fields, sequenced=False, entry=None,
                 entry_size=0, entry_fields=()):
        self.id = tid
        self.name = name
        self.block = struct.Struct(fmt)
        self.size = size
        self.fields = tuple(fields.split())
        self.tuple = namedtuple(name, self.fields)
        self.sequenced = sequenced
        if self.block.size != size or len(self.fields) != len(self.block.unpack(bytes(self.block.size))):
            raise ImportError(f"wire: template {tid} {name}: struct {fmt} is "
                              f"{self.block.size} bytes, PROTOCOL.md says {size}")
        self.flags_offset = _offset_of(fmt, self.fields, "Flags")
        self.entry = struct.Struct(entry) if entry else None
        self.entry_fields = tuple(entry_fields.split()) if entry else ()
        self.entry_tuple = namedtuple(name + "Entry", self.entry_fields) if entry else None
        if entry and self.entry.size != entry_size:
            raise ImportError(f"wire: template {tid} {name}: entry {entry} is "
                              f"{self.entry.size} bytes, PROTOCOL.md says {entry_size}")


def _offset_of(fmt: str, fields: tuple, name: str) -> int | None:
    """Byte offset of field `name` within a packed block, or None."""
    if name not in fields:
        return None
    codes = []
    i = 1
    while i < len(fmt):
        n = ""
        while fmt[i].isdigit():
            n += fmt[i]
            i += 1
        codes.append((int(n) if n else 1, fmt[i]))
        i += 1
    off = 0
    for (count, code), field in zip(codes, fields, strict=True):
        if field == name:
            return off
        off += struct.calcsize("<" + str(count) + code)
    return None


# (id, name, struct, PROTOCOL.md block size, fields, sequenced[, entry, entry size, entry fields])
_CATALOGUE = [
    (1, "Logon", "<QQQIHBB16s32s", 80,
     "SessionID NextExpectedSeqNo NextSeqNo HeartbeatIntervalMs CodTimeoutMs "
     "CancelOnDisconnect Flags Username Password", False),
    (2, "LogonAck", "<QQQIIHBBI", 40,
     "SessionID NextExpectedSeqNo NextSeqNo HeartbeatIntervalMs MaxMsgsPerSec CodTimeoutMs "
     "CancelOnDisconnect Flags TradingDate", False),
    (3, "LogonReject", "<QB32s", 41, "SessionID Reason Text", False),
    (4, "Logout", "<B32s", 33, "Reason Text", False),
    (5, "Heartbeat", "<QQQ", 24, "TestReqID NextSeqNo NextExpectedSeqNo", False),
    (6, "TestRequest", "<Q", 8, "TestReqID", False),
    (7, "RetransmitRequest", "<QI", 12, "FromSeqNo Count", False),
    (8, "Retransmission", "<QI", 12, "FromSeqNo Count", False),
    (9, "RetransmitReject", "<QIB", 13, "FromSeqNo Count Reason", False),
    (10, "NotApplied", "<QQI", 20, "SeqNo FromSeqNo Count", True),
    (100, "NewOrderSingle", "<QQQqQIIcccB", 52,
     "SeqNo SendingTime ClOrdID Price OrderQty SecurityID Account Side OrdType TimeInForce "
     "Flags", True),
    (101, "OrderCancelRequest", "<QQQQQIcB", 46,
     "SeqNo SendingTime ClOrdID OrigClOrdID OrderID SecurityID Side Flags", True),
    (102, "OrderCancelReplaceRequest", "<QQQQQqQIcccB", 64,
     "SeqNo SendingTime ClOrdID OrigClOrdID OrderID Price OrderQty SecurityID Side OrdType "
     "TimeInForce Flags", True),
    (103, "OrderMassCancelRequest", "<QQQIccB", 31,
     "SeqNo SendingTime ClOrdID SecurityID MassCancelRequestType Side Flags", True),
    (200, "ExecutionReport", "<QQQQQQqQqQQQIIcccccBBB", 112,
     "SeqNo TransactTime ClOrdID OrigClOrdID OrderID ExecID Price OrderQty LastPx LastQty "
     "LeavesQty CumQty SecurityID Account ExecType OrdStatus Side OrdType TimeInForce Reason "
     "LastLiquidityInd Flags", True),
    (201, "OrderCancelReject", "<QQQQQIccBB", 48,
     "SeqNo TransactTime ClOrdID OrigClOrdID OrderID SecurityID OrdStatus CxlRejResponseTo "
     "CxlRejReason Flags", True),
    (202, "OrderMassCancelReport", "<QQQIIccBB", 36,
     "SeqNo TransactTime ClOrdID TotalAffectedOrders SecurityID MassCancelRequestType "
     "MassCancelResponse MassCancelRejectReason Flags", True),
    (203, "BusinessReject", "<QQQQHBB32s", 68,
     "SeqNo TransactTime RefSeqNo BusinessRejectRefID RefTemplateID BusinessRejectReason Flags "
     "Text", True),
    (300, "MarketDataRequest", "<QIcBB", 15,
     "MDReqID SecurityID SubscriptionRequestType MarketDepth Streams", False),
    (301, "MarketDataRequestReject", "<QIB", 13, "MDReqID SecurityID Reason", False),
    (302, "SecurityDefinition", "<qQI16sB", 37,
     "TickSize LotSize SecurityID Symbol TradingStatus", False),
    (303, "MarketDataSnapshot", "<QQQIB", 29,
     "TransactTime LastRptSeq MDReqID SecurityID Flags", False,
     "<qQIc", 21, "Price Size NumOrders MDEntryType"),
    (304, "MarketDataIncremental", "<QQI", 20, "TransactTime RptSeq SecurityID", False,
     "<qQIcc", 22, "Price Size NumOrders MDEntryType MDUpdateAction"),
    (305, "Trade", "<QQQqQIc", 45,
     "TransactTime RptSeq TradeID Price Qty SecurityID AggressorSide", False),
]

TEMPLATES: dict[int, Template] = {}
for _row in _CATALOGUE:
    TEMPLATES[_row[0]] = Template(*_row)
del _row

# Flags byte offset within the root block, per template (for setting PossDup on replay).
FLAGS_OFFSET: dict[int, int] = {t.id: t.flags_offset for t in TEMPLATES.values()
                                if t.flags_offset is not None}
_EXPECTED_FLAGS = {1: 31, 2: 35, 100: 51, 101: 45, 102: 63, 103: 30, 200: 111, 201: 47,
                   202: 35, 203: 35, 303: 28}
if FLAGS_OFFSET != _EXPECTED_FLAGS:
    raise ImportError(f"wire: Flags offsets {FLAGS_OFFSET} differ from PROTOCOL.md §3")
del _EXPECTED_FLAGS

# ---------------------------------------------------------------- encoding


class FramingError(ValueError):
    """The byte stream breaks §1's framing rules: Logout(2) and close."""


def encode(template_id: int, *fields, entries=(), version: int = VERSION) -> bytes:
    """One whole frame of `template_id` with its fields in catalogue order (and group entries
    as tuples for 303/304)."""
    t = TEMPLATES[template_id]
    if t.entry is None:
        if entries:
            raise ValueError(f"{t.name} has no group")
        frame = bytearray(PREFIX_SIZE + t.size)
        PREFIX.pack_into(frame, 0, len(frame), ENCODING_TYPE, t.size, template_id, SCHEMA_ID,
                         version)
        t.block.pack_into(frame, PREFIX_SIZE, *fields)
        return bytes(frame)
    n = len(entries)
    esize = t.entry.size
    length = PREFIX_SIZE + t.size + GROUP_HEADER.size + n * esize
    if length > MAX_FRAME:
        raise ValueError(f"{t.name}: {n} entries do not fit one frame")
    frame = bytearray(length)
    PREFIX.pack_into(frame, 0, length, ENCODING_TYPE, t.size, template_id, SCHEMA_ID, version)
    t.block.pack_into(frame, PREFIX_SIZE, *fields)
    off = PREFIX_SIZE + t.size
    GROUP_HEADER.pack_into(frame, off, esize, n)
    off += GROUP_HEADER.size
    for e in entries:
        t.entry.pack_into(frame, off, *e)
        off += esize
    return bytes(frame)


def max_entries(template_id: int) -> int:
    """How many group entries one frame of `template_id` can hold."""
    t = TEMPLATES[template_id]
    return (MAX_FRAME - PREFIX_SIZE - t.size - GROUP_HEADER.size) // t.entry.size


def frame_from_block(template_id: int, block: bytes, flags: int = 0) -> bytes:
    """A whole frame around an already packed root block (exactly the template's v1 size),
    OR-ing `flags` into its Flags byte (PossDup on replay; ignored if it has none)."""
    t = TEMPLATES[template_id]
    if len(block) != t.size:
        raise ValueError(f"{t.name}: block of {len(block)} bytes, expected {t.size}")
    frame = bytearray(PREFIX_SIZE + t.size)
    PREFIX.pack_into(frame, 0, len(frame), ENCODING_TYPE, t.size, template_id, SCHEMA_ID,
                     VERSION)
    frame[PREFIX_SIZE:] = block
    if flags and t.flags_offset is not None:
        frame[PREFIX_SIZE + t.flags_offset] |= flags
    return bytes(frame)


def set_flags(frame: bytearray, flags: int) -> None:
    """OR `flags` into the Flags byte of a whole frame in place (no-op for templates without
    one, e.g. NotApplied)."""
    _len, _enc, _bl, tid, _sch, _ver = PREFIX.unpack_from(frame, 0)
    t = TEMPLATES.get(tid)
    if t is not None and t.flags_offset is not None:
        frame[PREFIX_SIZE + t.flags_offset] |= flags


# ---------------------------------------------------------------- decoding


class Frame:
    """One validated frame: the prefix fields and the whole frame's bytes."""

    __slots__ = ("template_id", "version", "block_length", "data")

    def __init__(self, template_id: int, version: int, block_length: int, data: bytes):
        self.template_id = template_id
        self.version = version
        self.block_length = block_length
        self.data = data

    @property
    def block(self) -> bytes:
        """The root block as received (all blockLength bytes)."""
        return self.data[PREFIX_SIZE:PREFIX_SIZE + self.block_length]

    def __repr__(self):
        return (f"Frame(template_id={self.template_id}, version={self.version}, "
                f"block_length={self.block_length}, {len(self.data)} bytes)")


def check_prefix(length: int, encoding: int, block_length: int, schema: int) -> None:
    """§1's framing rules for one prefix; raises FramingError naming the broken one."""
    if encoding != ENCODING_TYPE:
        raise FramingError(f"encodingType 0x{encoding:04X}")
    if length < PREFIX_SIZE:
        raise FramingError(f"frameLength {length} < 12")
    if schema != SCHEMA_ID:
        raise FramingError(f"schemaId {schema}")
    if block_length + PREFIX_SIZE > length:
        raise FramingError(f"blockLength {block_length} > {length} - 12")


def read_frame(buf, pos: int = 0) -> tuple[Frame | None, int]:
    """The next whole frame of `buf` at `pos`: (Frame, end offset), or (None, pos) when the
    buffer does not yet hold a whole frame. The prefix is validated as soon as its 12 bytes
    are there, so garbage is refused without waiting for a bogus frameLength to fill."""
    have = len(buf) - pos
    if have < 4:
        return None, pos
    length, encoding = struct.unpack_from("<HH", buf, pos)
    if encoding != ENCODING_TYPE:
        raise FramingError(f"encodingType 0x{encoding:04X}")
    if length < PREFIX_SIZE:
        raise FramingError(f"frameLength {length} < 12")
    if have < PREFIX_SIZE:
        return None, pos
    length, encoding, block_length, tid, schema, version = PREFIX.unpack_from(buf, pos)
    check_prefix(length, encoding, block_length, schema)
    if have < length:
        return None, pos
    end = pos + length
    return Frame(tid, version, block_length, bytes(buf[pos:end])), end


async def frames(reader, on_data=None):
    """The frames of an asyncio stream as they arrive, until it ends; ``on_data()`` runs at
    every read that brought bytes (a client's receive clock). FramingError as read_frame."""
    buf = bytearray()
    while True:
        data = await reader.read(65536)
        if not data:
            return
        if on_data is not None:
            on_data()
        buf += data
        pos = 0
        while True:
            frame, end = read_frame(buf, pos)
            if frame is None:
                break
            pos = end
            yield frame
        del buf[:pos]


def decode(frame: Frame):
    """The v1 fields of a known template as a namedtuple (trailing fields of newer versions
    ignored). Raises FramingError for an unknown template or a block shorter than v1."""
    t = TEMPLATES.get(frame.template_id)
    if t is None:
        raise FramingError(f"unknown template {frame.template_id}")
    if frame.block_length < t.size:
        raise FramingError(f"template {frame.template_id} block {frame.block_length} < "
                           f"{t.size}")
    return t.tuple._make(t.block.unpack_from(frame.data, PREFIX_SIZE))


def decode_entries(frame: Frame) -> list:
    """The group entries of a 303/304 frame (entry blockLength from the group header; longer
    entries from newer versions are read by their v1 fields). Raises FramingError when the
    group does not fit the frame."""
    t = TEMPLATES.get(frame.template_id)
    if t is None or t.entry is None:
        raise FramingError(f"template {frame.template_id} has no group")
    off = PREFIX_SIZE + frame.block_length
    data = frame.data
    if off + GROUP_HEADER.size > len(data):
        raise FramingError(f"{t.name}: group header beyond the frame")
    esize, n = GROUP_HEADER.unpack_from(data, off)
    off += GROUP_HEADER.size
    if esize < t.entry.size:
        raise FramingError(f"{t.name} entry {esize} < {t.entry.size}")
    if off + n * esize > len(data):
        raise FramingError(f"{t.name}: {n} entries of {esize} bytes beyond the frame")
    unpack = t.entry.unpack_from
    make = t.entry_tuple._make
    return [make(unpack(data, off + i * esize)) for i in range(n)]


def text(raw: bytes) -> str:
    """A char[N] field as a str (NUL padding removed; undecodable bytes replaced)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def char_field(s: str | bytes, n: int) -> bytes:
    """A str for a char[N] field: UTF-8, cut to N bytes (struct pads with NUL)."""
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return b[:n]


# ---------------------------------------------------------------- prices (§1: i64 × 1e-8)


def price_to_mantissa(price) -> int:
    """A Decimal (or int, or str) price as the wire's i64 mantissa with exponent -8; None →
    null. Raises ValueError if it has more than 8 decimals or does not fit an i64."""
    if price is None:
        return PRICE_NULL
    try:
        d = Decimal(price) if not isinstance(price, Decimal) else price
        scaled = d.scaleb(8)
    except (InvalidOperation, TypeError, ValueError) as e:
        raise ValueError(f"price {price!r} is not a number") from e
    if not scaled.is_finite() or scaled != scaled.to_integral_value():
        raise ValueError(f"price {price!r} has more than 8 decimals")
    m = int(scaled)
    if not PRICE_NULL < m <= PRICE_MAX:
        raise ValueError(f"price {price!r} does not fit the wire's i64 mantissa")
    return m


def mantissa_to_price(mantissa: int) -> Decimal | None:
    """The wire's i64 mantissa as an exact Decimal; null (INT64_MIN) → None."""
    if mantissa == PRICE_NULL:
        return None
    return Decimal(mantissa).scaleb(-8)
