"""CrossEngine.restore against mutated snapshots: whatever the bytes, it either refuses them with
ValueError (never another exception, a crash or a hang) or builds an engine that passes
check_invariants(), whose snapshot restores again to the same state hash, and that keeps
working (a few more commands, then check_invariants() again). restore(check=False), the one
pass, and restore(check=True), the one pass and then the second walk, accept and refuse alike.

The snapshot carries no checksum, so every mutation reaches the parser as it is. The snapshots
are of engines driven by seeded random flows (several configurations: ticks, bounds,
te_sources and liq_sources, so versions 3 and 4); the mutations know the layout (a field of
one order or of the header set to a value at or next to a bound, or to another order's;
records duplicated, dropped, swapped, moved; the length and the version changed) or do not
(bytes flipped, cut or appended).

The default run takes a few seconds; SEQEX_SLOW=1 (or -m slow) runs many more examples."""
import functools
import random
import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from crossengine import codec as c
from crossengine.engine import CrossEngine

ORDER = struct.Struct("<QQIBqQQBB")        # one order of a snapshot (47 bytes)
V3 = c.SNAP_HEADER_V3
V4 = c.SNAP_HEADER_V4
# header fields (V3 order): 0 magic, 1 version, 2 symbol, 3 tick, 4 min_qty, 5 max_qty,
# 6 max_price, 7 max_orders, 8 max_fills, 9 max_account_orders, 10 counter, 11 trade_id,
# 12 halted, 13 n, 14 n_shards, 15 n_te (V4: 16 n_liq)
HEADER_WIDTH = [None, 16, 32, 64, 64, 64, 64, 64, 32, 32, 64, 64, 8, 64, 8, 16, 16]
HEADER_SIGNED = {3, 6}
# order fields: 0 id, 1 client id, 2 account, 3 side, 4 price, 5 leaves, 6 filled, 7 flags, 8 stp
ORDER_WIDTH = [64, 64, 32, 8, 64, 64, 64, 8, 8]

CONFIGS = [
    dict(),
    dict(symbol_id=7, tick_size=5, max_qty=1000, max_price=100_000, max_orders=400),
    dict(symbol_id=3, tick_size=1, min_qty=2, max_qty=60, max_orders=200, max_account_orders=9,
         max_fills=4, n_shards=5, te_sources=[11, 12]),
    dict(symbol_id=(1 << 24) - 1, tick_size=10, max_qty=50, max_price=20_000, n_shards=63,
         te_sources=[5], liq_sources=[6, 9]),
    dict(symbol_id=2, tick_size=2, max_qty=100, max_orders=3000),
]
# how many ticks from mid an order's price may be, by configuration: the last one spreads its
# book over more levels a side than one block of a side's index holds (128)
SPREAD = [12, 12, 12, 12, 400]


def commands(rng: random.Random, n: int, cfg: dict,
             spread: int = 12) -> list[tuple[int, bytes]]:
    """A seeded mix of every command kind around a mid price, on the configuration's tick."""
    tick = cfg.get("tick_size", 1)
    mid = 1000 * tick
    max_qty = cfg.get("max_qty", 40)
    out = []
    for _ in range(n):
        r = rng.random()
        acct = rng.randint(1, 12)
        side = rng.choice([c.BUY, c.SELL])
        # bids mostly below mid, asks above, so that the book rests on both sides
        off = rng.randint(-spread, 4) if side == c.BUY else rng.randint(-4, spread)
        price = mid + off * tick
        if r < 0.62:
            out.append((c.NEW_ORDER, c.new_order(
                rng.randint(1, 3 * n), side, price, rng.randint(1, min(max_qty, 40)), acct,
                rng.choice([c.LIMIT] * 12 + [c.MARKET]), rng.choice([c.GTC] * 6 + [c.IOC, c.FOK]),
                rng.choice([0, 0, 0, 1, 2, 3]), rng.randint(0, 4))))
        elif r < 0.8:
            out.append((c.CANCEL, c.cancel(client_order_id=rng.randint(1, 3 * n), account=acct)))
        elif r < 0.95:
            out.append((c.AMEND, c.amend(client_order_id=rng.randint(1, 3 * n), account=acct,
                                         price=rng.choice([0, price]),
                                         qty=rng.choice([0, rng.randint(1, min(max_qty, 50))]))))
        else:
            out.append(rng.choice([(c.CANCEL_ALL, c.cancel_all(acct, rng.choice([0, side]))),
                                   (c.HALT, b""), (c.RESUME, b""), (c.RESUME, b"")]))
    return out


