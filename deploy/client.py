"""The CrossEngine's Python client: orders straight into in.ce.SYMBOL, outcomes out of
out.ce.SYMBOL. On a cluster with TradingEngines such an order has no margin check and is on no
account's books (its fills against users' orders leave the engines' clearing apart); trade
there through the gateway (gateway.client.Client). `seqex submit` refuses it there unless
--bypass-risk.

    from deploy.client import Client
    with Client("seqex-data") as client:          # the data directory of `seqex up`
        outcome = client.submit("BTCUSDT", "buy", qty="5", price="100.5", account=1)
        # Accepted(...), Rejected(code, reason, text), Filled(price, qty, ...) or Expired(...)

Contract:
- **Source ids.** A client is one producer source. Without ``source=``, it takes the lowest
  free id from 1,000,000 up by an exclusive lock (``fcntl.flock``) on
  ``<data>/clients/source-N.lock``, held for the client's life; so two clients on this
  machine never share one, and a crashed client's id is free again at once. An explicit
  ``source=`` is locked the same way, and refused if another client holds it. A clash with a
  producer outside these locks (another host, `seqex produce`) raises SourceClash: the
  sequencer refuses a second live connection on one source (ERROR source_clash), and a
  result at an acknowledged seq that is not this client's order is caught here too.
- **Client order ids** are ``source * 2**32 + source_seq`` unless given: unique across clients
  (distinct sources) and across one source's lifetimes (source_seq never repeats).
- **Units.** ``qty`` and ``price`` are in the contract's units (int, str or Decimal; never a
  float), converted to lots and ticks with the topology's ``lot_size`` and ``tick_size``. A
  value off the grid, negative, or too large for its field raises ValueError; business rules
  (minimum and maximum quantity, price range) are the CrossEngine's, and its rejection comes
  back as a Rejected outcome with the code in words.
- **Outcomes.** The client reads out.ce.SYMBOL at each order's seq (the output record of an
  input record has its seq) and returns a typed outcome, with Decimal prices.
- **Idempotent retries.** An order keeps its source_seq until the sequencer acknowledges it;
  the producer resends it with that same number, and the sequencer drops copies. When
  ``wait`` gives up (OutcomeTimeout, which carries the tickets), calling ``wait`` again with
  the same tickets is the retry: it never creates a second order. ``submit`` with a
  client_order_id that this client has in flight returns that order's outcome too.
- **Threads.** One client belongs to one thread (its sockets are ZeroMQ's); give each thread
  or process its own client, and each gets its own source id.
- **Seqs.** Every acknowledged order gets its real seq. A master that took over acknowledges
  earlier records without seqs (WELCOME); the client then finds them in the in stream by
  (source, source_seq).
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import zmq

from crossengine import codec
from deploy import decode
from deploy.supervisor import read_state
from mq import auth, wire
from mq.control import ping, replay
from mq.producer import Producer
from mq.record import decode as decode_frame
from mq.sources import OPERATOR_SOURCE_MIN
from mq.subscriber import Subscriber

AUTO_SOURCE_FIRST = 1_000_000   # auto-allocated source ids start here (below: tools, tests)
MAX_SOURCE = (1 << 32) - 1
U64, I64, U32 = (1 << 64) - 1, (1 << 63) - 1, (1 << 32) - 1
SIDES = {"buy": codec.BUY, "sell": codec.SELL}
TIFS = {"gtc": codec.GTC, "ioc": codec.IOC, "fok": codec.FOK}
# read_state configures the process's CURVE identity and starts its one ZAP authenticator
# for a cluster with keys; clients made in several threads at once take turns at it.
_STATE_LOCK = threading.Lock()


class ClientError(Exception):
    """An operating problem a client reports in one line (no cluster, source in use...)."""


class SourceInUse(ClientError):
    pass


class SourceClash(ClientError):
    """The record at an acknowledged seq is not this client's: another producer uses the
    same source id outside this client's lock."""


class Refused(ClientError):
    """The sequencer refused this client's records (ERROR) with the reason it gave."""


class OutcomeTimeout(TimeoutError):
    """No outcome within the deadline. ``pending`` holds the tickets still waiting: pass them
    to ``wait`` again to keep waiting; the orders are never sent twice."""

    def __init__(self, message: str, pending: list[Ticket]):
        super().__init__(message)
        self.pending = pending


