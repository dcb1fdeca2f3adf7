"""`seqex client`: trade through the gateway from a terminal, as a person reads it.

    seqex client --user alice buy BTCUSDT 0.01 @ 50000
    seqex client --user alice sell ETHUSDT 0.5            (no price: a market order)
    seqex client --user alice amend BTCUSDT 3 0.02 @ 49990 (order 3: the number shown as [order 3])
    seqex client --user alice cancel BTCUSDT 3
    seqex client --user alice cancel-all [SYMBOL]
    seqex client --user alice watch                        (reports as they come; Ctrl-C ends)
    seqex client --user alice positions                    (balances, margin, positions)

Each invocation logs on to the gateway (the running cluster's, from ``<data>/seqex.json``, or
``--gateway HOST:PORT``), resuming the user's one session, whose state (gateway/client.py) is
kept in ``<data>/clients/<user>.session.json``: consecutive invocations are one session, so
the reports of earlier orders that arrived meanwhile (fills of a resting order) are printed
too, each exactly once. The orders this user entered from here (symbol and side, for amend
and cancel) are in ``<data>/clients/<user>.orders.json``. Prices and quantities are in the
contract's units (USDT, the base asset), never ticks or lots.

Password: ``--password``, else ``SEQEX_PASSWORD``, else the demo password `seqex up` printed
for alice and bob (``<data>/demo-users.json``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.parse
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway import client as sdk
# asyncio and the SDK are imported where a session runs: register() is called by every
# `seqex` command, the replica's and the sequencer's too, and they cost those processes about
# 50 ms of start-up.

MINOR = Decimal(10) ** 8


class TraderError(ValueError):
    """Bad input or an unusable setup: one line, exit status 2."""


def _host_port(text: str) -> str:
    """--gateway's value, checked whatever the verb (positions, which reads a replica, took
    any text without a word)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: HOST:PORT")
    return text


def register(sub) -> None:
    s = sub.add_parser("client", help="trade through the gateway: buy, sell, amend, cancel, "
                                      "watch")
    s.add_argument("--user", required=True, help="a user of the accounts file (demo: alice, "
                                                 "bob)")
    s.add_argument("--password", help="default: $SEQEX_PASSWORD, else the demo password")
    s.add_argument("--gateway", type=_host_port,
                   help="HOST:PORT (default: the running cluster's)")
    s.add_argument("--data", default="seqex-data")
    s.add_argument("--wait", type=float, default=None,
                   help="seconds to wait for reports (default 5; watch: until Ctrl-C)")
    s.add_argument("--account", type=int, default=0, help="account (default: the user's "
                                                          "default account)")
    # no "day": the TradingEngine refuses TIF Day (unsupported, docs/tradingengine.md)
    s.add_argument("--tif", choices=["gtc", "ioc", "fok", "day"],
                   help="time in force of a new order (default gtc); an amend keeps the "
                        "order's own")
    s.add_argument("--post-only", action="store_true")
    s.add_argument("--side", choices=["buy", "sell"], help="amend/cancel of an order not "
                                                           "entered from here")
    s.add_argument("action", choices=["buy", "sell", "amend", "cancel", "cancel-all", "watch",
                                      "positions"])
    s.add_argument("words", nargs="*", help="SYMBOL QTY [@ PRICE] | SYMBOL ORDER QTY @ PRICE "
                                            "| SYMBOL ORDER | [SYMBOL]")


def _price(words: list[str], what: str) -> str | None:
    """[] -> None (market); ["@", "100"], ["100"], ["@100"] -> "100"."""
    joined = " ".join(words)
    text = joined.replace("@", " ").split()
    if not text:
        if "@" in joined:   # `buy BTCUSDT 0.01 @`: a price was meant, not a market order
            raise TraderError(f"{what}: expected PRICE after @")
        return None
    if len(text) > 1:
        raise TraderError(f"{what}: expected QTY [@ PRICE], got extra words {' '.join(text[1:])!r}")
    return text[0]


def parse_action(a: argparse.Namespace) -> dict:
    w = list(a.words)
    act = a.action
    usage = {"buy": "buy SYMBOL QTY [@ PRICE]", "sell": "sell SYMBOL QTY [@ PRICE]",
             "amend": "amend SYMBOL ORDER QTY @ PRICE", "cancel": "cancel SYMBOL ORDER",
             "cancel-all": "cancel-all [SYMBOL]", "watch": "watch",
             "positions": "positions"}[act]
    try:
        if act in ("buy", "sell"):
            if len(w) < 2:
                raise IndexError
            return {"symbol": w[0].upper(), "qty": w[1], "price": _price(w[2:], usage)}
        if act == "amend":
            price = _price(w[3:], usage)
            if len(w) < 4 or price is None:
                raise IndexError
            return {"symbol": w[0].upper(), "order": _order(w[1]), "qty": w[2], "price": price}
        if act == "cancel":
            if len(w) != 2:
                raise IndexError
            return {"symbol": w[0].upper(), "order": _order(w[1])}
        if act == "cancel-all":
            if len(w) > 1:
                raise IndexError
            return {"symbol": w[0].upper() if w else None}
        if w:
            raise IndexError
        return {}
    except IndexError:
        raise TraderError(f"usage: seqex client --user NAME {usage}") from None