@functools.cache
def base(cfg_no: int, seed: int) -> bytes:
    """The snapshot of an engine of configuration cfg_no after a seeded flow."""
    cfg = CONFIGS[cfg_no]
    rng = random.Random(seed * 31 + cfg_no)
    eng = CrossEngine(**cfg)
    n = rng.choice([0, 5, 60, 400]) if SPREAD[cfg_no] < 100 else rng.choice([400, 5000])
    for kind, payload in commands(rng, n, cfg, SPREAD[cfg_no]):
        eng.apply(0, 0, kind, payload)
    if rng.random() < 0.2:
        eng.apply(0, 0, c.HALT, b"")
    return eng.snapshot()


# -- the layout ---------------------------------------------------------------------------------

def split(snap: bytes) -> tuple[list, list[int], list[int], list[list]]:
    """(header fields, te_sources, liq_sources, orders) of a well-formed snapshot."""
    version = struct.unpack_from("<H", snap, 4)[0]
    hs = V4 if version == 4 else V3
    fields = list(hs.unpack_from(snap))
    n_te, n_liq = fields[15], fields[16] if version == 4 else 0
    te = list(struct.unpack_from(f"<{n_te}I", snap, hs.size))
    liq = list(struct.unpack_from(f"<{n_liq}I", snap, hs.size + 4 * n_te))
    off = hs.size + 4 * (n_te + n_liq)
    orders = [list(ORDER.unpack_from(snap, off + k * ORDER.size)) for k in range(fields[13])]
    assert off + fields[13] * ORDER.size == len(snap)
    return fields, te, liq, orders


def join(fields: list, te: list[int], liq: list[int], orders: list[list]) -> bytes:
    hs = V4 if len(fields) == 17 else V3
    return (hs.pack(*fields) + struct.pack(f"<{len(te)}I", *te)
            + struct.pack(f"<{len(liq)}I", *liq) + b"".join(ORDER.pack(*o) for o in orders))


def wrap(value: int, bits: int, signed: bool = False) -> int:
    value &= (1 << bits) - 1
    if signed and value >> (bits - 1):
        value -= 1 << bits
    return value


def near(draw, values: list[int]) -> int:
    """One of values, or one of them plus or minus a little."""
    v = draw(st.sampled_from(values))
    return v + draw(st.sampled_from([0, 0, 0, -1, 1, -2, 2]))


def order_value(draw, fields: list, orders: list[list], k: int, f: int) -> int:
    tick, min_qty, max_qty, max_price, counter = fields[3], fields[4], fields[5], fields[6], \
        fields[10]
    ids = (fields[2] << 40)
    other = [o[f] for o in orders]
    cur = orders[k][f]
    pool = [0, 1, cur, *other[:8]]
    if f == 0:
        pool += [ids, ids | 1, ids | counter, ids | (counter + 1), 1 << 40, (fields[2] + 1) << 40,
                 (1 << 64) - 1]
    elif f in (1, 2):
        pool += [(1 << 32) - 1, c.LIQ_ACCOUNT, (1 << 64) - 1]
    elif f == 3:
        pool += [c.BUY, c.SELL, 0x33, 0xFF]
    elif f == 4:
        pool += [cur + tick, cur - tick, max_price, max_price + tick, -tick, 1 << 62, 1 << 63,
                 -(1 << 63), *(o[4] for o in orders if o[3] != orders[k][3])][:40]
        pool += [o[4] + d * tick for o in orders[:6] for d in (-1, 1)]
    elif f == 5:
        pool += [max_qty, max_qty + 1, min_qty, min_qty - 1, max_qty - orders[k][6],
                 max_qty - orders[k][6] + 1, 1 << 63, (1 << 64) - 1]
    elif f == 6:
        pool += [max_qty - orders[k][5], max_qty - orders[k][5] + 1, max_qty, 1 << 63,
                 (1 << 64) - 1]
    elif f == 7:
        pool += [2, 3, 4, 0x80, 0xFF]
    else:
        pool += [2, 3, 4, 5, 0xFF]
    return wrap(near(draw, pool), ORDER_WIDTH[f], signed=f == 4)


