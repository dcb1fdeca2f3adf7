"""`seqex oracle --config JSON`: the mark-price source, on a SIMULATED index (a seeded random
walk), no feed.

It computes the mark as BitMEX's *fair price marking* does, from an index price:
``mark = index * (1 + funding basis)``, ``funding basis = funding rate * (time until the next
funding / funding interval)``, so that liquidations follow the index and never the traded
price alone. The index here stands in for an index-price service (a weighted spot price in a
real deployment) so that a demo cluster has marks: margin, unrealised PnL, liquidation and the
price band of the TradingEngine all need one. It is labelled as what it is everywhere it shows:
its log's first line and its status (PING) say "simulated random walk".

Contract:
* One producer per in.te.N, all with the source id ``0x7100_0000 | index`` (docs/order-path.md
  §2: the TradingEngine takes MarkPrice only from its ``oracle_sources`` and the operator).
* Every ``interval_ms`` it sends, into every stream of ``shards`` (every in.te.N and in.liq), one
  MarkPrice record (kind 73, ``<Iq``: symbol id, mark in ticks) per symbol; every stream gets
  the same marks in the same order.
* ``mark``: ``"fair"`` (the default) sends the fair price above; ``"index"`` sends the index
  itself. The funding rate of the basis is BitMEX's ``F = P + clamp(I - P, -0.05 %, 0.05 %)``
  of the simulated premium index P and the interest rate I (``interest_ppm``), and the time
  until funding is the wall clock's distance to the next multiple of ``funding_interval_ms``
  (default 8 h, or the symbol's own ``funding_interval_ms``; the TradingEngines fund at the same
  multiples of sequenced time).
* The walk of a symbol starts at ``start_ticks`` and moves by a uniform step of at most
  ``step_ppm`` of the price (at least one tick) each interval, held inside
  [start / 2, start * 2] and [1, max_ticks]. It is seeded (``seed`` and the symbol id), so two
  fresh starts with the same configuration walk the same path.
* ``state`` (optional, a file path; the topology gives ``<data>/oracle0/walk.json``): after
  every interval the walks' prices and step counts are written there (atomically), and a
  restart resumes from them, on a path seeded by the step count, instead of going back to
  ``start_ticks`` (which moved every mark by up to half its value at once, and could
  liquidate accounts the walk had made safe). A missing file is a fresh start; an unreadable
  one is logged and set aside.
* ``funding_every`` (optional, intervals; 0 = never): a FundingInputs record (kind 74,
  ``<Iii`` symbol, premium index ppm, interest rate ppm) with a premium that follows the walk's
  distance from its start (clamped to +-0.5 %) and interest ``interest_ppm`` (default 100).
* A control endpoint answers PING (status) and STOP, as every seqex process does.

Configuration (JSON): {"index", "source", "control", "interval_ms", "seed", "step_ppm",
"shards": [{"in", "producers"}], "symbols": [{"symbol", "symbol_id", "start_ticks",
"max_ticks"}], "funding_every", "interest_ppm", "mark", "funding_interval_ms", "state"}.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import struct
import time

import zmq

from mq import auth, sockets, wire
from mq.producer import Producer, Refused

log = logging.getLogger("seqex.oracle")

LABEL = "simulated random walk"
MARK_PRICE = 73          # tradingengine/codec.py MARK_PRICE (deploy/ may import it; a test checks)
FUNDING_INPUTS = 74
MARK_PRICE_S = struct.Struct("<Iq")
FUNDING_INPUTS_S = struct.Struct("<Iii")
SRC_ORACLE = 0x7100_0000
PREMIUM_CAP_PPM = 5_000
INTEREST_CLAMP_PPM = 500          # BitMEX: clamp(I - P, -0.05 %, 0.05 %)
PPM = 1_000_000


def funding_rate_ppm(premium_ppm: int, interest_ppm: int) -> int:
    """BitMEX's funding rate: ``F = P + clamp(I - P, -0.05 %, 0.05 %)``, in ppm."""
    return premium_ppm + max(-INTEREST_CLAMP_PPM, min(INTEREST_CLAMP_PPM,
                                                       interest_ppm - premium_ppm))


