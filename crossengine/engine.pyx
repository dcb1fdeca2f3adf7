# cython: language_level=3
"""The CrossEngine: one order book of one symbol, price-time priority, in C structs.

A pure state machine (DESIGN.md §4): ``apply`` / ``apply_frame`` take sequenced records and
return output records; no clock, no I/O, no randomness, integer arithmetic only. The same
records give the same output bytes and the same ``state_hash()`` in any process. Business
rejections are events with 3xxx codes; a broken invariant raises.

Semantics are those of crossengine/reference.py (the oracle; its docstring lists the rules),
byte for byte. Layouts are those of crossengine/codec.py.

Routes (docs/order-path.md §1): each output record's header carries, at offset 38, the bit
``account % n_shards`` of every account its events name (both sides of a trade), or every
shard's bit for a book-wide event (MassCancelled of the whole book, SymbolHalted,
SymbolResumed); ``in.te.N`` takes ``out.ce.SYM`` with the route mask ``1 << N``. Bit 63 is the
LiqEngine's (docs/liqengine.md §1): an event naming LIQ_ACCOUNT sets it instead of that
account's shard bit, and a book-wide event sets it too; so n_shards is at most 63.

TradingEngine inputs (§2): a record whose header source is one of ``te_sources`` is a
TradingEngine output payload (``out.te.N`` taken upstream). Its events are walked with sizes
mirrored from tradingengine/codec.py (a test compares the tables; the engines never import each
other) and each CrossEngineCommand event for this symbol is applied in order, as a command of
its embedded kind from that source; the output record holds the events of all of them.
Commands for other symbols are ignored. A payload this engine cannot walk (an unknown event
type or template, a truncated event) is a deployment mismatch, not a client's error: it
raises RuntimeError naming the record's seq and source, before any command of it is applied.
LiqEngine inputs (docs/liqengine.md §2): a record from one of ``liq_sources`` is a LiqEngine
output payload, walked with sizes mirrored from liqengine/codec.py (LIQ_EVENT_SIZES) and
applied the same way (its CrossEngineCommand events for this symbol, in order; the same error
on a payload it cannot walk). With te or liq sources, any other record but a Tick is obeyed
only from an operator source: from another it is refused (source_not_operator) and changes
nothing, since no risk check stands behind it.

Bounded output: a taker meets at most ``max_fills`` makers, and the takers of one
TradingEngine or LiqEngine record (many commands, one output record) at most ``max_fills``
together (``fill_cap``: a taker that finds none of them left expires, reason 6, as one that
used them up); an account rests at most ``max_account_orders`` orders, CancelAll and
MassCancel answer with one event, and the order counter stops at 2**40 - 1; so every output
fits one record (codec.worst_case_sizes).

Hot path: a whole frame of records is applied in one call; orders live in a preallocated pool
with a free list, price levels in a pool with FIFO links; each side finds a level by price in
its level map (one hash probe) and orders its levels by rungs, bitmaps of 512 ticks whose keys
a blocked sorted array holds (the best level is kept, the next best is a bit scan away,
whatever the width of the book; docs/crossengine.md, Inside); order ids and client ids are in
open-addressing hash tables. No Python object is created per record except the one bytes
object per frame that holds all outputs.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, _PyBytes_Resize
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memmove, memset
from posix.mman cimport madvise

cdef extern from *:
    """
    #include <sys/mman.h>
    #ifndef MADV_POPULATE_WRITE
    #define MADV_POPULATE_WRITE 23  /* Linux 5.14; older kernels answer EINVAL */
    #endif
    """
    int MADV_POPULATE_WRITE
    void prefetch_w "__builtin_prefetch"(const void* addr, int rw, int locality) noexcept nogil

cdef extern from *:
    # gcc's SLP vectorizer packs neighbouring stores of the hot path (an order's prev and
    # next, a slot's two values) through an xmm register: movd, movd, punpckldq, movq for two
    # stores. Off for this module, a resting order took ~11 instructions fewer, a cancel ~9.
    """
    #pragma GCC optimize ("no-tree-slp-vectorize")
    """
cdef extern from *:
    """
    #define CE_TICK_TOP ((int64_t)1 << 62)  /* asks: side tick = CE_TICK_TOP - price / tick */
    #define CE_KEY_NONE INT64_MIN            /* an empty side's best_key: below every key */
    """
    const int64_t CE_TICK_TOP
    const int64_t CE_KEY_NONE
    int clzll "__builtin_clzll"(unsigned long long x) noexcept nogil

cdef extern from *:
    """
    /* a % d for a 32-bit a and a fixed d >= 1, by two multiplies instead of a division
       (Lemire, Kaser, Kurz, "Faster remainder by direct computation", 2019): m is
       UINT64_MAX / d + 1 (0 for d = 1, whose remainder is 0) */
    static inline uint32_t ce_fastmod_u32(uint32_t a, uint64_t m, uint32_t d) {
        uint64_t low = m * a;
        return (uint32_t)(((__uint128_t)low * d) >> 64);
    }
    """
    uint32_t ce_fastmod_u32(uint32_t a, uint64_t m, uint32_t d) noexcept nogil

from crossengine.engine cimport (LB, RB, RC, RW, Buf, LBlock, Level, Order, RSlot, Rung, Side, Slot,
                                 Table, Touched, Tree)
from mq.bytesio cimport rd16, rd32, rd64, rdi64, wr16, wr32, wr64, wri64
from mq._frame cimport scan_frame

import hashlib
import operator
import struct

from crossengine import codec as _codec
from mq import sources as _sources
from mq._frame import FrameError

cdef enum:
    HDR = 46                 # mq record header (mq/_frame.pyx); the route at 38
    ROUTE = 38               # offset of the route in the header
    MAX_SHARDS = 63          # a route has 64 bits; bit 63 is the LiqEngine's
    MAX_TE_SOURCES = 64
    MAX_LIQ_SOURCES = 8
    LIQ_CE_COMMAND = 1       # liqengine/codec.py CrossEngineCommand: <BIHH symbol, kind, length
    TE_CE_COMMAND = 1        # tradingengine/codec.py CE_COMMAND: <BIHH symbol, kind, length
    TE_SESSION_MESSAGE = 14  # <BIQH user, session_id, templateId; then the template's block
    BUY = 49
    SELL = 50
    MARKET = 49
    LIMIT = 50
    GTC = 49
    IOC = 51
    FOK = 52
    F_REDUCE = 1
    F_POST = 2
    STP_NONE = 0
    STP_NEWEST = 1
    STP_OLDEST = 2
    STP_BOTH = 3
    STP_DEC = 4
    K_TICK = 1
    K_NEW = 32
    K_CANCEL = 33
    K_AMEND = 34
    K_CANCEL_ALL = 35
    K_MASS = 36
    K_HALT = 37
    K_RESUME = 38
    EV_ACCEPTED = 1
    EV_REJECTED = 2
    EV_TRADE = 3
    EV_CANCELLED = 4
    EV_AMENDED = 5
    EV_EXPIRED = 6
    EV_LEVEL = 7
    EV_HALTED = 8
    EV_RESUMED = 9
    EV_MASS = 10
    SCOPE_ACCOUNT = 1
    SCOPE_BOOK = 2
    R_CLIENT = 0
    R_MASS = 1
    R_IOC = 3
    R_STP = 4
    R_ADMIN = 5
    R_MATCH_LIMIT = 6
    C_NOT_ON_TICK = 3001
    C_PRICE_RANGE = 3002
    C_QTY_MIN = 3003
    C_QTY_MAX = 3004
    C_UNKNOWN = 3005
    C_POST_TAKES = 3006
    C_FOK = 3007
    C_HALTED = 3008
    C_CLID_IN_USE = 3009
    C_SIDE = 3010
    C_ORD_TYPE = 3011
    C_TIF = 3012
    C_STP = 3013
    C_AMEND_FILLED = 3014
    C_MALFORMED = 3015
    C_BOOK_FULL = 3016
    C_AMEND_NOTHING = 3017
    C_ACCOUNT_LIMIT = 3018
    C_IDS_EXHAUSTED = 3019
    C_NOT_OPERATOR = 3020
    SNAP_ORDER = 47
    # Output room every _dispatch starts with (its callers reserve it): a resting order's
    # OrderAccepted and LevelChanged (63 bytes), a cancel's OrderCancelled and LevelChanged (52)
    # are written without a reserve of their own
    DISPATCH_ROOM = 64
    PREFETCH_AHEAD = 16      # restore: orders ahead whose id-table slots are prefetched

# The compiled constants must be the codec's: a drift would be a silent protocol break.
_mine = {"BUY": BUY, "SELL": SELL, "MARKET": MARKET, "LIMIT": LIMIT, "GTC": GTC, "IOC": IOC,
         "FOK": FOK, "NEW_ORDER": K_NEW, "CANCEL": K_CANCEL, "AMEND": K_AMEND,
         "CANCEL_ALL": K_CANCEL_ALL, "MASS_CANCEL": K_MASS, "HALT": K_HALT, "RESUME": K_RESUME,
         "EV_ACCEPTED": EV_ACCEPTED, "EV_REJECTED": EV_REJECTED, "EV_TRADE": EV_TRADE,
         "EV_CANCELLED": EV_CANCELLED, "EV_AMENDED": EV_AMENDED, "EV_EXPIRED": EV_EXPIRED,
         "EV_LEVEL": EV_LEVEL, "EV_HALTED": EV_HALTED, "EV_RESUMED": EV_RESUMED,
         "EV_MASS_CANCELLED": EV_MASS, "SCOPE_ACCOUNT": SCOPE_ACCOUNT, "SCOPE_BOOK": SCOPE_BOOK,
         "REASON_CLIENT": R_CLIENT, "REASON_MASS_CANCEL": R_MASS, "REASON_IOC_REMAINDER": R_IOC,
         "REASON_SELF_TRADE": R_STP, "REASON_ADMIN": R_ADMIN,
         "REASON_MATCH_LIMIT": R_MATCH_LIMIT}
for _name, _value in _mine.items():
    if getattr(_codec, _name) != _value:
        raise ImportError(f"crossengine.engine: {_name} differs from crossengine.codec")
_my_codes = {C_NOT_ON_TICK: "price_not_on_tick", C_PRICE_RANGE: "price_out_of_range",
             C_QTY_MIN: "qty_below_min", C_QTY_MAX: "qty_above_max", C_UNKNOWN: "order_unknown",
             C_POST_TAKES: "post_only_would_take", C_FOK: "fok_not_fillable",
             C_HALTED: "symbol_halted", C_CLID_IN_USE: "client_order_id_in_use",
             C_SIDE: "side_invalid", C_ORD_TYPE: "order_type_invalid",
             C_TIF: "time_in_force_invalid", C_STP: "stp_mode_invalid",
             C_AMEND_FILLED: "amend_qty_not_above_filled", C_MALFORMED: "command_malformed",
             C_BOOK_FULL: "book_full", C_AMEND_NOTHING: "amend_nothing_to_change",
             C_ACCOUNT_LIMIT: "account_order_limit", C_IDS_EXHAUSTED: "order_ids_exhausted",
             C_NOT_OPERATOR: "source_not_operator"}
if _my_codes != _codec.REJECT_CODES:
    raise ImportError("crossengine.engine: reject codes differ from crossengine.codec")
# a layout whose size differs from the codec's would shift every event after it
_my_sizes = {EV_ACCEPTED: 41, EV_REJECTED: 23, EV_TRADE: 68, EV_CANCELLED: 30, EV_AMENDED: 46,
             EV_EXPIRED: 30, EV_LEVEL: 22, EV_HALTED: 1, EV_RESUMED: 1, EV_MASS: 24}
if sizeof(Side) != 256 or sizeof(Level) != 64:
    raise ImportError("crossengine.engine: Side or Level is not 256 or 64 bytes (engine.pxd "
                      "pads them)")
if _my_sizes != _codec.EVENT_SIZES:
    raise ImportError("crossengine.engine: event sizes differ from crossengine.codec")
cdef uint8_t ev_size[256]            # this engine's event sizes by type (walked for routes)
memset(ev_size, 0, sizeof(ev_size))
for _name, _value in _my_sizes.items():
    ev_size[_name] = _value
cdef Py_ssize_t MAX_PAYLOAD = _codec.MAX_PAYLOAD

# The TradingEngine's output events as this engine walks them (te_sources): fixed size of each
# type, and of the PROTOCOL.md root block a SessionMessage carries per templateId. Mirrored
# from tradingengine/codec.py (EVENT_STRUCTS) and docs/order-path.md §3; a unit test compares.
TE_EVENT_SIZES = {1: 9, 2: 88, 3: 21, 4: 37, 5: 62, 6: 30, 7: 21, 8: 41, 9: 41, 10: 13,
                  11: 24, 12: 13, 13: 38, 14: 15, 15: 41}
TE_SESSION_BLOCK_SIZES = {10: 20, 200: 112, 201: 48, 202: 36, 203: 68}
cdef uint16_t te_event_size[256]     # by event type; 0: a type this engine does not know
cdef uint16_t te_session_block[256]  # by templateId; 0: unknown (every template is < 256)
memset(te_event_size, 0, sizeof(te_event_size))
memset(te_session_block, 0, sizeof(te_session_block))
for _name, _value in TE_EVENT_SIZES.items():
    te_event_size[_name] = _value
for _name, _value in TE_SESSION_BLOCK_SIZES.items():
    te_session_block[_name] = _value
if te_event_size[TE_CE_COMMAND] != 9 or te_event_size[TE_SESSION_MESSAGE] != 15:
    raise ImportError("crossengine.engine: the TradingEngine event table lost its own layouts")

# The LiqEngine's output events as this engine walks them (liq_sources): the fixed size of each
# type (a CrossEngineCommand, 1, is followed by its u16 length of command bytes). Mirrored from
# liqengine/codec.py (docs/liqengine.md §4).
LIQ_EVENT_SIZES = {1: 9, 2: 33, 3: 37, 4: 18, 5: 10, 6: 13, 7: 29}
cdef uint16_t liq_event_size[256]
memset(liq_event_size, 0, sizeof(liq_event_size))
for _name, _value in LIQ_EVENT_SIZES.items():
    liq_event_size[_name] = _value
cdef uint32_t LIQ_ACCOUNT = _codec.LIQ_ACCOUNT
cdef uint64_t ROUTE_LIQ = <uint64_t>1 << 63

SNAP_HEADER = _codec.SNAP_HEADER_V3
SNAP_HEADER_V4 = _codec.SNAP_HEADER_V4
MAGIC = b"SQCE"
VERSION = 3        # without liq_sources: the bytes as before them
VERSION_LIQ = 4    # with liq_sources (they follow the te_sources)
cdef uint64_t COUNTER_MAX = _codec.ORDER_COUNTER_MAX
# MassCancel, Halt and Resume are the operator's: obeyed only from an operator source id (in
# the record's header, so every replica decides alike; the sequencer lets only the operator's
# key use these ids, mq/auth.py)
cdef uint32_t OPERATOR_SOURCE_MIN = _sources.OPERATOR_SOURCE_MIN


# -- little helpers ---------------------------------------------------------------------------
cdef inline void fifo_unlink(Order* orders, Order* o, Level* L) noexcept nogil:
    """Take order o out of its level's FIFO and the level's totals (the level stays)."""
    if o.prev >= 0:
        orders[o.prev].next = o.next
    else:
        L.head = o.next
    if o.next >= 0:
        orders[o.next].prev = o.prev
    else:
        L.tail = o.prev
    L.total -= o.leaves
    L.count -= 1


@cython.overflowcheck(False)   # the difference wraps for the bytes below BUY by design
cdef inline bint gtc_limit_shape(uint32_t shape) noexcept nogil:
    """Whether bytes 28..31 of a NewOrder (side, order type, time in force, flags), read as one
    little-endian word, are a GTC limit order of either side with flags of at most F_REDUCE |
    F_POST: the flags byte's high six bits clear, and the other three bytes BUY or SELL (one
    apart), LIMIT, GTC: one subtraction and one compare."""
    return <uint32_t>((shape & ~(<uint32_t>(F_REDUCE | F_POST) << 24))
                      - <uint32_t>(BUY | LIMIT << 8 | GTC << 16)) <= 1


cdef inline int side_index(uint8_t side) noexcept nogil:
    return 0 if side == BUY else 1

cdef inline int64_t side_key(int s, int64_t price) noexcept nogil:
    # Sorted ascending by key, best last: bids by price, asks by -price.
    return price if s == 0 else -price


# -- hash table: open addressing, linear probing, backward-shift deletion ----------------------
@cython.overflowcheck(False)
cdef inline uint64_t slot_hash(Table* t, uint64_t k1, uint64_t k2) noexcept nogil:
    # Multiplicative (Fibonacci) hashing: the top bits of the product, which every bit of both
    # key parts reaches; two multiplies. Order ids used to be their own hash (symbol << 40 | a
    # counter: consecutive slots), but live ids are dense, so a deletion's backward shift
    # walked the whole run of them; spread, a run is about one slot at this load factor.
    # The multiplier is the process's secret (seed_hashes): client order ids are the client's
    # choice, and with a known multiplier the ids (j * mul**-1) ^ (account * C2) all share one
    # slot, a probe run that every insert and cancel walks. Unsigned arithmetic wraps by design.
    return ((k1 ^ (k2 * <uint64_t>0xC2B2AE3D27D4EB4F)) * t.mul) >> t.shift


# The multiplier of the tables made from now on. The replica host seeds it from os.urandom
# (deploy/engines.py) before it makes an engine; nothing an engine outputs depends on it (the
# snapshot and every walk follow the book, never a table's slots), so replicas seeded apart
# stay equal.
cdef uint64_t table_mul = 0x9E3779B97F4A7C15


@cython.overflowcheck(False)
def seed_hashes(seed=None, multiplier=None):
    """Set the multiplier of the id tables of engines made (or restored) after this call: from
    ``seed`` (splitmix64, made odd), or the source's default with None. A host seeds it from a
    secret, so that no client can choose client order ids that share a slot. ``multiplier``
    sets it as given (odd; tests use a poor one to make every key share a probe run)."""
    global table_mul
    if multiplier is not None:
        if not 0 < multiplier < 1 << 64 or multiplier % 2 == 0:
            raise ValueError("multiplier must be odd and below 2**64")
        table_mul = multiplier
        return
    if seed is None:
        table_mul = 0x9E3779B97F4A7C15
        return
    cdef uint64_t z = <uint64_t>(seed & 0xFFFFFFFFFFFFFFFF) + <uint64_t>0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    table_mul = (z ^ (z >> 31)) | 1


# The id ring's size (log2) of the engines made (or restored) after set_id_ring.
cdef int id_ring_bits = 15


def set_id_ring(bits=None):
    """Set the size of the id ring (2**bits slots) of engines made or restored after this
    call; None: the default, 2**15. Tests use a ring of one slot, so that nearly every resting
    order moves on to the id map and both paths are exercised. Nothing an engine outputs
    depends on it."""
    global id_ring_bits
    if bits is None:
        id_ring_bits = 15
        return
    if not 0 <= bits <= 24:
        raise ValueError("bits must be in 0 .. 24")
    id_ring_bits = bits


cdef int table_init(Table* t, uint64_t cap) except -1:
    t.slots = <Slot*>calloc(cap, sizeof(Slot))
    if t.slots == NULL:
        raise MemoryError()
    t.mul = table_mul
    t.mask = cap - 1
    t.limit = cap >> 1
    t.shift = 64
    while cap > 1:
        cap >>= 1
        t.shift -= 1
    t.room = <int64_t>t.limit
    return 0

cdef inline uint64_t table_size(Table* t) noexcept nogil:
    """The keys the table holds."""
    return <uint64_t>(<int64_t>t.limit - t.room)

cdef inline int64_t table_find(Table* t, uint64_t k1, uint64_t k2) noexcept nogil:
    cdef uint64_t i = slot_hash(t, k1, k2)
    while t.slots[i].used:
        if t.slots[i].k1 == k1 and t.slots[i].k2 == k2:
            return <int64_t>i
        i = (i + 1) & t.mask
    return -1

cdef int table_grow(Table* t) except -1:
    cdef Slot* old = t.slots
    cdef uint64_t old_cap = t.mask + 1, i, j, n = table_size(t)
    t.slots = <Slot*>calloc(old_cap * 2, sizeof(Slot))
    if t.slots == NULL:
        t.slots = old
        raise MemoryError()
    t.mask = old_cap * 2 - 1
    t.limit = old_cap
    t.room = <int64_t>(old_cap - n)
    t.shift -= 1
    for i in range(old_cap):
        if old[i].used:
            j = slot_hash(t, old[i].k1, old[i].k2)
            while t.slots[j].used:
                j = (j + 1) & t.mask
            t.slots[j] = old[i]
    free(old)
    return 0

cdef inline int table_del(Table* t, uint64_t k1, uint64_t k2) except -1:
    cdef int64_t found = table_find(t, k1, k2)
    if found < 0:
        raise RuntimeError(f"crossengine: index lost key ({k1}, {k2})")
    table_del_at(t, <uint64_t>found)
    return 0

# One-part keys (the id map: order id; the account map: account) have k2 = 0, where slot_hash
# is k1 * mul >> shift: the same slot, without the second key part's multiply and compare.
@cython.overflowcheck(False)
cdef inline uint64_t key_hash(Table* t, uint64_t k1) noexcept nogil:
    return (k1 * t.mul) >> t.shift

cdef inline int64_t table_find1(Table* t, uint64_t k1) noexcept nogil:
    """table_find(t, k1, 0) for a table whose keys all have k2 = 0."""
    cdef uint64_t i = key_hash(t, k1)
    while t.slots[i].used:
        if t.slots[i].k1 == k1:
            return <int64_t>i
        i = (i + 1) & t.mask
    return -1

cdef inline uint64_t table_probe(Table* t, uint64_t k1, uint64_t k2) noexcept nogil:
    """The slot that holds (k1, k2), or else the empty slot its probe stops at: the one
    table_add would fill. One walk both answers "in use?" and places the insert that follows,
    as long as the table does not change in between (table_room first)."""
    cdef uint64_t i = slot_hash(t, k1, k2)
    while t.slots[i].used and not (t.slots[i].k1 == k1 and t.slots[i].k2 == k2):
        i = (i + 1) & t.mask
    return i

cdef inline int table_room(Table* t) except -1:
    """Grow now if one more key would pass the load factor (table_add's test)."""
    if t.room <= 0:
        table_grow(t)
    return 0

cdef inline void table_put_at(Table* t, uint64_t i, uint64_t k1, uint64_t k2, int32_t v1,
                              int32_t v2) noexcept nogil:
    """Fill slot i, empty, where table_probe stopped for (k1, k2), after table_room."""
    t.slots[i].k1 = k1
    t.slots[i].k2 = k2
    t.slots[i].v1 = v1
    t.slots[i].v2 = v2
    t.slots[i].n = 0
    t.slots[i].used = 1
    t.room -= 1

cdef inline int table_add(Table* t, uint64_t k1, uint64_t k2, int32_t v1, int32_t v2) except -1:
    """Insert a key the caller knows is absent (no lookup first)."""
    cdef uint64_t i
    table_room(t)
    i = slot_hash(t, k1, k2)
    while t.slots[i].used:
        i = (i + 1) & t.mask
    table_put_at(t, i, k1, k2, v1, v2)
    return 0

cdef inline int64_t table_put_new(Table* t, uint64_t k1, uint64_t k2, int32_t v1,
                                  int32_t v2) except -2:
    """Insert (k1, k2) unless it is present: the slot it now has, or -1 if it was there. The
    probe that finds a free slot passes every slot that could hold the key (linear probing
    with backward-shift deletion leaves no holes in a run), so the check costs nothing more."""
    cdef uint64_t i
    table_room(t)
    i = table_probe(t, k1, k2)
    if t.slots[i].used:
        return -1
    table_put_at(t, i, k1, k2, v1, v2)
    return <int64_t>i


cdef inline void table_del_at(Table* t, uint64_t i) noexcept nogil:
    """Empty slot i (used) by backward shift: a later slot of the run moves into the hole
    unless its home lies cyclically in (hole, it]."""
    table_shift_out(t, i, NULL)

cdef inline void table_shift_out(Table* t, uint64_t i, Order* back) noexcept nogil:
    """table_del_at; with back (the id map: one-part keys, v1 an order index), each slot that
    moves updates its order's id_slot."""
    cdef uint64_t j, home
    j = i
    while True:
        j = (j + 1) & t.mask
        if not t.slots[j].used:
            break
        home = key_hash(t, t.slots[j].k1) if back != NULL else \
            slot_hash(t, t.slots[j].k1, t.slots[j].k2)
        # Leave slot j where it is if its home lies cyclically in (i, j].
        if (i <= j and i < home and home <= j) or (i > j and (i < home or home <= j)):
            continue
        t.slots[i] = t.slots[j]
        if back != NULL:
            back[t.slots[i].v1].id_slot = <int32_t>i
        i = j
    t.slots[i].used = 0
    t.room += 1


# -- ordered keys: a two-level blocked array (blocks of up to LB keys, largest last) -----------
cdef int tree_init(Tree* tr) except -1:
    tr.cap = 16
    tr.blocks = <LBlock**>malloc(tr.cap * sizeof(LBlock*))
    tr.firsts = <int64_t*>malloc(tr.cap * sizeof(int64_t))
    if tr.blocks == NULL or tr.firsts == NULL:
        raise MemoryError()
    tr.nb = 0
    tr.n = 0
    return 0

cdef void tree_free(Tree* tr) noexcept:
    cdef int32_t b
    if tr.blocks != NULL:
        for b in range(tr.nb):
            free(tr.blocks[b])
    free(tr.blocks)
    free(tr.firsts)
    tr.blocks = NULL
    tr.firsts = NULL
    tr.nb = 0
    tr.n = 0

cdef inline int32_t tree_last(Tree* tr) noexcept nogil:
    """The value of the largest key, or -1."""
    cdef LBlock* b
    if tr.n == 0:
        return -1
    b = tr.blocks[tr.nb - 1]
    return b.lv[b.n - 1]

cdef inline int32_t tree_block(Tree* tr, int64_t key) noexcept nogil:
    """The block that holds key or would: the last whose first key is <= key (else 0)."""
    cdef int32_t lo = 0, hi = tr.nb - 1, mid
    cdef int64_t* f = tr.firsts
    if f[hi] <= key:                 # near the touch: the last block
        return hi
    while lo < hi:                   # invariant: f[lo] <= key or lo == 0; f[hi] > key
        mid = (lo + hi) >> 1
        if f[mid] <= key:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1 if lo > 0 else 0

cdef inline int32_t block_pos(LBlock* b, int64_t key) noexcept nogil:
    """Index of the first key >= key in block b."""
    cdef int32_t lo = 0, hi = b.n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if b.keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo

cdef int tree_open_block(Tree* tr, int32_t at) except -1:
    """A new empty block at position at (firsts[at] is left for the caller)."""
    cdef LBlock** gb
    cdef int64_t* gf
    cdef LBlock* blk
    if tr.nb == tr.cap:
        gb = <LBlock**>realloc(tr.blocks, tr.cap * 2 * sizeof(LBlock*))
        if gb == NULL:
            raise MemoryError()
        tr.blocks = gb
        gf = <int64_t*>realloc(tr.firsts, tr.cap * 2 * sizeof(int64_t))
        if gf == NULL:
            raise MemoryError()
        tr.firsts = gf
        tr.cap *= 2
    blk = <LBlock*>malloc(sizeof(LBlock))
    if blk == NULL:
        raise MemoryError()
    blk.n = 0
    if at < tr.nb:
        memmove(&tr.blocks[at + 1], &tr.blocks[at], (tr.nb - at) * sizeof(LBlock*))
        memmove(&tr.firsts[at + 1], &tr.firsts[at], (tr.nb - at) * sizeof(int64_t))
    tr.blocks[at] = blk
    tr.nb += 1
    return 0

cdef void tree_close_block(Tree* tr, int32_t at) noexcept:
    free(tr.blocks[at])
    if at < tr.nb - 1:
        memmove(&tr.blocks[at], &tr.blocks[at + 1], (tr.nb - at - 1) * sizeof(LBlock*))
        memmove(&tr.firsts[at], &tr.firsts[at + 1], (tr.nb - at - 1) * sizeof(int64_t))
    tr.nb -= 1

cdef int tree_insert(Tree* tr, int64_t key, int32_t v) except -1:
    """Enter key (absent) with value v."""
    cdef int32_t bi, pos, half
    cdef LBlock* b
    cdef LBlock* nb
    if tr.nb == 0:
        tree_open_block(tr, 0)
        bi = 0
    else:
        bi = tree_block(tr, key)
    b = tr.blocks[bi]
    if b.n == LB:
        # split: the upper half moves to a new block after it (an append at the very end
        # keeps the block full and opens an empty one, as a bulk load does)
        tree_open_block(tr, bi + 1)
        nb = tr.blocks[bi + 1]
        half = LB if (bi == tr.nb - 2 and key > b.keys[LB - 1]) else LB // 2
        nb.n = LB - half
        memcpy(nb.keys, &b.keys[half], nb.n * sizeof(int64_t))
        memcpy(nb.lv, &b.lv[half], nb.n * sizeof(int32_t))
        b.n = half
        if nb.n:
            tr.firsts[bi + 1] = nb.keys[0]
        if nb.n == 0 or key >= nb.keys[0]:
            bi += 1
            b = nb
    pos = block_pos(b, key)
    if pos < b.n:
        memmove(&b.keys[pos + 1], &b.keys[pos], (b.n - pos) * sizeof(int64_t))
        memmove(&b.lv[pos + 1], &b.lv[pos], (b.n - pos) * sizeof(int32_t))
    b.keys[pos] = key
    b.lv[pos] = v
    b.n += 1
    if pos == 0:
        tr.firsts[bi] = key
    tr.n += 1
    return 0

cdef void tree_remove(Tree* tr, int64_t key) noexcept:
    """Take key (present) out; merge a block into a neighbour when both fit in half a block,
    so that blocks stay at least a quarter full on average."""
    cdef int32_t bi, pos, other
    cdef LBlock* b
    cdef LBlock* nb
    bi = tr.nb - 1
    b = tr.blocks[bi]
    if b.keys[b.n - 1] == key:
        pos = b.n - 1
    else:
        bi = tree_block(tr, key)
        b = tr.blocks[bi]
        pos = block_pos(b, key)
        memmove(&b.keys[pos], &b.keys[pos + 1], (b.n - pos - 1) * sizeof(int64_t))
        memmove(&b.lv[pos], &b.lv[pos + 1], (b.n - pos - 1) * sizeof(int32_t))
    b.n -= 1
    tr.n -= 1
    if b.n == 0:
        tree_close_block(tr, bi)
        return
    if pos == 0:
        tr.firsts[bi] = b.keys[0]
    if b.n < LB // 4:
        other = bi + 1 if bi + 1 < tr.nb else bi - 1
        if other >= 0 and b.n + tr.blocks[other].n <= LB // 2:
            if other < bi:
                bi, other = other, bi
            b = tr.blocks[bi]
            nb = tr.blocks[other]
            memcpy(&b.keys[b.n], nb.keys, nb.n * sizeof(int64_t))
            memcpy(&b.lv[b.n], nb.lv, nb.n * sizeof(int32_t))
            b.n += nb.n
            tree_close_block(tr, other)


# -- a side's levels: a level map by price, rungs of occupied ticks ordered by a tree ----------
cdef int side_init(Side* sd) except -1:
    cdef int32_t r
    tree_init(&sd.tree)
    sd.rungs_cap = 8
    sd.rungs = <Rung*>malloc(sd.rungs_cap * sizeof(Rung))
    sd.map_mask = 15
    sd.map = <RSlot*>malloc((sd.map_mask + 1) * sizeof(RSlot))
    sd.lmap_mask = 63
    sd.lmap = <int32_t*>malloc((sd.lmap_mask + 1) * sizeof(int32_t))
    if sd.rungs == NULL or sd.map == NULL or sd.lmap == NULL:
        raise MemoryError()
    for r in range(sd.rungs_cap):
        sd.rungs[r].key = r + 1 if r + 1 < sd.rungs_cap else -1
    sd.free_rung = 0
    memset(sd.map, 0xFF, (sd.map_mask + 1) * sizeof(RSlot))        # every key -1: empty
    memset(sd.lmap, 0xFF, (sd.lmap_mask + 1) * sizeof(int32_t))    # every level -1: empty
    sd.map_shift = 60
    sd.lmap_shift = 58
    sd.mul = table_mul
    for r in range(RC):
        sd.rc_key[r] = -1
        sd.rc_rung[r] = -1
    sd.n = 0
    sd.best = -1
    sd.best_key = CE_KEY_NONE
    sd.grow_reads = 0
    return 0

cdef void side_free(Side* sd) noexcept:
    tree_free(&sd.tree)
    free(sd.rungs)
    free(sd.map)
    free(sd.lmap)
    sd.rungs = NULL
    sd.map = NULL
    sd.lmap = NULL
    sd.rungs_cap = 0
    sd.n = 0
    sd.best = -1
    sd.best_key = CE_KEY_NONE

cdef inline int32_t side_best(Side* sd) noexcept nogil:
    """The best level, or -1."""
    return sd.best

cdef inline bint side_reaches(Side* sd, int64_t key) noexcept nogil:
    """Whether the side's best key is at or past key: an order of the other side whose price
    has this key here (side_key) reaches the side's best, and would cross it. From the keys
    alone, no level read (a buy at p reaches the best ask q when -q >= -p, a sell the best
    bid q when q >= p); an empty side's best_key is CE_KEY_NONE, below every key."""
    return sd.best_key >= key

# Both hashes are multiplicative with the tables' seeded multiplier (seed_hashes): prices are
# the clients' choice. Unsigned arithmetic wraps by design.
@cython.overflowcheck(False)
cdef inline uint64_t level_home(Side* sd, int64_t price) noexcept nogil:
    return (<uint64_t>price * sd.mul) >> sd.lmap_shift

@cython.overflowcheck(False)
cdef inline uint64_t rung_home(Side* sd, int64_t key) noexcept nogil:
    return (<uint64_t>key * sd.mul) >> sd.map_shift

cdef inline int32_t side_find(Side* sd, Level* levels, int64_t price) noexcept nogil:
    """The side's live level at price, or -1."""
    cdef uint64_t i = level_home(sd, price)
    cdef int32_t lv = sd.lmap[i]
    while lv >= 0:
        if levels[lv].price == price:
            return lv
        i = (i + 1) & sd.lmap_mask
        lv = sd.lmap[i]
    return -1

cdef int lmap_grow(Side* sd, Level* levels, int32_t n_levels, uint8_t side) except -1:
    """Twice the capacity. A side holding most of the level pool is filled from the pool read
    in order (its n_levels levels, those linked into this side): reading the levels in the
    old map's order was a random read of a level a slot, a cache miss each in a wide book. A
    side holding few of them (the other side wide, or the pool left large by a mass cancel)
    is filled from its old map: the pool read would cost the whole pool at every doubling."""
    cdef uint64_t cap = (sd.lmap_mask + 1) * 2, old_cap = sd.lmap_mask + 1, k
    cdef int32_t* grown = <int32_t*>malloc(cap * sizeof(int32_t))
    cdef int32_t* old = sd.lmap
    cdef int32_t lv
    cdef bint from_pool = <uint64_t>sd.n * 8 >= <uint64_t>n_levels
    if grown == NULL:
        raise MemoryError()
    memset(grown, 0xFF, cap * sizeof(int32_t))
    sd.lmap = grown
    sd.lmap_mask = cap - 1
    sd.lmap_shift -= 1
    sd.grow_reads += <uint64_t>n_levels if from_pool else old_cap
    if from_pool:
        for lv in range(n_levels):
            if levels[lv].linked and levels[lv].side == side:
                lmap_add(sd, levels, lv)
    else:
        for k in range(old_cap):
            if old[k] >= 0:
                lmap_add(sd, levels, old[k])
    free(old)
    return 0

cdef int lmap_reserve(Side* sd, uint64_t n) except -1:
    """An empty side's level map sized for n levels (restore: no grow while it links them)."""
    cdef uint64_t cap = sd.lmap_mask + 1
    cdef int shift = sd.lmap_shift
    cdef int32_t* grown
    while cap < 2 * n:
        cap *= 2
        shift -= 1
    if cap == sd.lmap_mask + 1:
        return 0
    grown = <int32_t*>malloc(cap * sizeof(int32_t))
    if grown == NULL:
        raise MemoryError()
    memset(grown, 0xFF, cap * sizeof(int32_t))
    free(sd.lmap)
    sd.lmap = grown
    sd.lmap_mask = cap - 1
    sd.lmap_shift = shift
    return 0

cdef inline void lmap_add(Side* sd, Level* levels, int32_t lv) noexcept nogil:
    """Level lv (no other at its price; the map has room) into the level map."""
    cdef uint64_t i = level_home(sd, levels[lv].price)
    while sd.lmap[i] >= 0:
        i = (i + 1) & sd.lmap_mask
    sd.lmap[i] = lv

@cython.overflowcheck(False)      # the distances wrap around the table by design
cdef inline void lmap_del(Side* sd, Level* levels, int32_t lv) noexcept nogil:
    """Level lv (in the map) out of it: backward-shift deletion, no tombstones."""
    cdef uint64_t i = level_home(sd, levels[lv].price), j, home
    cdef int32_t x
    while sd.lmap[i] != lv:
        i = (i + 1) & sd.lmap_mask
    j = i
    while True:
        j = (j + 1) & sd.lmap_mask
        x = sd.lmap[j]
        if x < 0:
            break
        home = level_home(sd, levels[x].price)
        # the entry at j may fill the hole at i unless its home lies after i, up to j
        if ((j - home) & sd.lmap_mask) >= ((j - i) & sd.lmap_mask):
            sd.lmap[i] = x
            i = j
    sd.lmap[i] = -1

cdef inline int32_t rung_probe(Side* sd, int64_t key) noexcept nogil:
    """The live rung of this key from the map, or -1."""
    cdef uint64_t i = rung_home(sd, key)
    while sd.map[i].key != key:
        if sd.map[i].key < 0:
            return -1
        i = (i + 1) & sd.map_mask
    return sd.map[i].rung

cdef inline int32_t side_rung(Side* sd, int64_t key) noexcept nogil:
    """The live rung of this key, or -1: from the rung cache (near the touch, most lookups),
    else from the map (and then cached)."""
    cdef int c = key & (RC - 1)
    cdef int32_t r
    if sd.rc_key[c] == key:
        return sd.rc_rung[c]
    r = rung_probe(sd, key)
    if r >= 0:
        sd.rc_key[c] = key
        sd.rc_rung[c] = r
    return r

cdef int rung_map_grow(Side* sd) except -1:
    cdef RSlot* old = sd.map
    cdef uint64_t old_cap = sd.map_mask + 1, j, i
    cdef RSlot* grown = <RSlot*>malloc(old_cap * 2 * sizeof(RSlot))
    if grown == NULL:
        raise MemoryError()
    memset(grown, 0xFF, old_cap * 2 * sizeof(RSlot))
    sd.map = grown
    sd.map_mask = old_cap * 2 - 1
    sd.map_shift -= 1
    for j in range(old_cap):
        if old[j].key >= 0:
            i = rung_home(sd, old[j].key)
            while sd.map[i].key >= 0:
                i = (i + 1) & sd.map_mask
            sd.map[i] = old[j]
    free(old)
    return 0

@cython.overflowcheck(False)      # the distances wrap around the table by design
cdef void rung_map_del(Side* sd, int64_t key) noexcept nogil:
    """Take key (present) out of the rung map: backward-shift deletion, no tombstones."""
    cdef uint64_t i = rung_home(sd, key), j, home
    while sd.map[i].key != key:
        i = (i + 1) & sd.map_mask
    j = i
    while True:
        j = (j + 1) & sd.map_mask
        if sd.map[j].key < 0:
            break
        home = rung_home(sd, sd.map[j].key)
        if ((j - home) & sd.map_mask) >= ((j - i) & sd.map_mask):
            sd.map[i] = sd.map[j]
            i = j
    sd.map[i].key = -1

cdef int32_t side_open_rung(Side* sd, int64_t key) except -1:
    """A new, empty rung of this key (absent): in the map and in the ordered index."""
    cdef int32_t r, cap
    cdef Rung* grown
    cdef uint64_t i
    if sd.free_rung < 0:
        cap = sd.rungs_cap * 2
        grown = <Rung*>realloc(sd.rungs, cap * sizeof(Rung))
        if grown == NULL:
            raise MemoryError()
        sd.rungs = grown
        for r in range(sd.rungs_cap, cap):
            sd.rungs[r].key = r + 1 if r + 1 < cap else -1
        sd.free_rung = sd.rungs_cap
        sd.rungs_cap = cap
    if <uint64_t>(sd.tree.n + 1) * 2 > sd.map_mask + 1:
        rung_map_grow(sd)
    tree_insert(&sd.tree, key, sd.free_rung)
    r = sd.free_rung
    sd.free_rung = <int32_t>sd.rungs[r].key
    sd.rungs[r].summary = 0
    sd.rungs[r].key = key
    memset(sd.rungs[r].words, 0, sizeof(sd.rungs[r].words))
    i = rung_home(sd, key)
    while sd.map[i].key >= 0:
        i = (i + 1) & sd.map_mask
    sd.map[i].key = key
    sd.map[i].rung = r
    sd.rc_key[key & (RC - 1)] = key
    sd.rc_rung[key & (RC - 1)] = r
    return r

cdef void side_close_rung(Side* sd, int32_t r) noexcept:
    """Rung r, empty, out of the map and the ordered index, to the free list (reused first)."""
    cdef int64_t key = sd.rungs[r].key
    rung_map_del(sd, key)
    tree_remove(&sd.tree, key)
    if sd.rc_key[key & (RC - 1)] == key:
        sd.rc_key[key & (RC - 1)] = -1
    sd.rungs[r].key = sd.free_rung
    sd.free_rung = r

cdef inline int64_t rung_top(Rung* R) noexcept nogil:
    """The highest occupied side tick of a live rung."""
    cdef int w = 63 - clzll(R.summary)
    return (R.key << RB) | (w << 6) | (63 - clzll(R.words[w]))


cdef struct Walk:
    # a side's occupied ticks, best first: the tree position of the next rung, the rung being
    # walked, its words not yet started, the word being walked and its bits not yet given
    int32_t bi
    int32_t k
    int32_t r
    int32_t w
    uint64_t summary
    uint64_t bits

cdef inline void walk_start(Side* sd, Walk* w) noexcept nogil:
    w.bi = sd.tree.nb - 1
    w.k = sd.tree.blocks[w.bi].n - 1 if w.bi >= 0 else -1
    w.r = -1
    w.w = 0
    w.summary = 0
    w.bits = 0

cdef inline int64_t walk_next(Side* sd, Walk* w) noexcept nogil:
    """The side tick of the next level, best first, or -1 after the worst (the side must not
    change meanwhile)."""
    cdef int b
    while w.bits == 0:
        if w.summary == 0:
            if w.k < 0:
                if w.bi <= 0:
                    return -1
                w.bi -= 1
                w.k = sd.tree.blocks[w.bi].n - 1
            w.r = sd.tree.blocks[w.bi].lv[w.k]
            w.k -= 1
            w.summary = sd.rungs[w.r].summary
        w.w = 63 - clzll(w.summary)
        w.summary &= ~(<uint64_t>1 << w.w)
        w.bits = sd.rungs[w.r].words[w.w]
    b = 63 - clzll(w.bits)
    w.bits &= ~(<uint64_t>1 << b)
    return (sd.rungs[w.r].key << RB) | (w.w << 6) | b


# -- output buffer ----------------------------------------------------------------------------
cdef inline int buf_reserve(Buf* b, Py_ssize_t n) except -1:
    if <size_t>b.w + <size_t>n <= <size_t>b.end:
        return 0
    return buf_grow(b, n)

cdef int buf_grow(Buf* b, Py_ssize_t n) except -1:
    """Room for n more bytes: the malloc'd buffer by realloc, a frame's bytes object (owner)
    by _PyBytes_Resize."""
    cdef Py_ssize_t cap = b.end - b.data, length = b.w - b.data
    cdef Py_ssize_t rec = b.rec - b.data if b.rec != NULL else -1
    cdef unsigned char* data
    cap = cap * 2 if cap else 4096
    while cap < length + n:
        cap *= 2
    if b.owner != NULL:
        _PyBytes_Resize(&b.owner, cap)
        data = <unsigned char*>PyBytes_AS_STRING(<object>b.owner)
    else:
        data = <unsigned char*>realloc(b.data, cap)
        if data == NULL:
            raise MemoryError()
    b.data = data
    b.w = data + length
    b.end = data + cap
    if rec >= 0:
        b.rec = data + rec
    return 0


cdef struct AcctIdx:
    uint64_t order_id
    uint32_t account
    int32_t idx              # the order's index in the pool

cdef int sort_by_account(AcctIdx* a, Py_ssize_t n) except -1:
    """Sort by (account, order id): LSD radix, 16 bits a pass, stable; the order id's four
    digits, then the account's two. A digit that every key shares (the symbol's high bits of
    the ids, the accounts' high bits, usually) is found in one pass and skipped. Linear in n,
    where qsort of a million keys costs twenty comparisons each through a function pointer."""
    cdef AcctIdx* tmp
    cdef AcctIdx* src = a
    cdef AcctIdx* dst
    cdef AcctIdx* sw
    cdef Py_ssize_t* cnt
    cdef Py_ssize_t k, total, c
    cdef int pass_no, shift
    cdef uint64_t d, id_diff = 0, acct_diff = 0
    if n < 2:
        return 0
    for k in range(1, n):
        id_diff |= a[k].order_id ^ a[0].order_id
        acct_diff |= a[k].account ^ a[0].account
    tmp = <AcctIdx*>malloc(n * sizeof(AcctIdx))
    cnt = <Py_ssize_t*>malloc(65536 * sizeof(Py_ssize_t))
    if tmp == NULL or cnt == NULL:
        free(tmp)
        free(cnt)
        raise MemoryError()
    populate(tmp, n * sizeof(AcctIdx))
    dst = tmp
    for pass_no in range(6):
        shift = (pass_no % 4) * 16
        if ((id_diff if pass_no < 4 else acct_diff) >> shift) & 0xFFFF == 0:
            continue
        memset(cnt, 0, 65536 * sizeof(Py_ssize_t))
        for k in range(n):
            d = ((src[k].order_id if pass_no < 4 else src[k].account) >> shift) & 0xFFFF
            cnt[d] += 1
        total = 0
        for k in range(65536):
            c = cnt[k]
            cnt[k] = total
            total += c
        for k in range(n):
            d = ((src[k].order_id if pass_no < 4 else src[k].account) >> shift) & 0xFFFF
            dst[cnt[d]] = src[k]
            cnt[d] += 1
        sw = src
        src = dst
        dst = sw
    if src != a:
        memcpy(a, src, n * sizeof(AcctIdx))
    free(tmp)
    free(cnt)
    return 0


cdef int table_sized(Table* t, uint64_t n) except -1:
    """Make t an empty table for n keys at a load factor of at most one half (restore)."""
    cdef uint64_t cap = 1 << 10
    while cap < 2 * n + 2:
        cap <<= 1
    free(t.slots)
    t.slots = NULL
    table_init(t, cap)
    populate(t.slots, cap * sizeof(Slot))
    return 0


cdef void populate(void* p, size_t n) noexcept:
    """Fault in the whole pages of [p, p + n) at once, writable, before they are first used.
    A restore fills a pool of a million orders and two id tables of 128 MiB (at random):
    page by page that is a fault per page, two for a table's page that is read (the zero
    page) before it is written, and the kernel's time was half the restore's. One madvise
    does the same work without a trap per page. A hint only: a kernel without
    MADV_POPULATE_WRITE (before Linux 5.14) refuses it and the pages fault in as they did."""
    cdef size_t page = 4096
    cdef size_t start = (<size_t>p + page - 1) & ~(page - 1)
    cdef size_t end = (<size_t>p + n) & ~(page - 1)
    if end > start:
        madvise(<void*>start, end - start, MADV_POPULATE_WRITE)


@cython.final
cdef class CrossEngine:
    """Pure: the same records give the same outputs and state_hash(). No clock, I/O or randomness."""
    cdef readonly uint32_t symbol_id
    cdef uint64_t id_base            # symbol_id << 40: an order id's high bits
    cdef readonly int64_t tick_size
    cdef readonly uint64_t min_qty
    cdef readonly uint64_t max_qty
    cdef readonly int64_t max_price
    cdef readonly uint64_t max_orders
    cdef readonly uint32_t max_fills            # matching steps one taker may take
    cdef readonly uint32_t max_account_orders   # resting orders one account may have
    cdef readonly uint32_t n_shards     # TradingEngine shards, 1 .. 64: route bit account % this
    cdef uint64_t all_shards            # the route of a book-wide event: every shard's bit
    cdef uint64_t shard_m               # n_shards' multiplier for ce_fastmod_u32
    cdef uint32_t te_src[MAX_TE_SOURCES]  # sources whose records are TradingEngine outputs
    cdef int32_t n_te                   # how many of te_src are used
    cdef uint32_t liq_src[MAX_LIQ_SOURCES]  # sources whose records are LiqEngine outputs
    cdef int32_t n_liq                  # how many of liq_src are used
    cdef uint64_t order_counter
    cdef uint64_t trade_id
    cdef uint64_t command_no
    cdef bint halted
    cdef int64_t open_max_price         # max_price, or 0 while halted: _new_order's one bound
                                        # test of a price also refuses the halted book's orders
    cdef Order* orders
    cdef int32_t orders_cap
    cdef int32_t free_order
    cdef int32_t n_live
    cdef Level* levels
    cdef int32_t levels_cap
    cdef int32_t free_level
    cdef Side sides[2]
    cdef Table by_id                    # the live orders the id ring does not hold
    cdef int32_t* id_ring               # order index by order id & ring_mask, or -1
    cdef uint64_t ring_mask
    cdef Table by_client
    cdef Table by_account
    cdef Touched* touched
    cdef int32_t n_touched
    cdef int32_t touched_cap
    cdef Buf out
    cdef Py_ssize_t out_per_in16        # the last frame's output bytes per input byte, in
                                        # sixteenths (sizes the next output frame)
    cdef uint64_t route                 # the route of the record being applied, built as its
                                        # events are written (the shard bit of every account)
    # the matching steps the next taker may take: max_fills, except inside the walk of a
    # TradingEngine or LiqEngine record, whose takers together take at most max_fills
    cdef uint32_t fill_cap
    # matching steps taken so far: trade_id counts the trades, stp_steps the self-trade
    # prevention steps (the walk of a record reads both before and after each command)
    cdef uint64_t stp_steps
    cdef uint64_t walk_steps0           # trade_id + stp_steps when the walk began

    def __cinit__(self, uint32_t symbol_id=1, int64_t tick_size=1, uint64_t min_qty=1,
                  uint64_t max_qty=1_000_000_000, int64_t max_price=1 << 62,
                  uint64_t max_orders=10_000_000, int32_t capacity=1 << 16,
                  int32_t level_capacity=1 << 12, uint32_t max_fills=_codec.MAX_FILLS_LIMIT,
                  uint32_t max_account_orders=_codec.DEFAULT_ACCOUNT_ORDERS,
                  te_sources=(), uint32_t n_shards=1, liq_sources=()):
        if symbol_id == 0 or symbol_id >= (1 << 24):
            raise ValueError("symbol_id must be in 1 .. 2**24-1")
        if tick_size <= 0 or max_price <= 0 or max_price > (1 << 62) or min_qty == 0:
            raise ValueError("tick_size, max_price and min_qty must be positive (max_price <= 2**62)")
        if max_orders == 0 or max_orders >= (1 << 31) or max_qty < min_qty \
                or max_qty >= (1 << 62) // max_orders:
            # every level total and every FOK sum stays below 2**63
            raise ValueError("max_orders * max_qty must stay below 2**62 (and max_orders < 2**31)")
        if not 1 <= max_fills <= _codec.MAX_FILLS_LIMIT \
                or not 1 <= max_account_orders <= _codec.MAX_ACCOUNT_ORDERS_LIMIT:
            # the bounds that keep every output within one record (codec.worst_case_sizes)
            raise ValueError(f"max_fills must be in 1 .. {_codec.MAX_FILLS_LIMIT} and "
                             f"max_account_orders in 1 .. {_codec.MAX_ACCOUNT_ORDERS_LIMIT}")
        if not 1 <= n_shards <= MAX_SHARDS:
            raise ValueError(f"n_shards must be in 1 .. {MAX_SHARDS}")
        te = list(te_sources)
        if len(te) > MAX_TE_SOURCES or any(x in te[:k] for k, x in enumerate(te)) or not all(
                isinstance(x, int) and 0 < x < OPERATOR_SOURCE_MIN for x in te):
            raise ValueError(f"te_sources must be at most {MAX_TE_SOURCES} distinct source ids "
                             f"in 1 .. {OPERATOR_SOURCE_MIN - 1} (not the operator's)")
        self.n_te = len(te)
        for k, x in enumerate(te):
            self.te_src[k] = x
        liq = list(liq_sources)
        if len(liq) > MAX_LIQ_SOURCES or any(x in liq[:k] or x in te for k, x in enumerate(liq)) \
                or not all(isinstance(x, int) and 0 < x < OPERATOR_SOURCE_MIN for x in liq):
            raise ValueError(f"liq_sources must be at most {MAX_LIQ_SOURCES} distinct source ids "
                             f"in 1 .. {OPERATOR_SOURCE_MIN - 1}, none of them a te_source")
        self.n_liq = len(liq)
        for k, x in enumerate(liq):
            self.liq_src[k] = x
        self.n_shards = n_shards
        self.shard_m = 0 if n_shards == 1 else <uint64_t>0xFFFFFFFFFFFFFFFF // n_shards + 1
        # a book-wide event concerns every shard and the LiqEngine
        self.all_shards = ((<uint64_t>1 << n_shards) - 1) | ROUTE_LIQ
        self.max_fills = max_fills
        self.fill_cap = max_fills
        self.max_account_orders = max_account_orders
        self.symbol_id = symbol_id
        self.id_base = <uint64_t>symbol_id << 40
        self.tick_size = tick_size
        self.min_qty = min_qty
        self.max_qty = max_qty
        self.max_price = max_price
        self.open_max_price = max_price
        self.max_orders = max_orders
        self.free_order = -1
        self.free_level = -1
        capacity = max(capacity, 16)
        self.orders = <Order*>malloc(capacity * sizeof(Order))
        level_capacity = max(level_capacity, 16)
        self.levels = <Level*>malloc(level_capacity * sizeof(Level))
        self.touched = <Touched*>malloc(64 * sizeof(Touched))
        if not (self.orders and self.levels and self.touched):
            raise MemoryError()
        side_init(&self.sides[0])
        side_init(&self.sides[1])
        self.orders_cap = 0
        self._grow_orders(capacity)
        self.levels_cap = 0
        self._grow_levels(level_capacity)
        self.touched_cap = 64
        # The id ring holds most live orders (the recent ones); the id map the rest, so it
        # starts small.
        self.ring_mask = (<uint64_t>1 << id_ring_bits) - 1
        self.id_ring = <int32_t*>malloc((self.ring_mask + 1) * sizeof(int32_t))
        if self.id_ring == NULL:
            raise MemoryError()
        memset(self.id_ring, 0xFF, (self.ring_mask + 1) * sizeof(int32_t))
        table_init(&self.by_id, 1 << 12)
        table_init(&self.by_client, 1 << 17)
        # accounts are few and looked up by every resting order and cancel: start at a
        # quarter load for a few thousand of them
        table_init(&self.by_account, 1 << 13)

    def __dealloc__(self):
        free(self.orders)
        free(self.levels)
        free(self.touched)
        side_free(&self.sides[0])
        side_free(&self.sides[1])
        free(self.by_id.slots)
        free(self.id_ring)
        free(self.by_client.slots)
        free(self.by_account.slots)
        free(self.out.data)

    # -- pools ------------------------------------------------------------------------------
    cdef int _grow_orders(self, int32_t cap) except -1:
        cdef Order* p
        cdef int32_t i
        if self.orders_cap:
            p = <Order*>realloc(self.orders, cap * sizeof(Order))
            if p == NULL:
                raise MemoryError()
            self.orders = p
        for i in range(cap - 1, self.orders_cap - 1, -1):
            self.orders[i].live = 0
            self.orders[i].next = self.free_order
            self.free_order = i
        self.orders_cap = cap
        return 0

    cdef int _grow_levels(self, int32_t cap) except -1:
        cdef Level* p
        cdef int32_t i
        if self.levels_cap:
            p = <Level*>realloc(self.levels, cap * sizeof(Level))
            if p == NULL:
                raise MemoryError()
            self.levels = p
        for i in range(cap - 1, self.levels_cap - 1, -1):
            self.levels[i].linked = 0
            self.levels[i].next_free = self.free_level
            self.free_level = i
        self.levels_cap = cap
        return 0

    cdef inline int32_t _alloc_order(self) except -1:
        cdef int32_t i
        if self.free_order < 0:
            self._grow_orders(self.orders_cap * 2)
        i = self.free_order
        self.free_order = self.orders[i].next
        memset(&self.orders[i], 0, sizeof(Order))
        return i

    cdef inline void _free_order(self, int32_t i) noexcept:
        self.orders[i].live = 0
        self.orders[i].next = self.free_order
        self.free_order = i

    # -- levels -----------------------------------------------------------------------------
    @cython.cdivision(True)
    cdef inline int64_t _tick(self, int s, int64_t price) noexcept:
        """The side tick of a price on the tick: price / tick_size for bids, 2**62 - that for
        asks, so that the best level has the largest on either side (both >= 0). price > 0
        and tick_size > 0: C's division is Python's; a tick of 1 needs none."""
        cdef int64_t t = price if self.tick_size == 1 else price / self.tick_size
        return t if s == 0 else CE_TICK_TOP - t

    cdef inline int64_t _price_of(self, int s, int64_t st) noexcept:
        """The price at side tick st of side s (_tick's inverse)."""
        return (st if s == 0 else CE_TICK_TOP - st) * self.tick_size

    cdef inline int32_t _find_level(self, int s, int64_t price) noexcept:
        """The live level of side s at price, or -1: one probe of the side's level map (at a
        load of at most a half), whatever the width of the book."""
        return side_find(&self.sides[s], self.levels, price)

    cdef inline int32_t _walk_next(self, int s, Walk* w) noexcept:
        """The next level of a walk of side s (walk_start), best first, or -1 after the worst."""
        cdef int64_t st = walk_next(&self.sides[s], w)
        if st < 0:
            return -1
        return side_find(&self.sides[s], self.levels, self._price_of(s, st))

    cdef int32_t _new_level(self, int s, int64_t price) except -1:
        cdef int32_t lv = self._alloc_level(s, price), k
        self._ladder_link(s, lv)
        # A level at this price may have been listed as touched earlier in this command.
        for k in range(self.n_touched):
            if self.touched[k].price == price and self.touched[k].side == self.levels[lv].side:
                self.levels[lv].mark = self.command_no
                break
        return lv

    cdef int _ladder_link(self, int s, int32_t lv) except -1:
        """Level lv (none other of its side at its price) into its side: the level map, its
        tick's bit in its rung (opened if none), and the best."""
        cdef Side* sd = &self.sides[s]
        cdef Level* L
        cdef int64_t st = self._tick(s, self.levels[lv].price), key
        cdef int32_t r
        cdef int t = st & ((1 << RB) - 1)
        if <uint64_t>(sd.n + 1) * 2 > sd.lmap_mask + 1:
            lmap_grow(sd, self.levels, self.levels_cap, BUY if s == 0 else SELL)
        lmap_add(sd, self.levels, lv)
        r = side_rung(sd, st >> RB)
        if r < 0:
            r = side_open_rung(sd, st >> RB)
        sd.rungs[r].words[t >> 6] |= <uint64_t>1 << (t & 63)
        sd.rungs[r].summary |= <uint64_t>1 << (t >> 6)
        L = &self.levels[lv]
        L.rung = r
        L.tick = <uint16_t>t
        L.linked = 1
        key = side_key(s, L.price)
        if key > sd.best_key:        # CE_KEY_NONE when the side is empty
            sd.best = lv
            sd.best_key = key
        sd.n += 1
        return 0

    cdef int32_t _alloc_level(self, int s, int64_t price) except -1:
        """A level from the pool, empty, not yet in its side's index."""
        cdef int32_t lv
        if self.free_level < 0:
            self._grow_levels(self.levels_cap * 2)
        lv = self.free_level
        self.free_level = self.levels[lv].next_free
        self.levels[lv].price = price
        self.levels[lv].total = 0
        self.levels[lv].count = 0
        self.levels[lv].side = BUY if s == 0 else SELL
        self.levels[lv].head = -1
        self.levels[lv].tail = -1
        self.levels[lv].mark = 0
        return lv

    cdef inline void _drop_level(self, int s, int32_t lv) noexcept:
        """Level lv, empty, out of its side (its rung closed if it was the rung's last) and
        back to the pool. When it was the best, the next best is the highest tick of the best
        rung left (the last key of the side's rung index), found in the level map."""
        cdef Side* sd = &self.sides[s]
        cdef Level* L = &self.levels[lv]
        cdef int32_t r = L.rung
        cdef Rung* R = &sd.rungs[r]
        cdef int t = L.tick
        cdef int64_t price
        lmap_del(sd, self.levels, lv)
        R.words[t >> 6] &= ~(<uint64_t>1 << (t & 63))
        if R.words[t >> 6] == 0:
            R.summary &= ~(<uint64_t>1 << (t >> 6))
            if R.summary == 0:
                side_close_rung(sd, r)
        sd.n -= 1
        if sd.best == lv:
            if sd.n == 0:
                sd.best = -1
                sd.best_key = CE_KEY_NONE
            else:
                price = self._price_of(s, rung_top(&sd.rungs[tree_last(&sd.tree)]))
                sd.best = side_find(sd, self.levels, price)
                sd.best_key = side_key(s, price)
        L.linked = 0
        L.next_free = self.free_level
        self.free_level = lv

    cdef inline int _touch(self, int32_t lv) except -1:
        if self.levels[lv].mark == self.command_no:
            return 0
        self.levels[lv].mark = self.command_no
        if self.n_touched == self.touched_cap:
            self._grow_touched()
        self.touched[self.n_touched].price = self.levels[lv].price
        self.touched[self.n_touched].side = self.levels[lv].side
        self.touched[self.n_touched].level = lv
        self.n_touched += 1
        return 0

    cdef int _grow_touched(self) except -1:
        cdef Touched* grown = <Touched*>realloc(self.touched,
                                                self.touched_cap * 2 * sizeof(Touched))
        if grown == NULL:
            raise MemoryError()
        self.touched = grown
        self.touched_cap *= 2
        return 0

    # -- book links -------------------------------------------------------------------------
    cdef inline int _book_link(self, int32_t i) except -1:
        """Put order i at the tail of its price level (creating the level)."""
        cdef int s = side_index(self.orders[i].side)
        cdef int32_t lv = self._find_level(s, self.orders[i].price)
        if lv < 0:
            lv = self._new_level(s, self.orders[i].price)
        self._append(i, lv)
        self._touch(lv)
        return 0

    cdef inline void _append(self, int32_t i, int32_t lv) noexcept:
        """Order i, live, at the tail of level lv (the book's FIFO; restore builds it so too)."""
        cdef Order* o = &self.orders[i]
        cdef Level* L = &self.levels[lv]
        o.level = lv
        o.prev = L.tail
        o.next = -1
        if L.tail >= 0:
            self.orders[L.tail].next = i
        else:
            L.head = i
        L.tail = i
        L.total += o.leaves
        L.count += 1
        o.live = 1

    cdef inline int _book_unlink(self, int32_t i) except -1:
        cdef Order* o = &self.orders[i]
        cdef int32_t lv = o.level
        cdef Level* L = &self.levels[lv]
        self._touch(lv)
        fifo_unlink(self.orders, o, L)
        if L.count == 0:
            self._drop_level(side_index(o.side), lv)
        return 0

    # -- the order id index: the id ring, then the id map -----------------------------------
    # Order ids are a counter, so the ring slot of an id (id & ring_mask) is the next slot at
    # each new order: a resting order takes it, and the live order that held it (2**15 or more
    # orders older) moves on to the id map. A lookup reads the ring slot, then the map; an
    # order leaving the book empties its ring slot (id_slot -1) or its map slot. Most orders
    # leave the book long before their ring slot comes round again, and never touch the map.
    cdef inline int _id_add(self, int32_t i) except -1:
        """Enter order i (its id is new: ids are never reused) in the id ring."""
        cdef uint64_t k = self.orders[i].order_id & self.ring_mask
        cdef int32_t e = self.id_ring[k]
        if e >= 0:
            self._id_spill(e)
        self.id_ring[k] = i
        self.orders[i].id_slot = -1
        return 0

    cdef inline int32_t _id_find(self, uint64_t order_id) noexcept:
        """The live order of this id, or -1."""
        cdef int32_t i = self.id_ring[order_id & self.ring_mask]
        cdef int64_t s
        if i >= 0 and self.orders[i].order_id == order_id:
            return i
        s = table_find1(&self.by_id, order_id)
        return self.by_id.slots[s].v1 if s >= 0 else -1

    cdef inline int _id_del(self, int32_t i) except -1:
        """Order i out of the id index (the ring, or the map at its id_slot)."""
        cdef Order* o = &self.orders[i]
        cdef int32_t s = o.id_slot
        if s < 0:
            if self.id_ring[o.order_id & self.ring_mask] != i:
                raise RuntimeError(f"crossengine: index lost order id {o.order_id}")
            self.id_ring[o.order_id & self.ring_mask] = -1
            return 0
        if self.by_id.slots[s].v1 != i or not self.by_id.slots[s].used:
            raise RuntimeError(f"crossengine: index lost order id {o.order_id}")
        table_shift_out(&self.by_id, <uint64_t>s, self.orders)
        return 0

    cdef int _id_spill(self, int32_t i) except -1:
        """Order i, in the ring, into the id map (its ring slot is being taken), and its slot
        in its id_slot."""
        cdef Table* t = &self.by_id
        cdef uint64_t j
        if t.room <= 0:
            table_grow(t)
            self._id_rehint()
        j = key_hash(t, self.orders[i].order_id)
        while t.slots[j].used:
            j = (j + 1) & t.mask
        table_put_at(t, j, self.orders[i].order_id, 0, i, 0)
        self.orders[i].id_slot = <int32_t>j
        return 0

    cdef void _id_rehint(self) noexcept:
        """Every live order's id_slot again, after the id map was rebuilt (grown)."""
        cdef Table* t = &self.by_id
        cdef uint64_t j
        for j in range(t.mask + 1):
            if t.slots[j].used:
                self.orders[t.slots[j].v1].id_slot = <int32_t>j

    cdef int64_t _account_new(self, uint32_t account, int32_t i) except -2:
        """Enter an account not in the account map, its list the one order i: its slot."""
        cdef int64_t a
        table_add(&self.by_account, account, 0, i, i)
        a = table_find1(&self.by_account, account)
        self.by_account.slots[a].shard = self._shard(account)
        return a

    cdef inline int _index_link(self, int32_t i, int64_t a) except -1:
        """Enter order i in the id maps and at the tail of its account's id-ordered list; a is
        the account's slot in the account map if the caller has it, else -1."""
        cdef Order* o = &self.orders[i]
        cdef int32_t tail
        # Both keys are new: ids are never reused, and a client id in use was refused.
        self._id_add(i)
        table_add(&self.by_client, o.client_order_id, o.account, i, 0)
        if a < 0:
            a = table_find(&self.by_account, o.account, 0)
        if a < 0 or self.by_account.slots[a].v1 < 0:
            o.acct_prev = -1
            o.acct_next = -1
            if a < 0:
                a = self._account_new(o.account, i)
            else:
                self.by_account.slots[a].v1 = i
                self.by_account.slots[a].v2 = i
        else:
            tail = self.by_account.slots[a].v2
            o.acct_prev = tail
            o.acct_next = -1
            self.orders[tail].acct_next = i
            self.by_account.slots[a].v2 = i
        self.by_account.slots[a].n += 1
        o.acct_slot = <int32_t>a
        self.n_live += 1
        return 0

    cdef inline int _index_unlink(self, int32_t i) except -1:
        cdef Order* o = &self.orders[i]
        self._id_del(i)
        table_del(&self.by_client, o.client_order_id, o.account)
        self._account_unlink(i)
        return 0

    cdef inline int64_t _account_unlink(self, int32_t i) except -1:
        """Take order i out of its account's id-ordered list (and count); one fewer live. The
        account's slot in the account map."""
        cdef Order* o = &self.orders[i]
        cdef int64_t a = o.acct_slot
        # the hint is in range (the map never shrinks) and right unless the map grew since
        if not (self.by_account.slots[a].k1 == o.account and self.by_account.slots[a].used):
            a = table_find1(&self.by_account, o.account)
            if a < 0:
                raise RuntimeError("crossengine: account list lost")
        if o.acct_prev >= 0:
            self.orders[o.acct_prev].acct_next = o.acct_next
        else:
            self.by_account.slots[a].v1 = o.acct_next
        if o.acct_next >= 0:
            self.orders[o.acct_next].acct_prev = o.acct_prev
        else:
            self.by_account.slots[a].v2 = o.acct_prev
        self.by_account.slots[a].n -= 1
        self.n_live -= 1
        return a

    cdef inline int _remove(self, int32_t i) except -1:
        self._book_unlink(i)
        self._index_unlink(i)
        self._free_order(i)
        return 0

    # -- events -----------------------------------------------------------------------------
    cdef inline int _ev_rejected(self, uint64_t cl_id, uint32_t account, uint16_t code,
                          uint64_t order_id) except -1:
        buf_reserve(&self.out, 23)
        cdef unsigned char* p = self.out.w
        p[0] = EV_REJECTED
        wr64(p + 1, cl_id)
        wr32(p + 9, account)
        wr16(p + 13, code)
        wr64(p + 15, order_id)
        self.out.w = p + 23
        self.route |= self._bit(account)
        return 0

    cdef inline int _ev_accepted(self, int32_t i, uint8_t ord_type, uint64_t qty, uint8_t tif) except -1:
        buf_reserve(&self.out, 41)
        cdef unsigned char* p = self.out.w
        cdef Order* o = &self.orders[i]
        p[0] = EV_ACCEPTED
        wr64(p + 1, o.order_id)
        wr64(p + 9, o.client_order_id)
        wr32(p + 17, o.account)
        p[21] = o.side
        p[22] = ord_type
        wri64(p + 23, o.price)
        wr64(p + 31, qty)
        p[39] = tif
        p[40] = o.flags
        self.out.w = p + 41
        self.route |= self._bit(o.account)
        return 0

    cdef inline int _ev_cancel(self, uint8_t kind, int32_t i, uint64_t qty, uint8_t reason) except -1:
        buf_reserve(&self.out, 30)
        cdef unsigned char* p = self.out.w
        cdef Order* o = &self.orders[i]
        p[0] = kind
        wr64(p + 1, o.order_id)
        wr64(p + 9, o.client_order_id)
        wr32(p + 17, o.account)
        wr64(p + 21, qty)
        p[29] = reason
        self.out.w = p + 30
        self.route |= self._bit(o.account)
        return 0

    cdef int _ev_amended(self, int32_t i, uint64_t total, uint8_t kept) except -1:
        buf_reserve(&self.out, 46)
        cdef unsigned char* p = self.out.w
        cdef Order* o = &self.orders[i]
        p[0] = EV_AMENDED
        wr64(p + 1, o.order_id)
        wr64(p + 9, o.client_order_id)
        wr32(p + 17, o.account)
        wri64(p + 21, o.price)
        wr64(p + 29, o.leaves)
        wr64(p + 37, total)
        p[45] = kept
        self.out.w = p + 46
        self.route |= self._bit(o.account)
        return 0

    cdef inline int _ev_trade(self, int32_t m, int32_t t, uint64_t q) except -1:
        buf_reserve(&self.out, 68)
        cdef unsigned char* p = self.out.w
        cdef Order* mk = &self.orders[m]
        cdef Order* tk = &self.orders[t]
        p[0] = EV_TRADE
        wr64(p + 1, self.trade_id)
        wr64(p + 9, mk.order_id)
        wr64(p + 17, tk.order_id)
        wr32(p + 25, mk.account)
        wr32(p + 29, tk.account)
        wri64(p + 33, mk.price)
        wr64(p + 41, q)
        p[49] = tk.side
        wr64(p + 50, mk.leaves)
        wr64(p + 58, tk.leaves)
        p[66] = mk.flags
        p[67] = tk.flags
        self.out.w = p + 68
        self.route |= self._bit(mk.account) | self._bit(tk.account)
        return 0

    cdef int _ev_mass(self, uint8_t scope, uint32_t account, uint8_t side, uint8_t reason,
                      uint64_t count) except -1:
        buf_reserve(&self.out, 24)
        cdef unsigned char* p = self.out.w
        p[0] = EV_MASS
        p[1] = scope
        wr32(p + 2, account)
        p[6] = side
        p[7] = reason
        wr64(p + 8, count)
        wr64(p + 16, self.id_base | self.order_counter)
        self.out.w = p + 24
        self.route |= self.all_shards if scope == SCOPE_BOOK else self._bit(account)
        return 0

    cdef int _ev_byte(self, uint8_t kind) except -1:
        buf_reserve(&self.out, 1)
        self.out.w[0] = kind
        self.out.w += 1
        self.route |= self.all_shards     # Halted, Resumed: book-wide
        return 0

    cdef inline int _ev_level(self, uint8_t side, int64_t price, int32_t lv) except -1:
        """LevelChanged of side and price: level lv's total and count, or 0 and 0 for lv < 0
        (the level is gone)."""
        buf_reserve(&self.out, 22)
        cdef unsigned char* p = self.out.w
        p[0] = EV_LEVEL
        p[1] = side
        wri64(p + 2, price)
        if lv >= 0:
            wr64(p + 10, self.levels[lv].total)
            wr32(p + 18, self.levels[lv].count)
        else:
            wr64(p + 10, 0)
            wr32(p + 18, 0)
        self.out.w = p + 22
        return 0

    cdef inline int _level_events(self) except -1:
        cdef int32_t k, lv
        cdef int s
        cdef unsigned char* p
        buf_reserve(&self.out, 22 * self.n_touched)
        for k in range(self.n_touched):
            s = side_index(self.touched[k].side)
            lv = self.touched[k].level
            # Still the live level of that side and price? Else (emptied, or its slot reused)
            # look the price up: the level may be gone, or another one may stand there now.
            if not (self.levels[lv].count and self.levels[lv].price == self.touched[k].price
                    and self.levels[lv].side == self.touched[k].side):
                lv = self._find_level(s, self.touched[k].price)
            p = self.out.w
            p[0] = EV_LEVEL
            p[1] = self.touched[k].side
            wri64(p + 2, self.touched[k].price)
            if lv >= 0:
                wr64(p + 10, self.levels[lv].total)
                wr32(p + 18, self.levels[lv].count)
            else:
                wr64(p + 10, 0)
                wr32(p + 18, 0)
            self.out.w = p + 22
        self.n_touched = 0
        return 0

    # -- matching ---------------------------------------------------------------------------
    cdef inline bint _crosses(self, uint8_t side, int64_t price, int64_t best, bint market) noexcept:
        if market:
            return True
        return best <= price if side == BUY else best >= price

    cdef bint _fok_fillable(self, uint8_t side, int64_t price, bint market, uint64_t qty,
                            uint32_t account, uint8_t stp) noexcept:
        cdef int opp = 1 - side_index(side)
        cdef Side* sd = &self.sides[opp]
        cdef int32_t i, lv
        cdef uint64_t got = 0
        cdef uint32_t steps = 0
        cdef Walk w
        walk_start(sd, &w)
        lv = self._walk_next(opp, &w)
        while lv >= 0:
            if not self._crosses(side, price, self.levels[lv].price, market):
                break
            i = self.levels[lv].head
            while i >= 0:
                # matching would stop at fill_cap makers: a FOK must fill within them
                if steps >= self.fill_cap:
                    return False
                steps += 1
                if self.orders[i].account == account and stp != STP_NONE:
                    if stp != STP_OLDEST:
                        return got >= qty
                else:
                    got += self.orders[i].leaves
                    if got >= qty:
                        return True
                i = self.orders[i].next
            lv = self._walk_next(opp, &w)
        return got >= qty

    cdef inline int _match(self, int32_t t, bint market) except -1:
        """Match order t (not in the book) against the opposite side. Returns 1 when it
        stopped at fill_cap makers (max_fills, or what a walked record's takers left of it)
        with more of the book still crossing it, else 0."""
        cdef uint8_t side = self.orders[t].side
        cdef int opp = 1 - side_index(side)
        cdef Side* sd = &self.sides[opp]
        cdef int32_t lv, m
        cdef uint64_t q
        cdef uint8_t stp = self.orders[t].stp
        cdef uint32_t account = self.orders[t].account
        cdef int64_t price = self.orders[t].price
        cdef uint32_t steps = 0
        cdef Level* L
        while self.orders[t].leaves:
            lv = side_best(sd)
            if lv < 0:
                break
            if not self._crosses(side, price, self.levels[lv].price, market):
                break
            if steps >= self.fill_cap:
                return 1
            steps += 1
            m = self.levels[lv].head
            if stp != STP_NONE and self.orders[m].account == account:
                self.stp_steps += 1
                if stp == STP_NEWEST:
                    self._ev_cancel(EV_CANCELLED, t, self.orders[t].leaves, R_STP)
                    self.orders[t].leaves = 0
                elif stp == STP_OLDEST:
                    self._ev_cancel(EV_CANCELLED, m, self.orders[m].leaves, R_STP)
                    self._remove(m)
                elif stp == STP_BOTH:
                    self._ev_cancel(EV_CANCELLED, m, self.orders[m].leaves, R_STP)
                    self._remove(m)
                    self._ev_cancel(EV_CANCELLED, t, self.orders[t].leaves, R_STP)
                    self.orders[t].leaves = 0
                else:
                    q = min(self.orders[m].leaves, self.orders[t].leaves)
                    self._ev_cancel(EV_CANCELLED, m, q, R_STP)
                    self._ev_cancel(EV_CANCELLED, t, q, R_STP)
                    self.orders[t].leaves -= q
                    if self.orders[m].leaves == q:
                        self._remove(m)
                    else:
                        self.orders[m].leaves -= q
                        self.levels[lv].total -= q
                        self._touch(lv)
                continue
            q = min(self.orders[m].leaves, self.orders[t].leaves)
            self.trade_id += 1
            self.orders[m].leaves -= q
            self.orders[m].filled += q
            self.orders[t].leaves -= q
            self.orders[t].filled += q
            L = &self.levels[lv]
            L.total -= q
            self._ev_trade(m, t, q)
            if self.orders[m].leaves == 0:
                # _remove takes the maker's leaves (now 0) off the level total
                self._remove(m)
            else:
                self._touch(lv)
        return 0

    # -- commands ---------------------------------------------------------------------------
    @cython.cdivision(True)
    cdef inline bint _on_tick(self, int64_t price) noexcept:
        # price > 0 here and tick_size > 0 (checked at construction): C's remainder is
        # Python's, without the sign fix-up and zero test cdivision(False) would add; and a
        # tick of 1, the usual case, needs no division at all
        return self.tick_size == 1 or <uint64_t>price % <uint64_t>self.tick_size == 0

    cdef inline uint16_t _price_code(self, int64_t price) noexcept:
        if price <= 0 or price > self.max_price:
            return C_PRICE_RANGE
        if not self._on_tick(price):
            return C_NOT_ON_TICK
        return 0

    cdef inline void _set_halted(self, bint halted) noexcept:
        self.halted = halted
        self.open_max_price = 0 if halted else self.max_price

    cdef inline int _new_order(self, const unsigned char* p) except -1:
        """A NewOrder; its level events too (the caller lists none after it)."""
        cdef uint64_t cl_id = rd64(p), qty = rd64(p + 16)
        cdef int64_t price = rdi64(p + 8)
        cdef uint32_t account = rd32(p + 24)
        cdef uint16_t code = 0
        cdef int64_t a = -1
        cdef int opp
        cdef uint64_t cslot = 0
        table_room(&self.by_client)    # so that the probe below also places the insert
        # Checks 1 to 6 of the validation order (docs/crossengine.md) in one test for the
        # common order, a GTC limit order within bounds (post-only is allowed on it), then
        # checks 7 to 10 and the test whether it rests, in order; any other order takes them
        # one by one, first failure first, in _new_order_general.
        # (open_max_price is 0 while halted: the bound test refuses every price then)
        if gtc_limit_shape(rd32(p + 28)) and p[32] <= STP_DEC \
                and 0 < price <= self.open_max_price and self._on_tick(price) \
                and self.min_qty <= qty <= self.max_qty:
            code = self._room_code(cl_id, account, &cslot)
            if not code:
                a = table_find1(&self.by_account, account)
                if a >= 0:
                    if self.by_account.slots[a].n >= self.max_account_orders:
                        code = C_ACCOUNT_LIMIT
                    else:
                        # The common case: a GTC limit order of an account the map holds
                        # that does not reach the opposite best rests (post-only or not) and
                        # changes nothing but its own level. (A new account's first order
                        # takes the general path, which enters the account.)
                        opp = SELL - p[28]      # the side is BUY or SELL here: no branch
                        if not side_reaches(&self.sides[opp], side_key(opp, price)):
                            return self._rest(p, a, cslot)
            if code:
                return self._ev_rejected(cl_id, account, code, 0)
            return self._new_order_general(p, a, True)
        return self._new_order_general(p, -1, False)

    cdef int _new_order_general(self, const unsigned char* p, int64_t a, bint checked) except -1:
        """A NewOrder that does not simply rest: checked, one that passed checks 1 to 10 in
        _new_order's test (a: its account's slot, or -1), else one to check here, first
        failure first. Out of line (two callers, not inline: gcc leaves it a call), so that
        the hot loop it would be inlined into stays small."""
        cdef uint64_t cl_id = rd64(p), qty = rd64(p + 16)
        cdef int64_t price = rdi64(p + 8)
        cdef uint32_t account = rd32(p + 24)
        cdef uint8_t side = p[28], ord_type = p[29], tif = p[30], flags = p[31], stp = p[32]
        cdef bint market = ord_type == MARKET
        cdef uint16_t code = 0
        cdef int32_t t, best_lv
        cdef int opp
        cdef bint limited
        cdef uint64_t cslot = 0
        if not checked:
            if self.halted:
                code = C_HALTED
            elif side != BUY and side != SELL:
                code = C_SIDE
            elif ord_type != MARKET and ord_type != LIMIT:
                code = C_ORD_TYPE
            elif tif != GTC and tif != IOC and tif != FOK:
                code = C_TIF
            elif stp > STP_DEC:
                code = C_STP
            elif flags & ~(F_REDUCE | F_POST):
                code = C_MALFORMED
            elif not market and self._price_code(price):
                code = self._price_code(price)
            elif qty < self.min_qty:
                code = C_QTY_MIN
            elif qty > self.max_qty:
                code = C_QTY_MAX
            elif flags & F_POST and (market or tif != GTC):
                code = C_TIF
            # checks 7 to 9 (check 10, the account's limit, counts only an order that may
            # rest: a GTC limit order, which passes checks 1 to 6 only by _new_order's test;
            # the client map has room, table_room there)
            if not code:
                code = self._room_code(cl_id, account, &cslot)
            if code:
                return self._ev_rejected(cl_id, account, code, 0)
        self._begin()
        if market:
            price = 0
        opp = 1 - side_index(side)
        if flags & F_POST and side_reaches(&self.sides[opp], side_key(opp, price)):
            return self._ev_rejected(cl_id, account, C_POST_TAKES, 0)
        if tif == FOK and not self._fok_fillable(side, price, market, qty, account, stp):
            return self._ev_rejected(cl_id, account, C_FOK, 0)
        self.order_counter += 1
        t = self._alloc_order()
        self.orders[t].order_id = self.id_base | self.order_counter
        self.orders[t].client_order_id = cl_id
        self.orders[t].account = account
        self.orders[t].side = side
        self.orders[t].price = price
        self.orders[t].leaves = qty
        self.orders[t].filled = 0
        self.orders[t].flags = flags
        self.orders[t].stp = stp
        self._ev_accepted(t, ord_type, qty, tif)
        # Most limit orders do not cross: look at the opposite best here and call _match only
        # when there is something to take.
        limited = False
        best_lv = side_best(&self.sides[opp])
        if best_lv >= 0 and self._crosses(side, price, self.levels[best_lv].price, market):
            limited = self._match(t, market)
        if self.orders[t].leaves:
            if limited:
                self._ev_cancel(EV_EXPIRED, t, self.orders[t].leaves, R_MATCH_LIMIT)
            elif not market and tif == GTC:
                self._book_link(t)
                self._index_link(t, a)
                return self._level_events()
            else:
                self._ev_cancel(EV_EXPIRED, t, self.orders[t].leaves, R_IOC)
        self._free_order(t)
        if self.n_touched:
            return self._level_events()
        return 0

    cdef inline uint16_t _room_code(self, uint64_t cl_id, uint32_t account,
                                    uint64_t* cslot) noexcept:
        """Checks 7 to 9 of the validation order (client order id in use, book full, ids
        exhausted): the first that fails, or 0. cslot: the client-map slot the probe stopped
        at, where the order's key goes in (the map does not change before it)."""
        cslot[0] = table_probe(&self.by_client, cl_id, account)
        if self.by_client.slots[cslot[0]].used:
            return C_CLID_IN_USE
        if <uint64_t>self.n_live >= self.max_orders:
            return C_BOOK_FULL
        if self.order_counter >= COUNTER_MAX:
            return C_IDS_EXHAUSTED
        return 0

    cdef inline int _rest(self, const unsigned char* p, int64_t a, uint64_t cslot) except -1:
        """A new GTC limit order (NewOrder bytes p), checked, that crosses nothing: the same
        events and state as the general path (OrderAccepted, then LevelChanged of its level),
        without its detours: no matching, no touched list, each table probed once. cslot is
        the empty client-map slot the in-use check stopped at (the map has not changed since);
        a is the account's slot in the account map (it holds the account: its list may be
        empty, head and tail -1). The state is changed first and the events written last: a
        store through the output's bytes may alias anything, so every field read after one is
        read again. The order's bytes are read from p where they are used: held in locals
        across the stretch, they were kept on the stack."""
        cdef int32_t t, lv, tail, e
        cdef int s
        cdef int64_t price
        cdef uint64_t order_id, total, k
        cdef uint32_t count
        cdef Order* o
        cdef Level* L
        cdef Slot* acct
        cdef unsigned char* q
        s = p[28] - BUY                      # side_index: BUY or SELL, checked
        price = rdi64(p + 8)
        if self.free_order < 0:
            self._grow_orders(self.orders_cap * 2)
        lv = self._find_level(s, price)
        if lv < 0:
            lv = self._new_level(s, price)
        t = self.free_order
        o = &self.orders[t]
        self.free_order = o.next
        self.order_counter += 1
        order_id = self.id_base | self.order_counter
        o.price = price
        o.leaves = rd64(p + 16)
        o.filled = 0
        o.order_id = order_id
        o.client_order_id = rd64(p)
        o.account = rd32(p + 24)
        o.side = p[28]
        memcpy(&o.flags, p + 31, 2)      # flags, stp: side by side in both (engine.pxd)
        # _append and _id_add written out on o (each would index the pool again: a store
        # through o may alias the pool's pointer, so gcc reloads it)
        L = &self.levels[lv]
        o.level = lv
        tail = L.tail
        o.prev = tail
        o.next = -1
        o.acct_next = -1
        o.id_slot = -1                   # in the id ring (below)
        o.live = 1
        if tail >= 0:
            self.orders[tail].next = t
        else:
            L.head = t
        L.tail = t
        total = L.total + rd64(p + 16)
        L.total = total
        count = L.count + 1
        L.count = count
        # the indexes, as _index_link enters them; the id ring as _id_add does
        k = order_id & self.ring_mask
        e = self.id_ring[k]
        if e >= 0:
            self._id_spill(e)
        self.id_ring[k] = t
        table_put_at(&self.by_client, cslot, rd64(p), rd32(p + 24), t, 0)
        acct = &self.by_account.slots[a]
        tail = acct.v2
        o.acct_prev = tail
        if tail >= 0:
            self.orders[tail].acct_next = t
        else:
            acct.v1 = t
        acct.v2 = t
        acct.n += 1
        o.acct_slot = <int32_t>a
        self.n_live += 1
        self.route |= <uint64_t>1 << acct.shard
        # OrderAccepted (as _ev_accepted writes it) and the LevelChanged after it: 63 bytes,
        # within the DISPATCH_ROOM reserved before the command
        q = self.out.w
        self.out.w = q + 41 + 22
        q[0] = EV_ACCEPTED
        wr64(q + 1, order_id)
        memcpy(q + 9, p, 8)              # client order id
        # account, side, order type (LIMIT: checked): p's 24..29 are q's 17..22; the 8-byte
        # copy's last two bytes are overwritten by price and qty (fewer, wider moves)
        memcpy(q + 17, p + 24, 8)
        memcpy(q + 23, p + 8, 16)        # price, qty
        memcpy(q + 39, p + 30, 2)        # time in force (GTC: checked), flags
        q[41] = EV_LEVEL
        q[42] = p[28]
        memcpy(q + 43, p + 8, 8)         # price
        wr64(q + 51, total)
        wr32(q + 59, count)
        return 0

    cdef inline int32_t _find(self, uint64_t order_id, uint64_t cl_id, uint32_t account) noexcept:
        cdef int64_t s
        cdef int32_t i
        if order_id:
            i = self._id_find(order_id)
            if i < 0:
                return -1
            if account and self.orders[i].account != account:
                return -1
            return i
        s = table_find(&self.by_client, cl_id, account)
        return self.by_client.slots[s].v1 if s >= 0 else -1

    cdef inline int _cancel(self, const unsigned char* p) except -1:
        cdef uint64_t order_id = rd64(p), cl_id = rd64(p + 8), total
        cdef uint32_t account = rd32(p + 16), count
        cdef int32_t i, lv
        cdef int64_t cls, a
        cdef Order* o
        cdef Level* L
        cdef unsigned char* q
        # Find the order and its client-map slot, each index probed once (the general path,
        # _find then _remove, probes the map it found the order in twice).
        if order_id:
            i = self._id_find(order_id)
            if i < 0:
                return self._ev_rejected(cl_id, account, C_UNKNOWN, order_id)
            o = &self.orders[i]
            if account and o.account != account:
                return self._ev_rejected(cl_id, account, C_UNKNOWN, order_id)
            cls = table_find(&self.by_client, o.client_order_id, o.account)
        else:
            cls = table_find(&self.by_client, cl_id, account)
            if cls < 0:
                return self._ev_rejected(cl_id, account, C_UNKNOWN, order_id)
            i = self.by_client.slots[cls].v1
            o = &self.orders[i]
        if cls < 0:
            raise RuntimeError(f"crossengine: index lost order id {o.order_id}")
        # _remove without the touched list: its one level's event is written here. The state
        # changes first and the events are written last (a store through the output's bytes
        # may alias anything: a field read after one is read again).
        lv = o.level
        L = &self.levels[lv]
        fifo_unlink(self.orders, o, L)
        total = L.total                  # 0 and 0 when the level is gone
        count = L.count
        self._id_del(i)
        table_del_at(&self.by_client, <uint64_t>cls)
        a = self._account_unlink(i)
        self._free_order(i)              # its fields stay until the slot is taken again
        if count == 0:
            self._drop_level(side_index(o.side), lv)
        self.route |= <uint64_t>1 << self.by_account.slots[a].shard
        # OrderCancelled (as _ev_cancel writes it) and the LevelChanged after it: 52 bytes,
        # within the DISPATCH_ROOM reserved before the command
        q = self.out.w
        self.out.w = q + 30 + 22
        q[0] = EV_CANCELLED
        wr64(q + 1, o.order_id)
        wr64(q + 9, o.client_order_id)
        wr32(q + 17, o.account)
        wr64(q + 21, o.leaves)
        q[29] = R_CLIENT
        q[30] = EV_LEVEL
        q[31] = o.side
        wri64(q + 32, o.price)
        wr64(q + 40, total)
        wr32(q + 48, count)
        return 0

    cdef int _amend(self, const unsigned char* p) except -1:
        cdef uint64_t order_id = rd64(p), cl_id = rd64(p + 8), qty = rd64(p + 28)
        cdef uint32_t account = rd32(p + 16)
        cdef int64_t price = rdi64(p + 20)
        cdef int32_t i
        cdef uint64_t total, new_total, new_leaves
        cdef int64_t new_price
        cdef uint16_t code
        cdef int opp
        if self.halted:
            return self._ev_rejected(cl_id, account, C_HALTED, order_id)
        i = self._find(order_id, cl_id, account)
        if i < 0:
            return self._ev_rejected(cl_id, account, C_UNKNOWN, order_id)
        new_price = price if price else self.orders[i].price
        total = self.orders[i].leaves + self.orders[i].filled
        new_total = qty if qty else total
        code = self._price_code(new_price)
        if not code:
            # The bounds apply to a new total; the order's own ("same": 0, or sent again)
            # may be below min_qty, cut by self-trade prevention's decrement.
            if new_total != total and new_total > self.max_qty:
                code = C_QTY_MAX
            elif new_total != total and new_total < self.min_qty:
                code = C_QTY_MIN
            elif new_total <= self.orders[i].filled:
                code = C_AMEND_FILLED
            elif new_price == self.orders[i].price and new_total == total:
                code = C_AMEND_NOTHING
        opp = 1 - side_index(self.orders[i].side)
        if not code and self.orders[i].flags & F_POST \
                and side_reaches(&self.sides[opp], side_key(opp, new_price)):
            code = C_POST_TAKES
        if code:
            return self._ev_rejected(self.orders[i].client_order_id, self.orders[i].account, code,
                                     self.orders[i].order_id)
        new_leaves = new_total - self.orders[i].filled
        if new_price == self.orders[i].price and new_leaves < self.orders[i].leaves:
            self.levels[self.orders[i].level].total -= self.orders[i].leaves - new_leaves
            self.orders[i].leaves = new_leaves
            self._touch(self.orders[i].level)
            return self._ev_amended(i, new_total, 1)
        self._book_unlink(i)
        self.orders[i].price = new_price
        self.orders[i].leaves = new_leaves
        self._ev_amended(i, new_total, 0)
        if self._match(i, False) and self.orders[i].leaves:
            # stopped at max_fills with the book still crossing it: it cannot rest
            self._ev_cancel(EV_EXPIRED, i, self.orders[i].leaves, R_MATCH_LIMIT)
            self.orders[i].leaves = 0
        if self.orders[i].leaves:
            self._book_link(i)
        else:
            self._index_unlink(i)
            self._free_order(i)
        return 0

    cdef int _cancel_all(self, uint32_t account, uint8_t side, bint everyone) except -1:
        """One MassCancelled event, whatever the count: the TradingEngine knows which of its
        orders it covers (those accepted with ids up to the event's last id). CancelAll then
        lists the levels it changed (at most max_account_orders); MassCancel lists none, the
        book being empty after it."""
        cdef int32_t i, nxt, lv
        cdef int64_t a
        cdef uint64_t count = 0
        cdef int s
        if everyone:
            # the whole book, level by level from the best (the order is not observable:
            # one event, no levels listed)
            for s in range(2):
                lv = side_best(&self.sides[s])
                while lv >= 0:
                    self._remove(self.levels[lv].head)
                    count += 1
                    lv = side_best(&self.sides[s])
            i = -1
        else:
            if side != 0 and side != BUY and side != SELL:
                return self._ev_rejected(0, account, C_SIDE, 0)
            a = table_find(&self.by_account, account, 0)
            i = self.by_account.slots[a].v1 if a >= 0 else -1
        while i >= 0:
            nxt = self.orders[i].acct_next
            if side == 0 or self.orders[i].side == side:
                self._remove(i)
                count += 1
            i = nxt
        self._ev_mass(SCOPE_BOOK if everyone else SCOPE_ACCOUNT, 0 if everyone else account,
                      side, R_ADMIN if everyone else R_MASS, count)
        if everyone:
            self.n_touched = 0
        return 0

    cdef inline void _begin(self) noexcept:
        """A command that may touch levels starts here: a new command number for the levels'
        marks, an empty touched list. (A resting order and a cancel touch none and skip it:
        the marks of one command differ from every later command's all the same.)"""
        self.command_no += 1
        self.n_touched = 0

    cdef inline int _dispatch(self, uint16_t kind, const unsigned char* p, Py_ssize_t n,
                              const unsigned char* h) except -1:
        """Apply one command of the record whose header is h (its source is read there, by
        the operator's commands only: an argument read before the call is a load and a
        register held across every command)."""
        # A new order starts the touched list itself if it takes the general path, and lists
        # its own level events; a cancel writes its one level event and lists none.
        if kind == K_NEW:
            if n != 33:
                return self._ev_rejected(0, 0, C_MALFORMED, 0)
            return self._new_order(p)
        if kind == K_CANCEL:
            if n != 20:
                return self._ev_rejected(0, 0, C_MALFORMED, 0)
            return self._cancel(p)
        self._begin()
        if kind == K_AMEND:
            if n != 36:
                return self._ev_rejected(0, 0, C_MALFORMED, 0)
            self._amend(p)
        elif kind == K_CANCEL_ALL:
            if n != 5:
                return self._ev_rejected(0, 0, C_MALFORMED, 0)
            self._cancel_all(rd32(p), p[4], False)
        elif (kind == K_MASS or kind == K_HALT or kind == K_RESUME) \
                and rd32(h + 24) < OPERATOR_SOURCE_MIN:
            # the operator's commands, from anyone else: refused before any other check
            return self._ev_rejected(0, 0, C_NOT_OPERATOR, 0)
        elif kind == K_MASS:
            if n != 0:
                return self._ev_rejected(0, 0, C_MALFORMED, 0)
            self._cancel_all(0, 0, True)
        elif kind == K_HALT or kind == K_RESUME:
            if n != 0:
                return self._ev_rejected(0, 0, C_MALFORMED, 0)
            self._set_halted(kind == K_HALT)
            return self._ev_byte(EV_HALTED if kind == K_HALT else EV_RESUMED)
        elif kind == K_TICK:
            return 0
        else:
            return self._ev_rejected(0, 0, C_MALFORMED, 0)
        if self.n_touched:
            return self._level_events()
        return 0

    # -- records: a command, or a TradingEngine output payload -------------------------------
    cdef inline bint _is_te(self, uint32_t source) noexcept:
        cdef int32_t k
        for k in range(self.n_te):
            if self.te_src[k] == source:
                return True
        return False

    cdef inline bint _is_liq(self, uint32_t source) noexcept:
        cdef int32_t k
        for k in range(self.n_liq):
            if self.liq_src[k] == source:
                return True
        return False

    cdef inline int _record(self, const unsigned char* h, const unsigned char* p, Py_ssize_t n,
                            bint walks, uint16_t kind) except -1:
        """The events of one input record (header h, payload p[0:n]): a command, or (from a
        te or liq source) the commands for this symbol that a TradingEngine or LiqEngine
        output payload carries. walks: whether the engine has te or liq sources at all (its
        caller tests that once a frame, not once a record); kind: the record's kind, read
        from h by the caller."""
        if walks:
            if self._walk(h, p, n):
                return 0
            if kind != K_TICK and rd32(h + 24) < OPERATOR_SOURCE_MIN:
                # In a cluster (te or liq sources) an order reaches the book only through a
                # TradingEngine or the LiqEngine, which checked its risk: a command put
                # straight into in.ce.SYM is the operator's (`seqex submit --bypass-risk`),
                # from any other source it is refused and changes nothing. (A producer key
                # may append to any in stream with its source ids: the gateway's or the
                # oracle's key could place an order on any account's name, with no margin.)
                return self._ev_rejected(0, 0, C_NOT_OPERATOR, 0)
        return self._dispatch(kind, p, n, h)

    cdef int _walk(self, const unsigned char* h, const unsigned char* p,
                   Py_ssize_t n) except -1:
        """1 if the record is from a te or liq source: its payload applied (walked once to
        check it and once to apply it, so a malformed one changes nothing); else 0."""
        cdef uint32_t source = rd32(h + 24)
        # One output record answers the whole record, whatever the number of takers in it:
        # they share max_fills matching steps (fill_cap), so that answer, and the
        # TradingEngine's report of it, stay as bounded as one taker's (codec.py, Bounds).
        # (a walk that raises leaves fill_cap as it was: every public apply sets it again)
        if self.n_te and self._is_te(source):
            self._walk_te(h, p, n, False)
            self.walk_steps0 = self.trade_id + self.stp_steps
            self._walk_te(h, p, n, True)
            self.fill_cap = self.max_fills
            return 1
        if self.n_liq and self._is_liq(source):
            self._walk_liq(h, p, n, False)
            self.walk_steps0 = self.trade_id + self.stp_steps
            self._walk_liq(h, p, n, True)
            self.fill_cap = self.max_fills
            return 1
        return 0

    cdef void _walk_cap(self) noexcept:
        """fill_cap for the next command of the record being walked: what its takers so far
        left of max_fills."""
        cdef uint64_t used = self.trade_id + self.stp_steps - self.walk_steps0
        self.fill_cap = self.max_fills - <uint32_t>used if used < self.max_fills else 0

    cdef int _walk_liq(self, const unsigned char* h, const unsigned char* p, Py_ssize_t n,
                  bint apply) except -1:
        """Walk a LiqEngine output payload event by event, checking every size against n;
        with `apply`, dispatch each CrossEngineCommand for this symbol."""
        cdef Py_ssize_t off = 0, size, tail
        cdef uint32_t source = rd32(h + 24)
        cdef uint64_t seq = rd64(h)
        cdef uint8_t t
        while off < n:
            t = p[off]
            size = liq_event_size[t]
            if size == 0:
                self._te_mismatch(seq, source, off, f"unknown event type {t}", "liq")
            if n - off < size:
                self._te_mismatch(seq, source, off, f"event type {t} truncated ({n - off} of "
                                                    f"{size} bytes)", "liq")
            tail = rd16(p + off + 7) if t == LIQ_CE_COMMAND else 0
            if n - off - size < tail:
                self._te_mismatch(seq, source, off, f"event type {t} truncated ({n - off} of "
                                                    f"{size + tail} bytes)", "liq")
            if apply and t == LIQ_CE_COMMAND and rd32(p + off + 1) == self.symbol_id:
                buf_reserve(&self.out, DISPATCH_ROOM)
                self._walk_cap()
                self._dispatch(rd16(p + off + 5), p + off + size, tail, h)
            off += size + tail
        return 0

    cdef int _walk_te(self, const unsigned char* h, const unsigned char* p, Py_ssize_t n,
                  bint apply) except -1:
        """Walk a TradingEngine output payload event by event, checking every size against n;
        with `apply`, dispatch each CrossEngineCommand for this symbol."""
        cdef Py_ssize_t off = 0, size, tail
        cdef uint32_t source = rd32(h + 24)
        cdef uint64_t seq = rd64(h)
        cdef uint8_t t
        cdef uint16_t template
        while off < n:
            t = p[off]
            size = te_event_size[t]
            if size == 0:
                self._te_mismatch(seq, source, off, f"unknown event type {t}")
            if n - off < size:
                self._te_mismatch(seq, source, off, f"event type {t} truncated ({n - off} of "
                                                    f"{size} bytes)")
            tail = 0   # the bytes after the fixed part: a command, a session message's block
            if t == TE_CE_COMMAND:
                tail = rd16(p + off + 7)
            elif t == TE_SESSION_MESSAGE:
                template = rd16(p + off + 13)
                tail = te_session_block[template] if template < 256 else 0
                if tail == 0:
                    self._te_mismatch(seq, source, off, f"SessionMessage of unknown template "
                                                        f"{template}")
            if n - off - size < tail:
                self._te_mismatch(seq, source, off, f"event type {t} truncated ({n - off} of "
                                                    f"{size + tail} bytes)")
            if apply and t == TE_CE_COMMAND and rd32(p + off + 1) == self.symbol_id:
                buf_reserve(&self.out, DISPATCH_ROOM)
                self._walk_cap()
                self._dispatch(rd16(p + off + 5), p + off + size, tail, h)
            off += size + tail
        return 0

    cdef int _te_mismatch(self, uint64_t seq, uint32_t source, Py_ssize_t off, str what,
                          str which="te") except -1:
        engine = "LiqEngine" if which == "liq" else "TradingEngine"
        raise RuntimeError(f"crossengine: record seq {seq} from source {source} (a {which}_sources "
                           f"stream): {what} at offset {off} of its {engine} payload; this "
                           f"engine and that {engine} disagree on the layout (a deployment "
                           f"mismatch)")

    cdef inline uint64_t _bit(self, uint32_t account) noexcept:
        return <uint64_t>1 << self._shard(account)

    cdef inline uint32_t _shard(self, uint32_t account) noexcept:
        """The account's route bit: account % n_shards, or 63 (ROUTE_LIQ) for LIQ_ACCOUNT,
        which belongs to no shard. (The account map keeps it per account, Slot.shard: a
        resting order and a cancel, which hold the account's slot, read it there.)"""
        if account == LIQ_ACCOUNT:
            return 63
        # unsigned, and n_shards >= 1 (checked at construction): no zero test needed
        # account % n_shards by two multiplies, not a division of ~25 cycles
        return ce_fastmod_u32(account, self.shard_m, self.n_shards)

    # -- the public face --------------------------------------------------------------------
    def apply(self, uint64_t seq, uint64_t ts_ns, uint16_t kind, const unsigned char[::1] payload,
              uint32_t source=_sources.OPERATOR_SOURCE):
        """The events (bytes) of one command from `source` (tools and tests; the replica host
        calls apply_frame, which takes each record's own source)."""
        cdef Py_ssize_t n = payload.shape[0]
        cdef const unsigned char* p = &payload[0] if n else <const unsigned char*>b""
        cdef unsigned char h[HDR]          # the header the command would have in a frame
        memset(h, 0, HDR)
        wr64(h, seq)
        wr64(h + 8, ts_ns)
        wr32(h + 24, source)
        wr16(h + 32, kind)
        self.fill_cap = self.max_fills
        self.out.w = self.out.data
        buf_reserve(&self.out, DISPATCH_ROOM)
        self._record(h, p, n, (self.n_te | self.n_liq) != 0, kind)
        return PyBytes_FromStringAndSize(<char*>self.out.data, self.out.w - self.out.data)

    def apply_frame(self, const unsigned char[::1] frame):
        """Apply every record of a sequenced frame; return the output frame: one record per
        input record, same seq, ts, source, source_seq, epoch and kind, payload = events,
        route = the shards its events concern. The frame is checked first (mq's FrameError,
        before any record applies)."""
        cdef Py_ssize_t n = frame.shape[0]
        cdef const unsigned char* p = &frame[0] if n else NULL
        cdef uint64_t first
        scan_frame(p, n, &first)
        self.fill_cap = self.max_fills    # (a walk that raised in an earlier call left it)
        return self._apply_records(p, n)

    def apply_scanned_frame(self, const unsigned char[::1] frame):
        """apply_frame for a frame that its caller has just checked with mq.record.scan (the
        replica host's subscriber scans every frame it delivers, live or replayed): the same
        outputs and state, without walking the frame a second time for the check. Reads stay
        within the frame whatever it holds (a record running past its end raises FrameError),
        but a frame that scan would refuse is not refused before its first records apply."""
        cdef Py_ssize_t n = frame.shape[0]
        if n == 0:
            raise FrameError("empty frame")
        self.fill_cap = self.max_fills    # (a walk that raised in an earlier call left it)
        return self._apply_records(&frame[0], n)

    cdef int _grow_out(self, Py_ssize_t n) except -1:
        """buf_grow of the output, out of line: called with self, the record loop holds no
        pointer to self.out for it."""
        return buf_grow(&self.out, n)

    cdef inline const unsigned char* _apply_record(self, const unsigned char* r,
                                                   const unsigned char* end,
                                                   const unsigned char* p,
                                                   bint walks) except NULL:
        """Apply the record at r (its header within the frame, which ends at end; p: the
        frame, for the messages) and write its output record; the next record."""
        cdef uint32_t length = rd32(r + 34)
        cdef uint16_t kind
        cdef Py_ssize_t plen
        cdef unsigned char* q
        if <Py_ssize_t>length > end - r - HDR:
            raise FrameError(f"record at offset {r - p} runs past the frame")
        # the header, and room for the events of a resting order or a cancel
        # (DISPATCH_ROOM: they write them without a reserve of their own)
        if <size_t>self.out.w + (HDR + DISPATCH_ROOM) > <size_t>self.out.end:
            self._grow_out(HDR + DISPATCH_ROOM)
        q = self.out.w
        self.out.rec = q                 # where the header is after the record (a grow moves it)
        # seq .. epoch, then the kind: read once for the copy and the dispatch (after a store
        # through the output's bytes it was read again); the payload's length and the route
        # are written after the record
        kind = rd16(r + 32)
        memcpy(q, r, 32)
        wr16(q + 32, kind)
        self.out.w = q + HDR
        self.route = 0
        self._record(r, r + HDR, length, walks, kind)
        q = self.out.rec
        plen = self.out.w - q - HDR
        if plen > MAX_PAYLOAD:
            raise RuntimeError(f"crossengine: the output of record seq {rd64(r)} "
                               f"from source {rd32(r + 24)} exceeds one record "
                               f"({plen} bytes)")
        # (each field read once, before the stores: after one it would be read again)
        wr32(q + 34, <uint32_t>plen)
        wr64(q + ROUTE, self.route)
        return r + HDR + <Py_ssize_t>rd32(r + 34)     # its length read again, not held

    cdef object _apply_records(self, const unsigned char* p, Py_ssize_t n):
        cdef Py_ssize_t cap
        cdef const unsigned char* r = p
        cdef const unsigned char* end = p + n
        cdef uint32_t length
        cdef Buf keep = self.out
        cdef bint walks = (self.n_te | self.n_liq) != 0
        # The output frame is written straight into the bytes object returned (no copy at the
        # end): sized as the last frame's output per input byte would want it, with a quarter
        # to spare (untouched pages cost nothing; the final resize gives them back), doubled
        # if a record needs more. self.out.owner holds the one reference while it grows
        # (_PyBytes_Resize wants it alone); the finally drops it after the result took its own.
        cap = n * max(self.out_per_in16, 20) // 16 + (n >> 2) + 4096
        buf = PyBytes_FromStringAndSize(NULL, cap)
        Py_INCREF(buf)
        self.out.owner = <PyObject*>buf
        self.out.data = <unsigned char*>PyBytes_AS_STRING(buf)
        self.out.w = self.out.data
        self.out.end = self.out.data + cap
        self.out.rec = NULL
        buf = None
        try:
            # The loop's test is also the header's bounds check (a header cut short ends it,
            # and the test after the loop raises). After scan_frame neither check fails; they
            # keep apply_scanned_frame's reads in the frame whatever it was given.
            # The record walked by a pointer, its end the frame's: two registers across the
            # record, where the frame, an offset, n and the length were four or five. Two
            # copies of the loop, one for an engine without te or liq sources (no test a
            # record) and one with them.
            if walks:
                while end - r >= HDR:
                    r = self._apply_record(r, end, p, True)
            else:
                while end - r >= HDR:
                    r = self._apply_record(r, end, p, False)
            if r != end:
                raise FrameError(f"truncated record header at offset {r - p}")
            # at most 4 bytes out per byte in ahead of time; a rarer frame grows instead
            self.out_per_in16 = min((self.out.w - self.out.data) * 16 // n + 1, 64)
            _PyBytes_Resize(&self.out.owner, self.out.w - self.out.data)
            result = <object>self.out.owner
        finally:
            Py_XDECREF(self.out.owner)
            self.out = keep
        return result

    def __len__(self):
        return self.n_live

    @property
    def te_sources(self):
        """The sources whose records are TradingEngine output payloads, as configured."""
        return [self.te_src[k] for k in range(self.n_te)]

    @property
    def liq_sources(self):
        """The sources whose records are LiqEngine output payloads, as configured."""
        return [self.liq_src[k] for k in range(self.n_liq)]

    def book(self, depth=0):
        """{'bids': [(price, total, count)], 'asks': [...]}, best first, at most depth levels a
        side (0: all; for tools and tests)."""
        out = {}
        cdef int s
        depth = operator.index(depth)       # any Python int, as the reference takes it
        if depth < 0:
            raise ValueError(f"book depth {depth}: 0 (every level) or a positive count")
        # no side holds 2**31 levels: a larger depth is all of them (int32_t below)
        cdef int32_t d = min(depth, 0x7FFFFFFF)
        cdef int32_t k, lv
        for s, name in ((0, "bids"), (1, "asks")):
            rows = []
            for lv in self._level_list(s, d):
                rows.append((self.levels[lv].price, self.levels[lv].total, self.levels[lv].count))
            out[name] = rows
        return out

    cdef list _level_list(self, int s, int32_t depth=0):
        """The side's level indices, best first (at most depth of them; 0: all)."""
        cdef Side* sd = &self.sides[s]
        cdef int32_t lv
        cdef Walk w
        out = []
        walk_start(sd, &w)
        lv = self._walk_next(s, &w)
        while lv >= 0:
            if depth and len(out) >= depth:
                return out
            out.append(lv)
            lv = self._walk_next(s, &w)
        return out

    # -- state ------------------------------------------------------------------------------
    def snapshot(self):
        """Canonical bytes (crossengine.reference.ReferenceEngine.snapshot has the same)."""
        fields = (self.symbol_id, self.tick_size, self.min_qty, self.max_qty, self.max_price,
                  self.max_orders, self.max_fills, self.max_account_orders, self.order_counter,
                  self.trade_id, int(self.halted), self.n_live, self.n_shards, self.n_te)
        if self.n_liq:
            head = (SNAP_HEADER_V4.pack(MAGIC, VERSION_LIQ, *fields, self.n_liq)
                    + struct.pack(f"<{self.n_te}I", *self.te_sources)
                    + struct.pack(f"<{self.n_liq}I", *self.liq_sources))
        else:
            head = (SNAP_HEADER.pack(MAGIC, VERSION, *fields)
                    + struct.pack(f"<{self.n_te}I", *self.te_sources))
        cdef Py_ssize_t hl = len(head), off
        cdef bytes data = PyBytes_FromStringAndSize(NULL, hl + <Py_ssize_t>self.n_live * SNAP_ORDER)
        cdef unsigned char* q = <unsigned char*>PyBytes_AS_STRING(data)
        cdef int s
        cdef int32_t i, lv
        cdef Order* o
        cdef Side* sd
        cdef Walk w
        memcpy(q, <const char*>head, hl)
        off = hl
        for s in range(2):
            sd = &self.sides[s]
            walk_start(sd, &w)
            lv = self._walk_next(s, &w)
            while lv >= 0:
                i = self.levels[lv].head
                while i >= 0:
                    o = &self.orders[i]
                    wr64(q + off, o.order_id)
                    wr64(q + off + 8, o.client_order_id)
                    wr32(q + off + 16, o.account)
                    q[off + 20] = o.side
                    wri64(q + off + 21, o.price)
                    wr64(q + off + 29, o.leaves)
                    wr64(q + off + 37, o.filled)
                    q[off + 45] = o.flags
                    q[off + 46] = o.stp
                    off += SNAP_ORDER
                    i = o.next
                lv = self._walk_next(s, &w)
        if off != len(data):
            raise RuntimeError("crossengine: live order count disagrees with the book")
        return data

    @classmethod
    def restore(cls, data, bint check=False):
        """The engine a snapshot describes, verified while it is built, in one pass over the
        orders: each order has a side, a price in range and on the tick at a new level, 1 ..
        max_qty lots (leaves + filled), an id this symbol issued and no other order has, and
        a client order id its account uses once; the levels come in canonical order (buys
        then sells, each side best first, so none twice) and the book is not crossed; at most
        max_orders orders, no account over max_account_orders; halted 0 or 1, version 4 only
        with liq_sources (the bytes snapshot() writes, no other). A snapshot that breaks any of
        these raises ValueError saying which and at which order. Level totals and counts, the FIFO links, the id maps and the
        accounts' id-ordered lists are built from the orders so checked, and cannot disagree
        with them. With check, check_invariants() then walks the built engine as well (a
        second pass, for the tests). A version 1 or 2 snapshot is upgraded first
        (codec.upgrade_snapshot)."""
        data = _codec.upgrade_snapshot(data)
        cdef const unsigned char[::1] view = data
        if len(data) < SNAP_HEADER.size:
            raise ValueError("CrossEngine snapshot is too short")
        (magic, version, symbol_id, tick, min_qty, max_qty, max_price, max_orders, max_fills,
         max_account_orders, counter, trade_id, halted, n, n_shards,
         n_te) = SNAP_HEADER.unpack_from(data)
        n_liq, header = 0, SNAP_HEADER.size
        if magic == MAGIC and version == VERSION_LIQ and len(data) >= SNAP_HEADER_V4.size:
            n_liq, header = SNAP_HEADER_V4.unpack_from(data)[16], SNAP_HEADER_V4.size
        elif magic != MAGIC or version != VERSION:
            raise ValueError("not a CrossEngine snapshot of this version")
        cdef Py_ssize_t head = header + 4 * (n_te + n_liq)
        if len(data) != head + n * SNAP_ORDER:
            raise ValueError("CrossEngine snapshot has the wrong length")
        te_sources = struct.unpack_from(f"<{n_te}I", data, header)
        liq_sources = struct.unpack_from(f"<{n_liq}I", data, header + 4 * n_te)
        if counter > _codec.ORDER_COUNTER_MAX:
            raise ValueError("CrossEngine snapshot has an order counter past the id space")
        if trade_id >= 1 << 63:
            # a live engine numbers trades from 1 and cannot come near 2**63 (292 years at a
            # billion trades a second); a trade id there is corrupt, and at 2**64 - 1 the next
            # trade's id would wrap
            raise ValueError("CrossEngine snapshot has a trade id past the trade id space")
        if halted > 1 or (version == VERSION_LIQ and n_liq == 0):
            # snapshot() writes halted as 0 or 1, and version 4 only with liq_sources: any
            # other bytes would restore to an engine whose snapshot (and state hash) is not them
            raise ValueError(f"CrossEngine snapshot is not canonical (halted {halted}, version "
                             f"{version} with {n_liq} liq_sources)")
        cdef Py_ssize_t n_orders = n
        if n > max_orders:
            raise ValueError(f"CrossEngine snapshot holds {n} orders, more than max_orders "
                             f"({max_orders})")
        # Every structure is sized once, up front, from the header's order count, with a
        # quarter of headroom: the replay that follows a restore must not start by doubling a
        # pool of a million orders or rehashing its indexes. Only the level pool (its count is
        # not in the header) and the account map (sized once the accounts are counted) are not.
        # Never fewer than n: the cap alone left a pool smaller than a snapshot of more than
        # ~859 million orders (max_orders allows up to 2**31 - 1), and the orders past it were
        # written after the pool's end.
        cdef Py_ssize_t room = max(n, min(n + n // 4 + 1024, 1 << 30))
        cdef CrossEngine eng = cls(symbol_id, tick, min_qty, max_qty, max_price, max_orders,
                                   16, 1 << 12, max_fills,
                                   max_account_orders, te_sources, n_shards, liq_sources)
        eng.order_counter = counter
        eng.trade_id = trade_id
        eng._set_halted(halted != 0)
        cdef Order* pool = <Order*>malloc(room * sizeof(Order))
        if pool == NULL:
            raise MemoryError()
        populate(pool, room * sizeof(Order))
        free(eng.orders)
        eng.orders = pool
        eng.orders_cap = <int32_t>room
        table_sized(&eng.by_id, room)
        table_sized(&eng.by_client, room)
        cdef uint64_t id_cap = eng.by_id.mask + 1
        cdef Py_ssize_t k, n_lv = 0, first_sell = -1, accounts = 0
        cdef int32_t i, lv = -1, prev
        cdef int64_t a = -1, slot
        cdef Order* o
        cdef const unsigned char* q = &view[0] + head
        cdef uint8_t side, last_side = 0
        cdef int64_t price, last_price = 0
        cdef uint64_t leaves, filled, order_id, issued_from = (<uint64_t>symbol_id << 40) + 1
        cdef uint64_t c_max_qty = max_qty, c_counter = counter
        cdef AcctIdx* ids = <AcctIdx*>malloc(max(1, n_orders) * sizeof(AcctIdx))
        # the levels in snapshot order: buys best first, then sells best first
        cdef int32_t* snap_lv = <int32_t*>malloc(max(1, n_orders) * sizeof(int32_t))
        if ids == NULL or snap_lv == NULL:
            free(ids)
            free(snap_lv)
            raise MemoryError()
        populate(ids, n_orders * sizeof(AcctIdx))
        try:
            for k in range(n_orders):
                order_id = rd64(q)
                side = q[20]
                price = rdi64(q + 21)
                leaves = rd64(q + 29)
                filled = rd64(q + 37)
                if side != BUY and side != SELL:
                    raise ValueError(f"CrossEngine snapshot: order {k} has no side ({side})")
                if leaves == 0 or leaves > c_max_qty or filled > c_max_qty - leaves:
                    raise ValueError(f"CrossEngine snapshot: order {k} has {leaves} lots open "
                                     f"and {filled} filled (open 1 .. max_qty {max_qty}, "
                                     f"open + filled at most max_qty)")
                if order_id < issued_from or order_id - issued_from >= c_counter:
                    raise ValueError(f"CrossEngine snapshot: order {k} has id {order_id}, "
                                     f"not one this symbol issued (counter {counter})")
                if q[46] > STP_DEC or q[45] & ~(F_REDUCE | F_POST):
                    raise ValueError(f"CrossEngine snapshot: order {k} has stp {q[46]} and "
                                     f"flags {q[45]}")
                if lv < 0 or price != last_price or side != last_side:
                    # A new level: strictly after the last one in canonical order, so that no
                    # (side, price) opens two levels and each side's index gets them sorted.
                    if lv >= 0 and (side < last_side or (side == last_side and (
                            price >= last_price if side == BUY else price <= last_price))):
                        raise ValueError(f"CrossEngine snapshot: the level of order {k} "
                                         f"({chr(side)} at {price}) is out of order (after "
                                         f"{chr(last_side)} at {last_price})")
                    if eng._price_code(price):
                        raise ValueError(f"CrossEngine snapshot: order {k} has price {price}, "
                                         f"out of range or off the tick")
                    if side == SELL and first_sell < 0:
                        first_sell = n_lv
                    lv = eng._alloc_level(side_index(side), price)
                    snap_lv[n_lv] = lv
                    n_lv += 1
                    last_price = price
                    last_side = side
                # orders[k] is the k-th order of the snapshot: the pool fills in file order
                o = &eng.orders[k]
                o.order_id = order_id
                o.client_order_id = rd64(q + 8)
                o.account = rd32(q + 16)
                o.side = side
                o.price = price
                o.leaves = leaves
                o.filled = filled
                o.flags = q[45]
                o.stp = q[46]
                eng._append(<int32_t>k, lv)
                if k + PREFETCH_AHEAD < n_orders:
                    # the slots the order PREFETCH_AHEAD further on will probe
                    prefetch_w(&eng.by_id.slots[slot_hash(
                        &eng.by_id, rd64(q + PREFETCH_AHEAD * SNAP_ORDER), 0)], 1, 1)
                    prefetch_w(&eng.by_client.slots[slot_hash(
                        &eng.by_client, rd64(q + PREFETCH_AHEAD * SNAP_ORDER + 8),
                        rd32(q + PREFETCH_AHEAD * SNAP_ORDER + 16))], 1, 1)
                # every restored order in the id map (its insert refuses an id twice); the id
                # ring starts empty, and the orders entered from now on take it
                slot = table_put_new(&eng.by_id, order_id, 0, <int32_t>k, 0)
                if slot < 0:
                    raise ValueError(f"CrossEngine snapshot: order id {order_id} is there "
                                     f"twice (order {k})")
                o.id_slot = <int32_t>slot
                if table_put_new(&eng.by_client, o.client_order_id, o.account, <int32_t>k,
                                 0) < 0:
                    raise ValueError(f"CrossEngine snapshot: account {o.account} has client "
                                     f"order id {o.client_order_id} twice (order {k})")
                ids[k].order_id = order_id
                ids[k].account = o.account
                ids[k].idx = <int32_t>k
                q += SNAP_ORDER
            eng.n_live = <int32_t>n_orders
            # the rest of the pool is free, lowest index first (as a fresh pool's)
            eng.free_order = <int32_t>n_orders if n_orders < room else -1
            for k in range(n_orders, room):
                eng.orders[k].live = 0
                eng.orders[k].next = <int32_t>(k + 1) if k + 1 < room else -1
            if first_sell > 0 and eng.levels[snap_lv[0]].price >= \
                    eng.levels[snap_lv[first_sell]].price:
                raise ValueError(f"CrossEngine snapshot: the book is crossed (bid "
                                 f"{eng.levels[snap_lv[0]].price}, ask "
                                 f"{eng.levels[snap_lv[first_sell]].price})")
            # Into each side worst first (ascending side tick): walking backwards, a new rung
            # is appended at the end of the rung index's last block, as a bulk load.
            lmap_reserve(&eng.sides[0], first_sell if first_sell >= 0 else n_lv)
            lmap_reserve(&eng.sides[1], n_lv - first_sell if first_sell >= 0 else 0)
            for k in range(n_lv - 1, -1, -1):
                lv = snap_lv[k]
                eng._ladder_link(side_index(eng.levels[lv].side), lv)
            # The accounts' lists in order-id order: sorted by (account, id), each account's
            # orders are one run, linked in one sequential pass.
            sort_by_account(ids, n_orders)
            for k in range(n_orders):
                if k == 0 or ids[k].account != ids[k - 1].account:
                    accounts += 1
            table_sized(&eng.by_account, accounts)
            for k in range(n_orders):
                i = ids[k].idx
                o = &eng.orders[i]
                if k == 0 or ids[k].account != ids[k - 1].account:
                    a = table_put_new(&eng.by_account, o.account, 0, i, i)
                    if a < 0:
                        raise RuntimeError("crossengine: restore sorted an account apart")
                    eng.by_account.slots[a].shard = eng._shard(o.account)
                    o.acct_prev = -1
                else:
                    if ids[k].order_id <= ids[k - 1].order_id:
                        raise RuntimeError("crossengine: restore sorted an account's ids wrong")
                    prev = ids[k - 1].idx
                    o.acct_prev = prev
                    eng.orders[prev].acct_next = i
                    eng.by_account.slots[a].v2 = i
                o.acct_next = -1
                o.acct_slot = <int32_t>a
                eng.by_account.slots[a].n += 1
                if eng.by_account.slots[a].n > eng.max_account_orders:
                    # apply refuses the order past the bound (account_order_limit): a book
                    # with more would let CancelAll list more levels than one record holds
                    # (codec.worst_case_sizes)
                    raise ValueError(f"CrossEngine snapshot: account {o.account} rests more "
                                     f"than max_account_orders ({max_account_orders}) orders "
                                     f"(order {i})")
        finally:
            free(ids)
            free(snap_lv)
        if table_size(&eng.by_id) != <uint64_t>n_orders \
                or table_size(&eng.by_client) != <uint64_t>n_orders \
                or table_size(&eng.by_account) != <uint64_t>accounts:
            raise RuntimeError("crossengine: restore built indexes that disagree with the book")
        if eng.by_id.mask + 1 != id_cap:
            eng._id_rehint()     # (sized for room above: it does not grow)
        eng.n_touched = 0
        if check:
            eng.check_invariants()
        return eng

    def state_hash(self):
        return hashlib.sha256(self.snapshot()).digest()

    def index_stats(self):
        """Each id table's (live keys, capacity, longest run of occupied slots): the run is
        what a lookup or a deletion may walk; it stays short unless keys share slots. For each
        side (bid_, ask_) the same of its level map (``_levels``: levels, capacity, longest
        run), the slots or levels its grows have read (``_grow_reads``), and of its rung map
        (``_rungs``: live rungs, capacity, longest run, and the rung pool's capacity). The id
        ring (``id_ring``): the orders it holds, its slots (the id map holds the rest)."""
        out = {}
        cdef Table* t
        cdef uint64_t i, run, longest
        for name in ("by_id", "by_client", "by_account"):
            t = &self.by_id if name == "by_id" else \
                &self.by_client if name == "by_client" else &self.by_account
            run = longest = 0
            for i in range(t.mask + 1):
                run = run + 1 if t.slots[i].used else 0
                longest = max(longest, run)
            out[name] = (table_size(t), t.mask + 1, longest)
        run = 0
        for i in range(self.ring_mask + 1):
            run += self.id_ring[i] >= 0
        out["id_ring"] = (run, self.ring_mask + 1)
        cdef Side* sd
        cdef int s
        for s, name in ((0, "bid"), (1, "ask")):
            sd = &self.sides[s]
            run = longest = 0
            for i in range(sd.lmap_mask + 1):
                run = run + 1 if sd.lmap[i] >= 0 else 0
                longest = max(longest, run)
            out[f"{name}_levels"] = (sd.n, sd.lmap_mask + 1, longest)
            out[f"{name}_grow_reads"] = sd.grow_reads
            run = longest = 0
            for i in range(sd.map_mask + 1):
                run = run + 1 if sd.map[i].key >= 0 else 0
                longest = max(longest, run)
            out[f"{name}_rungs"] = (sd.tree.n, sd.map_mask + 1, longest, sd.rungs_cap)
        return out

    def check_invariants(self):
        """Raise RuntimeError unless: the book is not crossed; levels are strictly ordered;
        each level's total and count equal the sums of its orders; every live order is in
        exactly one level, in the id map and the client map exactly once, and in the id-ordered
        lists in increasing id order; no account rests more than max_account_orders."""
        cdef int s
        cdef int32_t k, lv, i, prev_i, seen = 0
        cdef uint64_t total, last_id
        cdef uint32_t count
        cdef int64_t s_idx
        cdef Side* sd
        cdef int32_t bi, n_in, r, n_rungs, best
        cdef int b, w
        cdef int64_t last_key = 0, key, st, price
        cdef uint64_t j, used
        cdef Rung* R
        for s in range(2):
            sd = &self.sides[s]
            n_in = 0
            n_rungs = 0
            for bi in range(sd.tree.nb):
                if sd.tree.blocks[bi].n < 1 or sd.tree.blocks[bi].n > LB \
                        or sd.tree.firsts[bi] != sd.tree.blocks[bi].keys[0]:
                    raise RuntimeError("crossengine: a side's rung index is malformed")
                for k in range(sd.tree.blocks[bi].n):
                    key = sd.tree.blocks[bi].keys[k]
                    r = sd.tree.blocks[bi].lv[k]
                    if n_rungs and last_key >= key:
                        raise RuntimeError("crossengine: rungs out of order")
                    last_key = key
                    n_rungs += 1
                    if r < 0 or r >= sd.rungs_cap or sd.rungs[r].key != key \
                            or sd.rungs[r].summary == 0 or rung_probe(sd, key) != r:
                        raise RuntimeError("crossengine: a rung is stale, empty or unmapped")
                    R = &sd.rungs[r]
                    for w in range(64):
                        if ((R.summary >> w) & 1) != (w < RW and R.words[w] != 0):
                            raise RuntimeError("crossengine: a rung's summary is wrong")
                    for w in range(RW):
                        for b in range(64):
                            if not (R.words[w] >> b) & 1:
                                continue
                            n_in += 1
                            st = (key << RB) | (w << 6) | b
                            price = self._price_of(s, st)
                            lv = side_find(sd, self.levels, price)
                            if lv < 0 or self.levels[lv].rung != r \
                                    or self.levels[lv].tick != (w << 6 | b) \
                                    or self.levels[lv].side != (BUY if s == 0 else SELL) \
                                    or self._price_code(price) or self._tick(s, price) != st:
                                raise RuntimeError("crossengine: a level's place is stale")
            used = 0
            for j in range(sd.map_mask + 1):
                if sd.map[j].key >= 0:
                    used += 1
            if n_rungs != sd.tree.n or used != <uint64_t>n_rungs \
                    or used * 2 > sd.map_mask + 1:
                raise RuntimeError("crossengine: a side's rung count is wrong")
            used = 0
            for j in range(sd.lmap_mask + 1):
                lv = sd.lmap[j]
                if lv >= 0:
                    used += 1
                    # found from its home: no empty slot between (the backward shift kept it)
                    if lv >= self.levels_cap or not self.levels[lv].linked or side_find(
                            sd, self.levels, self.levels[lv].price) != lv:
                        raise RuntimeError("crossengine: the level map is stale")
            if used != <uint64_t>n_in or used * 2 > sd.lmap_mask + 1:
                raise RuntimeError("crossengine: the level map's count is wrong")
            used = 0
            for lv in range(self.levels_cap):      # what a grow of the level map reads
                if self.levels[lv].linked and self.levels[lv].side == (BUY if s == 0 else SELL):
                    used += 1
            if used != <uint64_t>n_in:
                raise RuntimeError("crossengine: the pool's linked levels and the map disagree")
            for b in range(RC):
                key = sd.rc_key[b]
                if key >= 0 and ((key & (RC - 1)) != b or rung_probe(sd, key) != sd.rc_rung[b]):
                    raise RuntimeError("crossengine: the rung cache is stale")
            if n_in != sd.n:
                raise RuntimeError("crossengine: a side's level count is wrong")
            levels = self._level_list(s)
            best = levels[0] if levels else -1
            if sd.best != best or sd.best_key != (CE_KEY_NONE if best < 0 else side_key(
                    s, self.levels[best].price)):
                raise RuntimeError("crossengine: a side's best level is stale")
            for k in range(1, len(levels)):
                if side_key(s, self.levels[<int32_t>levels[k - 1]].price) <= \
                        side_key(s, self.levels[<int32_t>levels[k]].price):
                    raise RuntimeError("crossengine: levels out of order")
            for lv in levels:
                total = 0
                count = 0
                prev_i = -1
                i = self.levels[lv].head
                while i >= 0:
                    if not self.orders[i].live or self.orders[i].level != lv \
                            or self.orders[i].prev != prev_i or self.orders[i].leaves == 0:
                        raise RuntimeError("crossengine: broken level links")
                    s_idx = table_find(&self.by_id, self.orders[i].order_id, 0)
                    if self.orders[i].id_slot < 0:
                        if self.id_ring[self.orders[i].order_id & self.ring_mask] != i \
                                or s_idx >= 0:
                            raise RuntimeError("crossengine: order missing from the id ring")
                    else:
                        if s_idx < 0 or self.by_id.slots[s_idx].v1 != i:
                            raise RuntimeError("crossengine: order missing from the id map")
                        if self.orders[i].id_slot != s_idx:
                            raise RuntimeError("crossengine: an order's id_slot is stale")
                    if self._id_find(self.orders[i].order_id) != i:
                        raise RuntimeError("crossengine: an order's id finds another order")
                    s_idx = table_find(&self.by_client, self.orders[i].client_order_id,
                                       self.orders[i].account)
                    if s_idx < 0 or self.by_client.slots[s_idx].v1 != i:
                        raise RuntimeError("crossengine: order missing from the client map")
                    total += self.orders[i].leaves
                    count += 1
                    prev_i = i
                    i = self.orders[i].next
                if self.levels[lv].tail != prev_i or total != self.levels[lv].total \
                        or count != self.levels[lv].count or count == 0:
                    raise RuntimeError(f"crossengine: level {self.levels[lv].price} totals wrong")
                seen += count
        if self.sides[0].n and self.sides[1].n and \
                self.levels[side_best(&self.sides[0])].price >= \
                self.levels[side_best(&self.sides[1])].price:
            raise RuntimeError("crossengine: the book is crossed")
        cdef uint64_t in_ring = 0, ri
        for ri in range(self.ring_mask + 1):
            if self.id_ring[ri] >= 0:
                i = self.id_ring[ri]
                if i >= self.orders_cap or not self.orders[i].live \
                        or self.orders[i].id_slot >= 0 \
                        or self.orders[i].order_id & self.ring_mask != ri:
                    raise RuntimeError("crossengine: the id ring holds a stale entry")
                in_ring += 1
        if seen != self.n_live or table_size(&self.by_id) + in_ring != <uint64_t>seen \
                or table_size(&self.by_client) != <uint64_t>seen:
            raise RuntimeError("crossengine: live orders and indexes disagree")
        cdef uint64_t slot
        cdef uint32_t n_acct
        k = 0
        for slot in range(self.by_account.mask + 1):
            if not self.by_account.slots[slot].used:
                continue
            n_acct = 0
            last_id = 0
            i = self.by_account.slots[slot].v1
            while i >= 0:
                if self.orders[i].account != self.by_account.slots[slot].k1:
                    raise RuntimeError("crossengine: an order in another account's list")
                if self.orders[i].order_id <= last_id:
                    raise RuntimeError("crossengine: an account's list is out of id order")
                last_id = self.orders[i].order_id
                n_acct += 1
                i = self.orders[i].acct_next
            if n_acct != self.by_account.slots[slot].n:
                raise RuntimeError("crossengine: an account's order count is wrong")
            if self.by_account.slots[slot].shard \
                    != self._shard(<uint32_t>self.by_account.slots[slot].k1):
                raise RuntimeError("crossengine: an account's route bit is wrong")
            if n_acct > self.max_account_orders:
                raise RuntimeError("crossengine: an account rests more than max_account_orders")
            k += n_acct
        if k != seen:
            raise RuntimeError("crossengine: account lists and live orders disagree")