# -- outcomes ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fill:
    price: Decimal
    qty: Decimal
    trade_id: int
    maker_order_id: int


@dataclass(frozen=True)
class Accepted:
    """Resting on the book, nothing filled yet."""
    seq: int
    order_id: int
    client_order_id: int
    price: Decimal | None
    qty: Decimal


@dataclass(frozen=True)
class Filled:
    """Filled in part or in full: ``price`` is the average over ``fills``, ``qty`` their sum;
    ``resting`` is left on the book, ``expired`` the unfilled rest of a market/IOC order."""
    seq: int
    order_id: int
    client_order_id: int
    price: Decimal
    qty: Decimal
    fills: tuple[Fill, ...]
    resting: Decimal
    expired: Decimal


@dataclass(frozen=True)
class Expired:
    """Accepted, nothing filled, and nothing left on the book (market, IOC or FOK)."""
    seq: int
    order_id: int
    client_order_id: int
    qty: Decimal
    reason: str


@dataclass(frozen=True)
class Rejected:
    seq: int
    client_order_id: int
    code: int
    reason: str          # the code's name, e.g. qty_below_min
    text: str            # the code in a sentence


Outcome = Accepted | Filled | Expired | Rejected


@dataclass(eq=False)
class Ticket:
    """One order on its way: its identity (source_seq) never changes, its seq comes with the
    acknowledgement, its outcome with the out stream."""
    symbol: str
    source_seq: int
    client_order_id: int
    account: int
    side: int
    price_ticks: int
    qty_lots: int
    seq: int | None = None
    outcome: Outcome | None = None
    sent_at: float = field(default_factory=time.monotonic)


# -- the client -------------------------------------------------------------------------------

def _decimal(name: str, v: object) -> Decimal:
    if isinstance(v, bool) or isinstance(v, float):
        raise ValueError(f"{name} must be an int, a str or a Decimal (not {type(v).__name__}: "
                         "floats are inexact)")
    from gateway.client import plain_decimal
    if isinstance(v, str) and not plain_decimal(v):
        raise ValueError(f"{name} must be a number, got {v!r}")
    try:
        d = Decimal(str(v).strip()) if not isinstance(v, Decimal) else v
    except InvalidOperation:
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    if not d.is_finite():
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return d


def to_steps(name: str, v: object, step: Decimal, unit: str, hi: int, lo: int = 0) -> int:
    """A value in contract units as a whole number of steps (ticks, lots); ValueError when it
    is off the grid or outside lo..hi steps."""
    d = _decimal(name, v)
    if d < 0:
        raise ValueError(f"{name} must not be negative, got {v}")
    n = d / step
    if n != n.to_integral_value():
        raise ValueError(f"{name} {v} is not a multiple of the {unit} {decode._fmt(step)}")
    steps = int(n)
    if not lo <= steps <= hi:
        raise ValueError(f"{name} {v} is out of range ({lo} .. {hi} {unit}s of "
                         f"{decode._fmt(step)})")
    return steps