def _order(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 1 << 64:
        raise TraderError(f"order {text!r}: the number shown as [order N]")
    return int(text)


def _setup(a: argparse.Namespace) -> tuple[str, int, dict, str, dict]:
    """(host, port, instruments, state directory, limits): limits, from the running
    cluster's contracts, is {symbol: (largest price, largest quantity)} in contract units
    ({} when the cluster's topology is not at hand)."""
    from deploy import topology
    from deploy.supervisor import NotUp, read_state
    trading = None
    limits: dict = {}
    try:
        topo, _pid = read_state(a.data)
        trading = topo.trading
        for name, st in (topo.symbols or {}).items():
            spec = st.get("spec") if isinstance(st, dict) else None
            if isinstance(spec, dict) and {"max_price", "max_qty"} <= spec.keys():
                limits[name] = (spec["max_price"] * Decimal(str(st["tick_size"])),
                                spec["max_qty"] * Decimal(str(st["lot_size"])))
    except NotUp:
        if not a.gateway:
            raise
    if trading is None:
        if not a.gateway:
            raise TraderError(f"the cluster in {a.data} has no gateway (its topology has no "
                              f"[trading] table)")
        trading = topology.load().trading        # the default topology's instruments
    addr = a.gateway or trading.get("gateway")
    if not addr:
        raise TraderError("the cluster runs no gateway; give --gateway HOST:PORT")
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TraderError(f"--gateway {addr!r}: HOST:PORT")
    instruments = {i["symbol"]: (i["security_id"], i["tick"], i["lot"])
                   for i in trading["instruments"]}
    return host, int(port), instruments, os.path.join(os.path.abspath(a.data), "clients"), limits


def _within_limits(action: dict, limits: dict) -> None:
    """An order beyond its contract's largest price or quantity is refused here, in words
    (the engine's ExecutionReport can only say "other" or "incorrect quantity")."""
    lim = limits.get(action.get("symbol"))
    if lim is None:
        return
    max_price, max_qty = lim
    for key, top, what in (("price", max_price, "price"), ("qty", max_qty, "quantity")):
        text = action.get(key)
        if text is None:
            continue
        try:
            value = Decimal(text)
        except InvalidOperation:
            continue       # the SDK says what is wrong with it
        if value.is_finite() and value > top:
            raise TraderError(f"{action['symbol']}: {what} {text} is above the contract's "
                              f"largest, {top.normalize():f}")


def _password(a: argparse.Namespace) -> str:
    if a.password is not None:
        if not a.password:   # (it fell back to the demo password, and logged on)
            raise TraderError("--password is empty")
        return a.password
    if "SEQEX_PASSWORD" in os.environ:
        if not os.environ["SEQEX_PASSWORD"]:
            raise TraderError("SEQEX_PASSWORD is empty (unset it for the demo password)")
        return os.environ["SEQEX_PASSWORD"]
    from deploy.trading import demo_passwords, demo_path
    passwords = demo_passwords(a.data)
    pw = passwords.get(a.user)
    if pw is None:
        path = demo_path(a.data)
        if not os.path.exists(path):
            where = f"{a.user} is no demo user of the cluster in {a.data}"
        elif passwords:
            where = (f"{a.user} is no demo user (the demo users: "
                     f"{', '.join(sorted(passwords))})")
        else:
            where = f"{path} is damaged"
        raise TraderError(f"no password for {a.user}: {where}; give --password or set "
                          "SEQEX_PASSWORD")
    return pw


def _lock(path: str) -> int:
    from deploy.supervisor import LockHeld, pid_lock
    try:
        return pid_lock(path, 0o600)
    except LockHeld as held:
        raise TraderError(f"another `seqex client` of this user is running (pid {held}); "
                          f"one session is one connection at a time") from None


def run(a: argparse.Namespace) -> int:
    import logging
    logging.getLogger("seqex.client").setLevel(logging.WARNING)   # the SDK's reconnect notes
    if not a.user or len(a.user.encode()) > 16:
        raise TraderError(f"--user {a.user!r}: 1 to 16 bytes")
    if a.wait is not None and not 0 <= a.wait <= 86_400:
        raise TraderError(f"--wait {a.wait}: seconds in 0 .. 86400")
    action = parse_action(a)
    if a.action == "positions":
        if a.gateway:
            # (it printed the balances as if the gateway named had answered them)
            print(f"seqex client: positions come from the TradingEngine replicas of the cluster "
                  f"in {a.data}, not from a gateway: --gateway is not used", file=sys.stderr)
        return positions(a)
    host, port, instruments, state_dir, limits = _setup(a)
    if "symbol" in action and action["symbol"] is not None \
            and action["symbol"] not in instruments:
        raise TraderError(f"unknown symbol {action['symbol']} (this cluster trades "
                          f"{', '.join(sorted(instruments))})")
    _within_limits(action, limits)
    password = _password(a)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    # (a name is a file name here: quoted, so that no name reaches outside state_dir)
    base = os.path.join(state_dir, urllib.parse.quote(a.user, safe="@+"))
    lock = _lock(base + ".lock")
    sent: dict = {}   # the request this invocation sent, once it is in the session's outbox
    try:
        import asyncio
        return asyncio.run(_session(a, action, host, port, instruments, base, password, sent))
    except KeyboardInterrupt:
        if a.action == "watch":
            return 0   # Ctrl-C is how a watch ends (it says so when it starts)
        print(f"seqex client: interrupted: {_interrupted(a, action, sent)}", file=sys.stderr)
        return 130
    finally:
        os.close(lock)


def _interrupted(a: argparse.Namespace, action: dict, sent: dict) -> str:
    """What an interrupted invocation leaves behind, and how to look at it."""
    if "cl_ord_id" not in sent:
        return "nothing was sent"
    what = f"{a.action} {action.get('symbol') or 'all symbols'}"
    if "qty" in action:
        what += f" {action['qty']}" + (f" @ {action['price']}" if action["price"] else "")
    from deploy.cli import data_option
    return (f"{what} [order {sent['cl_ord_id']}] (its ClOrdID) was sent; its outcome is "
            f"unknown. It stays in the session: `seqex client{data_option(a)} --user {a.user} "
            "watch` shows its reports; do not send it again before you have looked")


def _orders(base: str) -> dict:
    try:
        with open(base + ".orders.json", encoding="utf-8") as f:
            orders = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(orders, dict):
        return {}      # damaged: the orders entered from here are forgotten (--side then)
    return {k: v for k, v in orders.items() if isinstance(v, dict)}


def _save_orders(base: str, orders: dict) -> None:
    tmp = base + ".orders.json.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(orders, f)
    os.replace(tmp, base + ".orders.json")


async def _session(a, action: dict, host: str, port: int, instruments: dict, base: str,
                   password: str, sent: dict | None = None) -> int:
    from gateway import client as sdk
    try:
        c = sdk.Client(host, port, a.user, password, base + ".session.json", instruments,
                       reconnect=False, connect_timeout_s=15.0)
    except sdk.SessionError as exc:   # a damaged or foreign session file: the user acts
        raise TraderError(str(exc)) from None
    orders = _orders(base)
    mine: int | None = None
    # a refusal worth another try (the gateway not open: its TradingEngine did not answer in
    # time, as while a shard fails over; the session still bound to a connection going away)
    # is tried again until --wait is over, as the SDK does when it reconnects by itself
    retry = tuple(f"logon refused: {why}" for why in sdk.RETRY_REJECTS.values())
    until = time.monotonic() + (a.wait if a.wait is not None else 5.0)
    try:
        while True:
            try:
                await c.connect()
                break
            except ConnectionError:
                raise TraderError(f"the gateway at {host}:{port} does not answer "
                                  f"(`seqex status`)") from None
            except sdk.SessionError as exc:
                if not str(exc).startswith(retry) or time.monotonic() >= until:
                    raise TraderError(str(exc)) from None
            await c.close(logout=False)
            await asyncio.sleep(min(0.5, max(0.0, until - time.monotonic())))
            c = sdk.Client(host, port, a.user, password, base + ".session.json", instruments,
                           reconnect=False, connect_timeout_s=15.0)
        act = a.action
        if act in ("buy", "sell"):
            tif = a.tif or "gtc"
            mine = await c.new_order(action["symbol"], act, action["qty"], action["price"],
                                     tif, a.account, a.post_only)
            orders[str(mine)] = {"symbol": action["symbol"], "side": act, "tif": tif}
            _save_orders(base, orders)
        elif act in ("amend", "cancel"):
            known = orders.get(str(action["order"]))
            side = a.side or (known or {}).get("side")
            if side is None:
                raise TraderError(f"order {action['order']} was not entered from here; give "
                                  f"--side buy|sell")
            if act == "amend":
                # a replace carries the order's own time in force (it cannot change it)
                tif = a.tif or (known or {}).get("tif") or "gtc"
                mine = await c.amend(action["symbol"], action["order"], side, action["qty"],
                                     action["price"], tif)
                # the amended order goes by the amend's ClOrdID from now on (FIX)
                orders[str(mine)] = {"symbol": action["symbol"], "side": side, "tif": tif}
                _save_orders(base, orders)
            else:
                mine = await c.cancel(action["symbol"], action["order"], side)
        elif act == "cancel-all":
            mine = await c.mass_cancel(action["symbol"])
        if mine is not None and sent is not None:
            sent["cl_ord_id"] = mine
        return await _print_reports(a, c, mine)
    except ValueError as exc:   # a quantity or price off the contract's grid
        raise TraderError(str(exc)) from None
    finally:
        await c.close()


async def _print_reports(a, c: sdk.Client, mine: int | None) -> int:
    from gateway import client as sdk
    watch = a.action == "watch"
    wait_s = a.wait if a.wait is not None else (None if watch else 5.0)
    deadline = None if wait_s is None else time.monotonic() + wait_s
    settle_s = 0.5               # after our order's first report, its fills follow at once
    answered_at = None
    accepted = None   # our order's New report, printed once it is known whether it rests
    status = 0
    if watch:
        print(f"{a.user}: watching session {c.session_id} (Ctrl-C ends)", flush=True)
    try:
        while True:
            now = time.monotonic()
            ends = [t for t in (deadline, None if answered_at is None else answered_at + settle_s)
                    if t is not None]
            left = min(ends) - now if ends else None
            if left is not None and left <= 0:
                break
            try:
                r = await c.next_report(timeout_s=left)
            except TimeoutError:
                break
            except sdk.SessionError as exc:   # the gateway ended the session: a refusal
                if accepted is not None:
                    print(sdk.describe(a.user, accepted, c.instruments), flush=True)
                print(f"{a.user}: {exc}", flush=True)
                return 2
            ours = mine is not None and (getattr(r, "cl_ord_id", None) == mine
                                         or getattr(r, "ref_id", None) == mine)
            if accepted is not None and ours:
                # the order's next report came at once: it did not rest as it was accepted
                print(sdk.describe(a.user, accepted, c.instruments, resting=False), flush=True)
                accepted = None
            if ours and not watch and getattr(r, "exec_type", "") == "new":
                accepted = r   # resting or not: the next moments tell (a fill follows at once)
            else:
                print(sdk.describe(a.user, r, c.instruments), flush=True)
            if ours:
                answered_at = time.monotonic()
                if getattr(r, "exec_type", "") == "rejected" or isinstance(
                        r, sdk.BusinessReject | sdk.CancelReject):
                    status = 2   # refused, as every refusal (docs/operations.md, exit statuses)
    except (KeyboardInterrupt, asyncio.CancelledError):
        # the SDK counts a report handled once the next is asked for: the acceptance held
        # back (to tell whether it rests) is printed before the interrupt ends it, or an
        # interrupted invocation lost it for good (the next one starts after it)
        if accepted is not None:   # (whether it rests is not known yet)
            print(sdk.describe(a.user, accepted, c.instruments, resting=False), flush=True)
        raise
    if accepted is not None:   # nothing followed the order's acceptance: it rests
        print(sdk.describe(a.user, accepted, c.instruments), flush=True)
    if mine is not None and answered_at is None:
        print(f"{a.user}: request [order {mine}] sent; no answer within {wait_s:g} s (it "
              f"stays in the session: the next `seqex client` shows it)", flush=True)
        return 2   # an outcome that did not come in time (docs/operations.md, exit statuses)
    return status


# -- positions: the TradingEngine's latest word on the user's accounts -------------------------

def _usdt(minor: int) -> str:
    return f"{Decimal(minor) / MINOR:,.2f}"


def positions(a: argparse.Namespace) -> int:
    """The user's balances, margin and positions (or --account's alone) as its shard's
    TradingEngine holds them now: asked of a replica of the shard (hot first) over its control
    endpoint with the operator's key (PROTOCOL.md order entry has no position message), so an
    order's margin shows as soon as the order is accepted, whatever the log's length."""
    from deploy.supervisor import read_state
    from gateway import accounts as acc
    from mq import control, wire
    topo, _pid = read_state(a.data)
    t = topo.trading
    if not t:
        raise TraderError(f"the cluster in {a.data} has no TradingEngines")
    try:
        users = acc.load(t["accounts"])
    except acc.AccountsError as exc:
        raise TraderError(str(exc)) from None
    if users.user(a.user) is None:
        raise TraderError(f"no user {a.user!r} in {t['accounts']}")
    # the same credentials as a logon: the view is read with the operator's key, but it is
    # the user's, and shown only to whoever knows their password
    user = users.verify(a.user, _password(a))
    if user is None:
        raise TraderError("logon refused: bad credentials")
    wanted = list(user.accounts)
    if a.account:
        if a.account not in wanted:
            raise TraderError(f"account {a.account} is not {a.user}'s (theirs: "
                              f"{', '.join(map(str, wanted))})")
        wanted = [a.account]
    specs = {i["security_id"]: (i["symbol"], Decimal(i["tick"]), Decimal(i["lot"]))
             for i in t["instruments"]}
    views: dict[int, dict] = {}     # by account: its replica's view_accounts entry
    for n, shard in enumerate(t["shards"]):
        mine = [x for x in wanted if x % t["n_shards"] == n]
        if not mine:
            continue
        replicas = sorted((p for p in topo.procs
                           if p.role.startswith("replica-") and p.stream == shard["in"]),
                          key=lambda p: p.role != "replica-hot")
        why = []        # each replica's failure, for the line that says none answered
        behind = None   # the freshest answer of a replica still replaying the log
        for p in replicas:
            try:
                kind, body, _ = control.call(p.control, wire.QUERY, {"accounts": mine},
                                             timeout_s=2.0, refused_ends=True)
            except (TimeoutError, OSError) as exc:
                why.append(f"{p.name}: {exc}")
                continue
            if kind != wire.PONG or "error" in body:
                # a refusal (not the operator's key) or an engine that answers no QUERY: say
                # so, not that the replica is down
                why.append(f"{p.name}: {body.get('error', kind.decode('ascii', 'replace'))}")
                continue
            if body.get("catching_up"):
                # restarted from an older snapshot: a replica that is up to date comes first
                if behind is None or body.get("seq", 0) > behind.get("seq", 0):
                    behind = body
                why.append(f"{p.name}: catching up (seq {body.get('seq')})")
                continue
            break
        else:
            if behind is None:
                raise TraderError(f"no TradingEngine replica of {shard['in']} answers "
                                  f"(`seqex status`): "
                                  f"{'; '.join(why) or 'none in the topology'}")
            body = behind
            print(f"{a.user}: note: every replica of {shard['in']} is catching up with the "
                  f"log; these figures are as of its seq {body.get('seq')}")
        views.update((v["account"], v) for v in body.get("accounts", []))
    for account in wanted:
        v = views.get(account)
        if v is None:
            print(f"{a.user}: account {account}: nothing yet (no deposit)")
            continue
        order_m, pos_m = v["order_margin"], v["position_margin"]
        print(f"{a.user}: account {account}: balance {_usdt(v['balance'])} USDT, available "
              f"{_usdt(v['available'])}, margin {_usdt(order_m + pos_m)} (orders "
              f"{_usdt(order_m)}, positions {_usdt(pos_m)})")
        marks = dict(map(tuple, v.get("marks", [])))
        for sid, size, cost, margin, liq, _bk, realised, lev, mode in sorted(v["positions"]):
            if sid not in specs:
                continue
            sym, tick, lot = specs[sid]
            if size == 0 and realised == 0:
                continue        # an order's leverage setting; never traded
            if size == 0:
                print(f"{a.user}: account {account}: {sym} flat, realised PnL "
                      f"{_usdt(realised)} USDT")
                continue
            value = tick * lot * MINOR        # minor units per tick per lot
            entry = Decimal(cost) / (Decimal(size) * value) * tick
            side = "long" if size > 0 else "short"
            liq_text = f", liquidation {liq * tick:,.2f}" if liq else ""
            mark = marks.get(sid)
            # unrealised PnL at the mark: what closing the whole position there would realise
            upnl = "" if mark is None else (f", mark {mark * tick:,.2f}, unrealised PnL "
                                            f"{_usdt(size * mark * value - cost)} USDT")
            print(f"{a.user}: account {account}: {sym} {side} {abs(size) * lot:f} @ "
                  f"{entry:,.2f} entry{upnl}, margin {_usdt(margin)} USDT{liq_text}, leverage "
                  f"{Decimal(lev) / 100:g}x {'isolated' if mode else 'cross'}, realised PnL "
                  f"{_usdt(realised)} USDT")
    return 0