def fair_mark(index: int, rate_ppm: int, until_ms: int, interval_ms: int) -> int:
    """``index * (1 + rate * until / interval)`` in whole ticks (rounded half away from zero,
    at least 1): the funding basis shrinks to zero as the funding time comes."""
    num = index * (PPM * interval_ms + rate_ppm * until_ms)
    den = PPM * interval_ms
    return max(1, (2 * num + den) // (2 * den))


class ConfigError(ValueError):
    """The oracle's configuration is unusable; the message names the key."""


class Walk:
    """A seeded, bounded random walk of one symbol's mark, in ticks (integers only)."""

    def __init__(self, symbol_id: int, start_ticks: int, max_ticks: int, step_ppm: int,
                 seed: int):
        self.symbol_id = symbol_id
        self.start = start_ticks
        self.lo = max(1, start_ticks // 2)
        self.hi = min(max_ticks, start_ticks * 2)
        self.step_ppm = step_ppm
        self.price = start_ticks
        self.steps = 0
        self.seed = seed
        self.rng = random.Random(seed * 1_000_003 + symbol_id)

    def resume(self, price: int, steps: int) -> None:
        """Go on from a saved point: its price (held inside the bounds), on a path seeded by
        the step count, so that a resumed walk does not repeat the steps it took before."""
        self.price = min(self.hi, max(self.lo, price))
        self.steps = steps
        self.rng = random.Random(f"{self.seed}:{self.symbol_id}:{steps}")

    def step(self) -> int:
        size = max(1, self.price * self.step_ppm // 1_000_000) if self.step_ppm else 0
        self.price = min(self.hi, max(self.lo, self.price + self.rng.randint(-size, size)))
        self.steps += 1
        return self.price

    def premium_ppm(self) -> int:
        p = (self.price - self.start) * 1_000_000 // self.start
        return max(-PREMIUM_CAP_PPM, min(PREMIUM_CAP_PPM, p))


def save_state(path: str, intervals: int, walks: list[Walk]) -> None:
    """The walks' prices and step counts, written to a temporary file and renamed over
    ``path``, so that a crash leaves the old state or the new one."""
    body = json.dumps({"version": 1, "intervals": intervals,
                       "walks": {str(w.symbol_id): [w.price, w.steps] for w in walks}})
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())     # a host crash leaves the old state or the new, never none
    os.replace(tmp, path)


def load_state(path: str, walks: list[Walk]) -> int:
    """Resume the walks saved in ``path`` (a symbol not in it starts afresh); the number of
    intervals done, 0 for a fresh start. An unreadable file is set aside with a warning."""
    try:
        with open(path) as f:
            state = json.load(f)
        saved = state["walks"]
        intervals = state["intervals"]
        if state.get("version") != 1 or not isinstance(saved, dict) or type(intervals) is not int:
            raise ValueError("not a walk state of version 1")
        points = {}
        for w in walks:
            point = saved.get(str(w.symbol_id))
            if point is not None:
                price, steps = point
                if type(price) is not int or type(steps) is not int or steps < 0:
                    raise ValueError(f"symbol {w.symbol_id}: {point!r}")
                points[w] = (price, steps)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, KeyError, TypeError) as exc:
        aside = f"{path}.bad"
        try:
            os.replace(path, aside)
        except OSError:
            aside = "(could not move it aside)"
        log.warning("the walk state %s is unreadable (%s); moved to %s; starting the walk "
                    "afresh", path, exc, aside)
        return 0
    for w, (price, steps) in points.items():
        w.resume(price, steps)
    return intervals


def parse_config(text: str) -> dict:
    try:
        c = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--config is not JSON: {exc}") from None
    if not isinstance(c, dict):
        raise ConfigError("--config must be a JSON object")

    def need(d: dict, key: str, kind: type, where: str = "") -> object:
        v = d.get(key)
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ConfigError(f"--config: {where}{key} must be a {kind.__name__}, got {v!r}")
        return v

    c.setdefault("index", 0)
    c.setdefault("source", SRC_ORACLE | need(c, "index", int))
    c.setdefault("interval_ms", 1000)
    c.setdefault("seed", 1)
    c.setdefault("step_ppm", 500)
    c.setdefault("funding_every", 0)
    c.setdefault("interest_ppm", 100)
    c.setdefault("mark", "fair")
    c.setdefault("funding_interval_ms", 8 * 3600 * 1000)
    for key in ("source", "interval_ms", "seed", "step_ppm", "funding_every", "interest_ppm",
                "funding_interval_ms"):
        need(c, key, int)
    if c["mark"] not in ("fair", "index"):
        raise ConfigError(f"--config: mark must be \"fair\" or \"index\", got {c['mark']!r}")
    if not 1_000 <= c["funding_interval_ms"] <= 7 * 86_400_000:
        raise ConfigError(f"--config: funding_interval_ms must be in 1000 .. 604800000, got "
                          f"{c['funding_interval_ms']}")
    if not -PREMIUM_CAP_PPM <= c["interest_ppm"] <= PREMIUM_CAP_PPM:
        raise ConfigError(f"--config: interest_ppm must be in -{PREMIUM_CAP_PPM} .. "
                          f"{PREMIUM_CAP_PPM}, got {c['interest_ppm']}")
    need(c, "control", str)
    if "state" in c:
        need(c, "state", str)
    if not 0 < c["source"] < 0xFFFF_0000:
        raise ConfigError(f"--config: source {c['source']} is not a producer's source id")
    if not 10 <= c["interval_ms"] <= 3_600_000:
        raise ConfigError(f"--config: interval_ms must be in 10 .. 3600000, got "
                          f"{c['interval_ms']}")
    if not 0 <= c["step_ppm"] <= 100_000:
        raise ConfigError(f"--config: step_ppm must be in 0 .. 100000, got {c['step_ppm']}")
    shards = need(c, "shards", list)
    symbols = need(c, "symbols", list)
    if not shards or not symbols:
        raise ConfigError("--config: shards and symbols must not be empty")
    for i, sh in enumerate(shards):
        if not isinstance(sh, dict):
            raise ConfigError(f"--config: shards[{i}] must be an object")
        need(sh, "in", str, f"shards[{i}].")
        need(sh, "producers", str, f"shards[{i}].")
    for i, s in enumerate(symbols):
        if not isinstance(s, dict):
            raise ConfigError(f"--config: symbols[{i}] must be an object")
        for key in ("symbol_id", "start_ticks"):
            need(s, key, int, f"symbols[{i}].")
        s.setdefault("max_ticks", 1 << 62)
        s.setdefault("symbol", f"#{s['symbol_id']}")
        fi = s.get("funding_interval_ms", 1_000)
        if not isinstance(fi, int) or isinstance(fi, bool) or not 1_000 <= fi <= 7 * 86_400_000:
            raise ConfigError(f"--config: symbols[{i}].funding_interval_ms must be in 1000 .. "
                              f"604800000, got {fi!r}")
        if not 0 < s["symbol_id"] < 1 << 32 or not 1 <= s["start_ticks"] <= s["max_ticks"]:
            raise ConfigError(f"--config: symbols[{i}]: symbol_id in 1 .. 2**32-1 and "
                              f"1 <= start_ticks <= max_ticks")
    return c


def marks(walks: list[Walk], fair: dict | None = None) -> list[tuple[int, bytes]]:
    """One interval's MarkPrice records (kind, payload), the walks (the index) stepped once.
    ``fair`` (``interest_ppm``, ``now_ms``, ``interval_ms``: symbol id -> its funding interval)
    turns each index into its fair mark; without it the mark is the index."""
    out = []
    for w in walks:
        price = w.step()
        if fair is not None:
            rate = funding_rate_ppm(w.premium_ppm(), fair["interest_ppm"])
            interval = fair["interval_ms"][w.symbol_id]
            until = interval - fair["now_ms"] % interval
            price = fair_mark(price, rate, until, interval)
        out.append((MARK_PRICE, MARK_PRICE_S.pack(w.symbol_id, price)))
    return out


class Oracle:
    def __init__(self, conf: dict):
        self.conf = conf
        self.walks = [Walk(s["symbol_id"], s["start_ticks"], s["max_ticks"], conf["step_ppm"],
                           conf["seed"]) for s in conf["symbols"]]
        self.names = {s["symbol_id"]: s["symbol"] for s in conf["symbols"]}
        self.funding_ms = {s["symbol_id"]: s.get("funding_interval_ms",
                                                 conf["funding_interval_ms"])
                           for s in conf["symbols"]}
        self.producers = [Producer(conf["source"], sh["producers"], keep_results=0)
                          for sh in conf["shards"]]
        self.streams = [sh["in"] for sh in conf["shards"]]
        self.control = sockets.router(conf["control"])
        self.running = True
        self.sent = 0
        self.intervals = 0
        self.refused = 0
        self.started = time.monotonic()
        self.state_path = conf.get("state")
        if self.state_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.state_path)), exist_ok=True)
            self.intervals = load_state(self.state_path, self.walks)
        self.last_marks = {w.symbol_id: w.price for w in self.walks}

    def status(self) -> dict:
        return {"role": "oracle", "state": LABEL, "source_kind": LABEL,
                "source": self.conf["source"], "streams": self.streams, "sent": self.sent,
                "intervals": self.intervals, "refused": self.refused,
                "rate": round(self.sent / max(1e-9, time.monotonic() - self.started)),
                "mark_kind": self.conf["mark"],
                "index": {self.names[w.symbol_id]: w.price for w in self.walks},
                "marks": {self.names[s]: m for s, m in self.last_marks.items()},
                "connected": [p.next_ss is not None for p in self.producers]}

    def tick(self) -> None:
        """One interval: step every walk; the same records go to every shard."""
        self.intervals += 1
        fair = None
        if self.conf["mark"] == "fair":
            fair = {"interest_ppm": self.conf["interest_ppm"], "now_ms": int(time.time() * 1000),
                    "interval_ms": self.funding_ms}
        records = marks(self.walks, fair)
        self.last_marks = {sid: m for sid, m in (MARK_PRICE_S.unpack(p) for _k, p in records)}
        if self.state_path:
            try:
                save_state(self.state_path, self.intervals, self.walks)
            except OSError as exc:   # a full disk: the marks go on; a restart starts afresh
                log.warning("could not save the walk state in %s: %s", self.state_path, exc)
        every = self.conf["funding_every"]
        if every and self.intervals % every == 0:
            records += [(FUNDING_INPUTS, FUNDING_INPUTS_S.pack(
                w.symbol_id, w.premium_ppm(), self.conf["interest_ppm"])) for w in self.walks]
        for prod, stream in zip(self.producers, self.streams, strict=True):
            if prod.next_ss is None:
                try:
                    prod.connect(0.2)
                except TimeoutError:
                    log.info("%s not reachable yet; its marks of this interval are skipped",
                             stream)
                    continue
                except Refused as exc:   # not this oracle's source: said, not a crash
                    self.refused += 1
                    log.warning("%s refused the oracle's source: %s", stream, exc)
                    continue
            try:
                prod.submit_many(records, block_s=0.0)
                self.sent += len(records)
            except Refused as exc:
                self.refused += 1
                log.warning("%s refused the marks: %s", stream, exc)
            except Exception as exc:   # Backpressure: the shard is behind; skip, never queue
                log.warning("%s: %s; this interval's marks are skipped", stream, exc)

    def serve_control(self) -> None:
        while True:
            try:
                peer, msg = auth.recv_multipart(self.control, zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(msg) < 3:
                continue
            ident, kind = msg[0], msg[1]
            if kind == wire.STOP:
                reason = auth.operator_refusal(peer)
                if reason is not None:
                    self.control.send_multipart([ident, wire.ERROR, wire.pack(
                        auth.refused_body(reason, "oracle: STOP"))])
                    continue
                self.running = False
                body = {"stopping": True}
            elif kind == wire.PING:
                body = self.status()
            else:
                body = {"error": f"unknown message kind {kind[:32]!r}"}
            self.control.send_multipart([ident, wire.PONG, wire.pack(body)])

    def serve(self) -> None:
        interval = self.conf["interval_ms"] / 1000
        due = time.monotonic()
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        while self.running:
            now = time.monotonic()
            if now >= due:
                self.tick()
                due += interval
                if due < now:            # a long stall: do not send a burst to catch up
                    due = now + interval
            for prod in self.producers:
                if prod.next_ss is not None:
                    try:
                        prod.poll(0)
                    except Refused as exc:
                        self.refused += 1
                        log.warning("refused: %s", exc)
            poller.poll(max(1, min(100, int((due - time.monotonic()) * 1000))))
            self.serve_control()

    def close(self) -> None:
        for p in self.producers:
            p.close()
        self.control.close(0)


def main(config_text: str) -> None:
    conf = parse_config(config_text)
    oracle = Oracle(conf)
    signal.signal(signal.SIGTERM, lambda *_: setattr(oracle, "running", False))
    signal.signal(signal.SIGINT, lambda *_: setattr(oracle, "running", False))
    names = ", ".join(f"{s['symbol']} from {s['start_ticks']} ticks" for s in conf["symbols"])
    kind = ("fair marks (index x (1 + funding basis))" if conf["mark"] == "fair"
            else "marks equal to the index")
    print(f"oracle ready: {kind} of a SIMULATED index ({LABEL}, seed {conf['seed']}), not a "
          f"real feed: {names}, every {conf['interval_ms']} ms into "
          f"{', '.join(oracle.streams)} as source {conf['source']:#x}", flush=True)
    if oracle.intervals:
        at = ", ".join(f"{oracle.names[w.symbol_id]} at {w.price} ticks" for w in oracle.walks)
        print(f"oracle: the walk resumed where it stood after {oracle.intervals} intervals "
              f"({at})", flush=True)
    try:
        oracle.serve()
    finally:
        oracle.close()