def header_value(draw, fields: list, orders: list[list], f: int) -> int:
    cur = fields[f]
    pool = [0, 1, cur, cur * 2, cur // 2, (1 << HEADER_WIDTH[f]) - 1]
    if f == 2:
        pool += [1 << 24, (1 << 24) - 1]
    elif f == 3:
        pool += [-1, 2, 3, 7, 1 << 62]
    elif f in (4, 5):
        pool += [fields[4], fields[5], max((o[5] + o[6] for o in orders), default=1),
                 max((o[5] for o in orders), default=1), (1 << 62) // max(fields[7], 1)]
    elif f == 6:
        pool += [max((o[4] for o in orders), default=1), 1 << 62, -1]
    elif f == 7:
        pool += [len(orders), 1 << 31, (1 << 31) - 1]
    elif f == 8:
        pool += [c.MAX_FILLS_LIMIT, c.MAX_FILLS_LIMIT + 1]
    elif f == 9:
        pool += [c.MAX_ACCOUNT_ORDERS_LIMIT, c.MAX_ACCOUNT_ORDERS_LIMIT + 1]
        per: dict[int, int] = {}
        for o in orders:
            per[o[2]] = per.get(o[2], 0) + 1
        pool += list(per.values())
    elif f == 10:
        low = [o[0] & ((1 << 40) - 1) for o in orders]
        pool += [max(low, default=0), c.ORDER_COUNTER_MAX, c.ORDER_COUNTER_MAX + 1]
    elif f == 12:
        pool += [2, 0xFF]
    elif f == 13:
        pool += [len(orders) + 1, len(orders) - 1, 1 << 40, 1 << 56, 1 << 63]
    elif f == 14:
        pool += [63, 64]
    elif f in (15, 16):
        pool += [cur + 1, cur - 1, 64, 65, 8, 9]
    return wrap(near(draw, pool), HEADER_WIDTH[f], signed=f in HEADER_SIGNED)


@st.composite
def mutated(draw) -> bytes:
    """A snapshot of a random engine, changed by one to three structure-aware edits."""
    snap = base(draw(st.integers(0, len(CONFIGS) - 1)), draw(st.integers(0, 11)))
    fields, te, liq, orders = split(snap)
    keep_n = True                 # the header's count follows the orders (else as edited)
    tail = b""
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(
            ["order"] * 8 + ["header"] * 6 + ["dup", "drop", "swap", "move", "copy_field",
                                              "sources", "version", "tail"]))
        if what == "order" and orders:
            k = draw(st.integers(0, len(orders) - 1))
            f = draw(st.integers(0, 8))
            orders[k][f] = order_value(draw, fields, orders, k, f)
        elif what == "copy_field" and len(orders) > 1:
            a, b = draw(st.integers(0, len(orders) - 1)), draw(st.integers(0, len(orders) - 1))
            for f in draw(st.lists(st.integers(0, 8), min_size=1, max_size=3)):
                orders[a][f] = orders[b][f]
        elif what == "header":
            f = draw(st.integers(2, len(fields) - 1))
            fields[f] = header_value(draw, fields, orders, f)
            if f == 13:
                keep_n = False
        elif what == "dup" and orders:
            k = draw(st.integers(0, len(orders) - 1))
            orders.insert(draw(st.integers(0, len(orders))), list(orders[k]))
        elif what == "drop" and orders:
            orders.pop(draw(st.integers(0, len(orders) - 1)))
        elif what in ("swap", "move") and len(orders) > 1:
            a = draw(st.integers(0, len(orders) - 1))
            b = draw(st.integers(0, len(orders) - 1))
            if what == "swap":
                orders[a], orders[b] = orders[b], orders[a]
            else:
                orders.insert(b, orders.pop(a))
        elif what == "sources":
            which = te if draw(st.booleans()) or len(fields) == 16 else liq
            op = draw(st.sampled_from(["add", "drop", "set"]))
            if op == "add":
                which.append(draw(st.sampled_from([0, 1, 5, 6, 11, 0x7300_0003, 0xFFFF_FFFF,
                                                   *te, *liq])))
            elif op == "drop" and which:
                which.pop()
            elif which:
                which[draw(st.integers(0, len(which) - 1))] = draw(st.sampled_from(
                    [0, 5, 6, 9, 11, *te, *liq, 0xFFFF_FFFF]))
            if draw(st.booleans()):             # the counts follow (else they do not)
                fields[15] = len(te)
                if len(fields) == 17:
                    fields[16] = len(liq)
        elif what == "version":
            v = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 0xFFFF]))
            if v == 4 and len(fields) == 16:
                fields.append(len(liq))
            elif v == 3 and len(fields) == 17:
                fields.pop()
            fields[1] = v
        elif what == "tail":
            tail = draw(st.binary(min_size=1, max_size=2 * ORDER.size))
    if keep_n:
        fields[13] = len(orders)
    data = join(fields, te, liq, orders) + tail
    if draw(st.integers(0, 9)) == 0:
        data = data[:draw(st.integers(0, len(data)))]
    return data