class _Producer(Producer):
    """The producer, keeping the sequencer's ERROR replies as they come (to tell a source clash
    from other refusals) and stopping connect() at the first one."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.errors: list[dict] = []

    def _on_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 2 and msg[0] == wire.ERROR:
            try:
                body = wire.unpack(msg[1])
            except wire.WireError:
                body = {"error": "an undecodable ERROR"}
            if body.get("src", self.source) == self.source:
                self.errors.append(body)
            return
        super()._on_message(msg)

    def _hello(self) -> None:
        # Never block: to a server whose CURVE handshake fails (other keys, or none) the
        # socket has no peer, and a blocking send would wait forever, past any timeout.
        self.hello_at = time.monotonic()
        try:
            self.sock.send_multipart([wire.HELLO, wire.pack({"src": self.source})],
                                     zmq.NOBLOCK)
        except zmq.Again:
            pass

    def connect(self, timeout_s: float = 30.0, clash_grace_s: float = 2.0) -> None:
        """As Producer.connect, but a refusal ends it. A source clash is retried for
        clash_grace_s first: the previous holder of this client's lock may have closed its
        connection a moment ago, before the sequencer noticed."""
        started = time.monotonic()
        while self.next_ss is None:
            now = time.monotonic()
            if self.errors:
                if not (all(e.get("reason") == "source_clash" for e in self.errors)
                        and now - started < clash_grace_s):
                    return
                self.errors.clear()
            if now - started > timeout_s:
                raise TimeoutError(f"no WELCOME from {self.addr}")
            self._hello()
            self.poll(200)


class Client:
    def __init__(self, data_dir: str = "seqex-data", source: int | None = None,
                 connect_timeout_s: float = 10.0):
        with _STATE_LOCK:
            self.topo, _pid = read_state(data_dir)
        self.data_dir = os.path.abspath(data_dir)
        self.units = decode.units_of(self.topo.symbols)
        self.connect_timeout_s = connect_timeout_s
        self._lock_fd: int | None = None
        self.source = self._lock_source(source)
        self.producers: dict[str, _Producer] = {}
        self.subscribers: dict[str, Subscriber] = {}
        self.start_seq: dict[str, int] = {}      # the in stream's position when first used
        self.pending: dict[str, dict[int, Ticket]] = {}   # symbol -> source_seq -> ticket
        self.by_seq: dict[str, dict[int, Ticket]] = {}    # symbol -> seq -> ticket (no outcome)
        self.by_coid: dict[int, Ticket] = {}
        self.floor: dict[str, tuple[int, int]] = {}       # symbol -> (source_seq, seq) highest

    # -- source ids ------------------------------------------------------------------------
    def _lock_source(self, source: int | None) -> int:
        if source is not None:
            if isinstance(source, bool) or not isinstance(source, int) \
                    or not 1 <= source <= MAX_SOURCE:
                raise ValueError(f"source must be an integer in 1 .. {MAX_SOURCE} "
                                 f"(0 is the sequencer's), got {source!r}")
        lock_dir = os.path.join(self.data_dir, "clients")
        os.makedirs(lock_dir, exist_ok=True)
        # With CURVE on, only the operator writes in.ce directly (mq/auth.py), and on a
        # cluster with TradingEngines the CrossEngine obeys a direct command only from an
        # operator source (docs/security.md): a client of this kind then takes a source id of
        # the operator's range.
        first = (AUTO_SOURCE_FIRST if auth.insecure() and not getattr(self.topo, "trading", None)
                 else OPERATOR_SOURCE_MIN)
        candidates = [source] if source is not None else range(first, MAX_SOURCE)
        for n in candidates:
            fd = os.open(os.path.join(lock_dir, f"source-{n}.lock"), os.O_RDWR | os.O_CREAT,
                         0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                if source is not None:
                    raise SourceInUse(f"source {n} is in use by another client (pid "
                                      f"{holder or '?'}); omit source to get a free one") \
                        from None
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._lock_fd = fd
            return n
        raise SourceInUse("no free source id")  # pragma: no cover: 4 billion clients

    # -- per symbol ------------------------------------------------------------------------
    def _symbol(self, symbol: str) -> dict:
        s = self.topo.symbols.get(symbol)
        if s is None:
            raise ValueError(f"unknown symbol {symbol!r}; the cluster has "
                             f"{', '.join(sorted(self.topo.symbols))}")
        return s

    def _producer(self, symbol: str) -> _Producer:
        prod = self.producers.get(symbol)
        if prod is None:
            s = self._symbol(symbol)
            st = ping(s["producers"], timeout_s=min(5.0, self.connect_timeout_s))
            if st is None:
                raise ClientError(f"the sequencer of {s['in']} does not answer on "
                                  f"{s['producers']} (`seqex status`)")
            self.start_seq[symbol] = int(st.get("committed") or 0)
            prod = _Producer(self.source, s["producers"])
            try:
                prod.connect(self.connect_timeout_s)
                self._raise_refusals(prod)
            except TimeoutError:
                prod.close()
                raise ClientError(f"the sequencer of {s['in']} at {s['producers']} did not "
                                  f"welcome source {self.source} in "
                                  f"{self.connect_timeout_s} s") from None
            except ClientError:
                prod.close()
                raise
            self.producers[symbol] = prod
            self.pending[symbol] = {}
            self.by_seq[symbol] = {}
        return prod

    def order(self, symbol: str, side: str, qty: object, price: object = None,
              account: int = 1, market: bool = False, tif: str = "gtc",
              client_order_id: int | None = None) -> tuple[int, int, int, int, int, int]:
        """Check and convert one order: (side, ticks, lots, account, ord_type, tif)."""
        s = self._symbol(symbol)
        side_code = SIDES.get(side.lower()) if isinstance(side, str) else None
        if side_code is None:
            raise ValueError(f"side must be 'buy' or 'sell' (any case), got {side!r}")
        tif_code = TIFS.get(tif.lower()) if isinstance(tif, str) else None
        if tif_code is None:
            raise ValueError(f"tif must be 'gtc', 'ioc' or 'fok', got {tif!r}")
        if isinstance(account, bool) or not isinstance(account, int) or not 1 <= account <= U32:
            raise ValueError(f"account must be an integer in 1 .. {U32}, got {account!r}")
        if client_order_id is not None and (isinstance(client_order_id, bool) or not isinstance(
                client_order_id, int) or not 1 <= client_order_id <= U64):
            raise ValueError(f"client_order_id must be an integer in 1 .. {U64}, "
                             f"got {client_order_id!r}")
        lots = to_steps("qty", qty, Decimal(s["lot_size"]), "lot", U64)
        if market:
            if price is not None:
                raise ValueError("a market order takes no price")
            ticks = 0
        else:
            if price is None:
                raise ValueError("a limit order needs a price (or make it a market order)")
            ticks = to_steps("price", price, Decimal(s["tick_size"]), "tick", I64)
        return (side_code, ticks, lots, account, codec.MARKET if market else codec.LIMIT,
                tif_code)

    def send(self, symbol: str, side: str, qty: object, price: object = None, account: int = 1,
             market: bool = False, tif: str = "gtc",
             client_order_id: int | None = None) -> Ticket:
        """Queue one order and return its ticket at once (see wait)."""
        return self.send_many(symbol, [dict(side=side, qty=qty, price=price, account=account,
                                            market=market, tif=tif,
                                            client_order_id=client_order_id)])[0]

    def send_many(self, symbol: str, orders: Iterable[dict]) -> list[Ticket]:
        """Queue orders (dicts of send's arguments) as one batch; their tickets, in order.
        Every order is checked before any is sent."""
        if self._lock_fd is None:
            raise ClientError(f"this client (source {self.source}) is closed: its source id "
                              "is free for other clients; make a new Client")
        checked = []
        tickets: list[Ticket | None] = []
        for o in orders:
            coid = o.get("client_order_id")
            if coid is not None and coid in self.by_coid:
                tickets.append(self.by_coid[coid])  # a retry of an order in flight
                continue
            checked.append((len(tickets), coid, self.order(symbol, **o)))
            tickets.append(None)
        if not checked:
            return tickets  # type: ignore[return-value]
        prod = self._producer(symbol)
        self._raise_refusals(prod)
        ss = prod.next_ss
        records = []
        for k, (i, coid, (side, ticks, lots, account, ord_type, tif)) in enumerate(checked):
            coid = coid or (self.source << 32) | ((ss + k) & U32)
            t = Ticket(symbol, ss + k, coid, account, side, ticks, lots)
            records.append((codec.NEW_ORDER, codec.new_order(coid, side, ticks, lots, account,
                                                             ord_type, tif)))
            tickets[i] = t
            self.pending[symbol][t.source_seq] = t
            self.by_coid[coid] = t
        first, _last = prod.submit_many(records)
        if first != ss:  # pragma: no cover: the producer numbers from next_ss
            raise RuntimeError(f"producer numbered from {first}, expected {ss}")
        return tickets  # type: ignore[return-value]

    def submit(self, symbol: str, side: str, qty: object, price: object = None,
               account: int = 1, market: bool = False, tif: str = "gtc",
               client_order_id: int | None = None, timeout_s: float = 10.0) -> Outcome:
        """One order, and its outcome."""
        t = self.send(symbol, side, qty, price, account, market, tif, client_order_id)
        return self.wait([t], timeout_s)[0]

    # -- outcomes --------------------------------------------------------------------------
    def wait(self, tickets: list[Ticket], timeout_s: float = 10.0) -> list[Outcome]:
        """The outcome of every ticket, in order. Raises OutcomeTimeout (with the tickets
        still pending) when the deadline passes; calling wait again with them is a safe
        retry."""
        deadline = time.monotonic() + timeout_s
        symbols = sorted({t.symbol for t in tickets})
        while True:
            todo = [t for t in tickets if t.outcome is None]
            if not todo:
                return [t.outcome for t in tickets]  # type: ignore[misc]
            if self._lock_fd is None:
                raise ClientError(f"this client (source {self.source}) is closed: the "
                                  f"outcomes of {len(todo)} order(s) were not read")
            now = time.monotonic()
            if now > deadline:
                raise OutcomeTimeout(self._late(todo, timeout_s), todo)
            for sym in symbols:
                self._pump(sym, min(50, int((deadline - now) * 1000) + 1))

    def _late(self, todo: list[Ticket], timeout_s: float) -> str:
        t = todo[0]
        s = self.topo.symbols[t.symbol]
        if t.seq is None:
            return (f"{len(todo)} order(s) not acknowledged by the sequencer of {s['in']} at "
                    f"{s['producers']} in {timeout_s} s (first: source_seq {t.source_seq}); "
                    "they stay queued and keep their numbers: wait again to retry")
        return (f"order sequenced at seq {t.seq} in {s['in']}, but no result on {s['out']} in "
                f"{timeout_s} s: are its CrossEngine replicas and mirror up? (`seqex status`)")

    def _raise_refusals(self, prod: _Producer) -> None:
        if prod.errors:
            err = prod.errors.pop(0)
            kind = SourceClash if err.get("reason") == "source_clash" else Refused
            raise kind(f"the sequencer at {prod.addr} refused source {self.source}: "
                       f"{err.get('error')}")

    def _pump(self, symbol: str, timeout_ms: int) -> None:
        prod = self.producers[symbol]
        pending = self.pending[symbol]
        if pending:
            try:
                acked = prod.poll(0 if self.by_seq[symbol] else timeout_ms)
            except RuntimeError as exc:
                if "another producer uses this source id" in str(exc):
                    raise SourceClash(str(exc)) from None
                raise
            for ss_first, ss_last, seq in acked:
                for k in range(ss_last - ss_first + 1):
                    t = pending.get(ss_first + k)
                    if t is not None and seq is not None:
                        self._sequenced(t, seq + k)
            self._raise_refusals(prod)
            # Acknowledged without a seq (a new master's WELCOME): find them in the log.
            lost = [t for ss, t in pending.items() if ss < prod.acked_next and t.seq is None]
            if lost:
                self._find_seqs(symbol, lost)
        if self.by_seq[symbol]:
            self._read_outcomes(symbol, timeout_ms)

    def _sequenced(self, t: Ticket, seq: int) -> None:
        t.seq = seq
        self.pending[t.symbol].pop(t.source_seq, None)
        self.by_seq[t.symbol][seq] = t
        # A source's records are sequenced in source_seq order: the highest one known
        # bounds where later ones can be.
        if t.source_seq > self.floor.get(t.symbol, (0, 0))[0]:
            self.floor[t.symbol] = (t.source_seq, seq)

    def _find_seqs(self, symbol: str, lost: list[Ticket]) -> None:
        s = self.topo.symbols[symbol]
        want = {t.source_seq: t for t in lost}
        floor_ss, floor_seq = self.floor.get(symbol, (0, 0))
        start = (floor_seq if floor_ss < min(want) else self.start_seq.get(symbol, 0)) + 1
        for addr in self.topo.replicator_addrs():
            try:
                for frame in replay(addr, s["in"], max(1, start)):
                    for r in decode_frame(frame):
                        if r[2] == self.source and r[3] in want:
                            self._sequenced(want.pop(r[3]), r[0])
                    if not want:
                        return
                return
            except (TimeoutError, RuntimeError):
                continue

    def _read_outcomes(self, symbol: str, timeout_ms: int) -> None:
        s = self.topo.symbols[symbol]
        waiting = self.by_seq[symbol]
        sub = self.subscribers.get(symbol)
        low = min(waiting)
        if sub is None or sub.next_seq > low:
            if sub is not None:
                sub.close()
            sub = Subscriber(s["out"], s["out_pub"], self.topo.replicator_addrs(), low)
            self.subscribers[symbol] = sub
        units = self.units.get(s["symbol_id"]) or decode.Units(symbol, s["symbol_id"])
        for _first, _last, frame in sub.poll(timeout_ms):
            for rec in decode_frame(frame):
                t = waiting.pop(rec[0], None)
                if t is not None:
                    t.outcome = self._outcome(t, rec, units)
                    if t.client_order_id in self.by_coid and self.by_coid[t.client_order_id] is t:
                        del self.by_coid[t.client_order_id]
            if not waiting:
                break

    def _outcome(self, t: Ticket, rec: tuple, units: decode.Units) -> Outcome:
        seq, _ts, src, ss, _epoch, _kind, payload = rec[:7]
        events = codec.decode_events(payload)
        head = events[0] if events else None
        mine = src == self.source and ss == t.source_seq
        if head is not None and head[0] == codec.EV_ACCEPTED:
            mine = mine and (head[2], head[3], head[4], head[7]) == (
                t.client_order_id, t.account, t.side, t.qty_lots)
        elif head is not None and head[0] == codec.EV_REJECTED:
            mine = mine and (head[1], head[2]) == (t.client_order_id, t.account)
        else:
            mine = False
        if not mine:
            raise SourceClash(f"the record at seq {seq} of {self.topo.symbols[t.symbol]['out']} "
                              f"is not this client's order (source {self.source}, source_seq "
                              f"{t.source_seq}): another producer uses source {self.source}")
        if head[0] == codec.EV_REJECTED:
            code = head[3]
            return Rejected(seq, t.client_order_id, code, decode.reject_name(code),
                            decode.reject_text(code))
        order_id = head[1]
        fills = tuple(Fill(units.tick_size * e[6], units.lot_size * e[7], e[1], e[2])
                      for e in events if e[0] == codec.EV_TRADE and e[3] == order_id)
        expired = sum((e[4] for e in events if e[0] in (codec.EV_EXPIRED, codec.EV_CANCELLED)
                       and e[1] == order_id), 0)
        filled_lots = sum(e[7] for e in events if e[0] == codec.EV_TRADE and e[3] == order_id)
        resting = t.qty_lots - filled_lots - expired
        if fills:
            total = sum((f.qty for f in fills), Decimal(0))
            avg = sum((f.price * f.qty for f in fills), Decimal(0)) / total
            return Filled(seq, order_id, t.client_order_id, avg.normalize()
                          if avg == avg.to_integral_value() else avg, total, fills,
                          units.lot_size * resting, units.lot_size * expired)
        if resting <= 0:
            reason = next((decode._word(decode.CE_REASONS, e[5]) for e in events
                           if e[0] in (codec.EV_EXPIRED, codec.EV_CANCELLED)), "expired")
            return Expired(seq, order_id, t.client_order_id, units.lot_size * expired, reason)
        price = units.tick_size * head[6] if head[6] else None
        return Accepted(seq, order_id, t.client_order_id, price, units.lot_size * head[7])

    def close(self) -> None:
        for prod in self.producers.values():
            prod.close()
        for sub in self.subscribers.values():
            sub.close()
        self.producers.clear()
        self.subscribers.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)   # releases the source id
            self._lock_fd = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe(o: Outcome, symbol: str) -> str:
    """One line for people; "<outcome> at seq N " always comes first."""
    f = decode._fmt
    if isinstance(o, Rejected):
        return (f"rejected at seq {o.seq} (client order id {o.client_order_id}): {o.text} "
                f"(code {o.code} {o.reason})")
    if isinstance(o, Filled):
        # One part per price (in the order the prices were first hit), not one per maker.
        by_price: dict[Decimal, list] = {}
        for x in o.fills:
            by_price.setdefault(x.price, [Decimal(0), 0])
            by_price[x.price][0] += x.qty
            by_price[x.price][1] += 1
        parts = ", ".join(f"{f(q)} @ {f(p)}{f' in {n} fills' if n > 1 else ''}"
                          for p, (q, n) in by_price.items())
        rest = []
        if o.resting:
            rest.append(f"{f(o.resting)} resting on the book")
        if o.expired:
            rest.append(f"{f(o.expired)} expired unfilled")
        return (f"filled at seq {o.seq} as order {o.order_id}: {f(o.qty)} {symbol} at "
                f"{f(o.price)} ({parts}){'; ' + ', '.join(rest) if rest else ''} "
                f"(client order id {o.client_order_id})")
    if isinstance(o, Expired):
        return (f"expired at seq {o.seq} as order {o.order_id}: nothing to trade against, "
                f"{f(o.qty)} unfilled ({o.reason})")
    price = "market" if o.price is None else f(o.price)
    return (f"accepted at seq {o.seq} as order {o.order_id}: {f(o.qty)} {symbol} at {price} "
            f"resting on the book (client order id {o.client_order_id})")