@st.composite
def flipped(draw) -> bytes:
    """A snapshot with bytes flipped, set, cut out or appended, without regard to its layout
    (the header, where one byte changes every order's meaning, gets half the edits)."""
    data = bytearray(base(draw(st.integers(0, len(CONFIGS) - 1)), draw(st.integers(0, 11))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "flip", "set", "cut", "insert", "truncate"]))
        if not data:
            break
        hi = min(len(data), V4.size + 8) if draw(st.booleans()) else len(data)
        at = draw(st.integers(0, hi - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from([0, 1, 2, 0x31, 0x32, 0x7F, 0x80, 0xFF]))
        elif op == "cut":
            del data[at:at + draw(st.integers(1, ORDER.size))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=ORDER.size))
        else:
            del data[at:]
    return bytes(data)


# -- the property ------------------------------------------------------------------------------

def restored(data: bytes, check: bool) -> CrossEngine | None:
    """The engine restore builds, or None if it refuses with ValueError (any other exception
    fails the test)."""
    try:
        return CrossEngine.restore(data, check=check)
    except ValueError:
        return None


def then(eng: CrossEngine) -> None:
    """A few commands of every kind on the restored engine keep its invariants."""
    rng = random.Random(len(eng))
    # the engine's own tick when prices around 1000 ticks fit an int64 (else prices off it)
    cfg = dict(tick_size=eng.tick_size if eng.tick_size < 1 << 40 else 1,
               max_qty=min(eng.max_qty, 1000))
    for kind, payload in commands(rng, 40, cfg):
        eng.apply(0, 0, kind, payload)
        eng.check_invariants()
    for acct in range(1, 4):
        eng.apply(0, 0, c.CANCEL_ALL, c.cancel_all(acct))
    eng.check_invariants()


def bounds_kept(snap: bytes) -> None:
    """What apply keeps true of a book and check_invariants() did not look at (before this
    test): at most max_orders orders, and no account resting more than max_account_orders (a
    CancelAll of more could list more levels than one output record holds)."""
    fields, _te, _liq, orders = split(snap)
    per: dict[int, int] = {}
    for o in orders:
        per[o[2]] = per.get(o[2], 0) + 1
    assert len(orders) <= fields[7]
    assert max(per.values(), default=0) <= fields[9], "an account over max_account_orders"


def sound_or_refused(data: bytes) -> bool:
    one_pass = restored(data, check=False)
    two_pass = restored(data, check=True)
    assert (one_pass is None) == (two_pass is None), "check=True and check=False disagree"
    event("refused" if one_pass is None else "accepted")
    if one_pass is None:
        return False
    one_pass.check_invariants()
    again = one_pass.snapshot()
    # accepted bytes are canonical: the engine writes them back as they were (versions 1 and
    # 2 as their upgrade to version 3)
    assert again == c.upgrade_snapshot(data)
    bounds_kept(again)
    twice = CrossEngine.restore(again, check=True)
    assert twice.state_hash() == one_pass.state_hash() == two_pass.state_hash()
    assert twice.snapshot() == again
    then(one_pass)
    return True


FAST = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=50_000, deadline=None, suppress_health_check=list(HealthCheck))


def test_every_base_snapshot_restores_to_itself():
    for cfg_no in range(len(CONFIGS)):
        for seed in range(12):
            snap = base(cfg_no, seed)
            assert CrossEngine.restore(snap, check=True).snapshot() == snap


@FAST
@given(mutated())
def test_a_mutated_snapshot_is_refused_or_sound(data):
    sound_or_refused(data)


@FAST
@given(flipped())
def test_a_snapshot_with_bytes_flipped_is_refused_or_sound(data):
    sound_or_refused(data)


@pytest.mark.slow
@SLOW
@given(mutated())
def test_a_mutated_snapshot_is_refused_or_sound_long(data):
    sound_or_refused(data)


@pytest.mark.slow
@SLOW
@given(flipped())
def test_a_snapshot_with_bytes_flipped_is_refused_or_sound_long(data):
    sound_or_refused(data)
