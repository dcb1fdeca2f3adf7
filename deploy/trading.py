"""Operator actions on the order path of a running cluster (docs/order-path.md), for `seqex
account` and for the demo users `seqex up` creates on first start.

* **Users** live in the gateway's accounts file (gateway/accounts.py: scrypt hashes, mode
  0600). ``create_user`` adds one; all of a user's accounts must be in one shard
  (``account % n_shards`` equal), which the accounts module checks.
* **Deposits and withdrawals** are operator records (kinds 71/72, ``<QIq`` transfer id,
  account, amount in minor units = 1e-8 USDT) through the log into in.te.(account % n_shards),
  from an operator source id locked by deploy/client.py's Client (the TradingEngine takes
  transfers only from the operator; with keys, only the operator key may use those ids). The outcome is read from out.te.N at the record's own seq: a
  Transfer event (applied, with the balance after), a RequestRejected (with its reason), or
  nothing (a transfer id the shard has answered before: a repeat is a no-op, so a retry with
  the same id never moves money twice).
* **Demo users** (the default topology): alice (accounts 2, 4: shard 0 of 2) and bob (3, 5:
  shard 1), random passwords printed once by `seqex up` and kept for `seqex client` in
  ``<data>/demo-users.json`` (mode 0600); 100,000 USDT deposited on each account with the fixed
  transfer ids 1 .. 4, so a restart does not deposit twice.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from deploy import decode
from tradingengine import codec as te

MINOR = Decimal(10) ** 8
DEMO_FILE = "demo-users.json"
FUND_FILE = "insurance-fund.json"   # the topology's insurance fund was deposited on first start
DEMO_USERS = {"alice": [2, 4], "bob": [3, 5]}
DEMO_DEPOSIT = "100000"
MAX_AMOUNT = (1 << 62) - 1


class TradingError(ValueError):
    """An operator action that cannot be done; the message is one line."""


def minor_units(amount: object) -> int:
    """An amount of USDT (a decimal string, int or Decimal) in minor units (1e-8)."""
    if isinstance(amount, float | bool):
        raise TradingError(f"amount {amount!r}: give a decimal like \"1000.5\"")
    from gateway.client import plain_decimal
    if isinstance(amount, str) and not plain_decimal(amount):
        raise TradingError(f"amount {amount!r} is not a number")
    try:
        d = Decimal(str(amount))
    except InvalidOperation:
        raise TradingError(f"amount {amount!r} is not a number") from None
    if not d.is_finite() or d <= 0:
        raise TradingError(f"amount {amount} must be positive")
    m = d * MINOR
    if m != m.to_integral():
        raise TradingError(f"amount {amount} has more than 8 decimal places (1e-8 USDT)")
    if m > MAX_AMOUNT:
        raise TradingError(f"amount {amount} is too large")
    return int(m)


def usdt(minor: int) -> str:
    """Minor units as USDT for a person: two decimals, or every one it has beyond them, with
    thousands separators either way (100,001.005)."""
    return f"{Decimal(minor) / MINOR:,.2f}" if minor % 10**6 == 0 else \
        f"{(Decimal(minor) / MINOR).normalize():,f}"


def _trading(topo) -> dict:
    if not getattr(topo, "trading", None):
        raise TradingError("this cluster has no order path (its topology has no [trading] "
                           "table)")
    return topo.trading


def accounts_path(topo) -> str:
    return _trading(topo).get("accounts") or os.path.join(topo.data_dir, "accounts.json")


def create_user(topo, name: str, accounts: list[int], password: str | None = None,
                replace: bool = False):
    """Add a user to the accounts file; returns (User, password). A user of that name is
    refused unless ``replace``: replacing takes its accounts (and the money and positions in
    them) away from whoever logs on with the old password, so it is never a side effect of a
    mistyped name."""
    from gateway import accounts as acc
    if password == "":
        raise TradingError("an empty password: give one, or leave --password out for a "
                           "random one")
    password = password or secrets.token_urlsafe(12)
    path = accounts_path(topo)
    try:
        if not replace and os.path.exists(path):
            old = acc.load(path).user(name)
            if old is not None:
                raise TradingError(
                    f"user {name!r} exists (accounts {', '.join(map(str, old.accounts))}); "
                    f"--replace gives it a new password and these accounts")
        user = acc.add_user(path, name, password, accounts,
                            n_shards=_trading(topo)["n_shards"])
    except acc.AccountsError as exc:
        raise TradingError(str(exc)) from None
    return user, password


def user_accounts(topo, name: str) -> list[int]:
    """The accounts the accounts file gives user ``name`` now ([] when none, or no file)."""
    from gateway import accounts as acc
    try:
        old = acc.load(accounts_path(topo)).user(name)
    except (acc.AccountsError, OSError):
        return []
    return list(old.accounts) if old is not None else []


def _operator_client(data_dir: str):
    """deploy/client.py's Client on an operator source id (the TradingEngine takes deposits
    and withdrawals only from those), locked like any client's: the tools' default one, else
    the next free one."""
    from deploy.client import Client, SourceInUse
    from mq.sources import OPERATOR_SOURCE, OPERATOR_SOURCE_MIN
    for source in (OPERATOR_SOURCE, *range(OPERATOR_SOURCE_MIN + 0x100,
                                           OPERATOR_SOURCE_MIN + 0x200)):
        try:
            return Client(data_dir, source=source)
        except SourceInUse:
            continue
    raise TradingError("every operator source id of this tool is in use by another client")


@dataclass(frozen=True)
class TransferOutcome:
    account: int
    transfer_id: int
    kind: str                  # deposit / withdrawal
    applied: bool
    repeat: bool = False       # the shard had answered this transfer id before: no-op
    balance_minor: int | None = None
    reason: str = ""

    def line(self) -> str:
        what = f"{self.kind} {self.transfer_id} on account {self.account}"
        if self.repeat:
            return (f"{what}: nothing changed, the shard answered transfer id "
                    f"{self.transfer_id} before (a retry of that transfer, which the first "
                    f"answer settled; for a new one give another --transfer-id)")
        if not self.applied:
            return f"{what} refused: {self.reason}"
        return f"{what} done: balance {usdt(self.balance_minor or 0)} USDT"


def _operator_record(data_dir: str, streams: dict, kind: int, payload: bytes, what: str,
                     timeout_s: float) -> bytes | None:
    """One record of ``kind`` into ``streams["in"]`` from a locked operator source id; the
    payload of the engine's output record at the same seq on ``streams["out"]`` (None when
    the out stream has none there: a record the engine answered before)."""
    from deploy.client import ClientError
    from mq.control import ping, replay
    from mq.producer import Producer, Refused
    from mq.record import decode
    with _operator_client(data_dir) as client:   # a locked operator source id
        if ping(streams["producers"], timeout_s=min(5.0, timeout_s)) is None:
            raise ClientError(f"the sequencer of {streams['in']} does not answer on "
                              f"{streams['producers']} (`seqex status`)")
        prod = Producer(client.source, streams["producers"])
        try:
            try:
                prod.connect(timeout_s)
            except Refused as exc:
                raise ClientError(f"the sequencer of {streams['in']} refused the operator's "
                                  f"source {client.source}: {exc}") from None
            first, last = prod.submit(kind, [payload])
            seq = prod.seqs(first, last, timeout_s)[0]
        finally:
            prod.close()
    if seq is None:
        raise ClientError(f"{streams['in']} acknowledged the {what} without its seq; find it "
                          f"with `seqex replay {streams['in']}`")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for rep in streams["replicators"]:
            try:
                recs = [r for f in replay(rep, streams["out"], seq, seq, timeout_s=2.0)
                        for r in decode(f)]
            except (TimeoutError, OSError):
                continue
            if recs:
                return bytes(recs[0][6])
        time.sleep(0.1)
    raise TimeoutError(f"no outcome of the {what} on {streams['out']} at seq {seq} within "
                       f"{timeout_s:g} s (`seqex status`)")


def release_gateway(data_dir: str, topo, g: int, timeout_s: float = 30.0,
                    done: list[str] | None = None) -> list[str]:
    """GatewayStart(g) into every in.te.N not yet in ``done`` from the operator, for a gateway
    that is not coming back (the supervisor gave up on it): every session still bound to one
    of its connections ends as a disconnect, as when the gateway itself starts again. The
    engines hear of a lost connection only from the gateway that held it: until then those
    sessions were refused at every other gateway (LogonReject 2) and their cancel-on-disconnect
    never fired. Each stream is appended to ``done`` (returned) as it is done; a shard that
    does not answer raises what _operator_record raises, ``done`` holding the earlier ones."""
    from tradingengine import codec as tc
    done = [] if done is None else done
    for sh in _trading(topo)["shards"]:
        if sh["in"] in done:
            continue
        _operator_record(data_dir, sh, tc.GATEWAY_START, tc.gateway_start(g),
                         f"release of gateway {g}", timeout_s)
        done.append(sh["in"])
    return done


def transfer(data_dir: str, topo, account: int, amount_minor: int, withdraw: bool = False,
             transfer_id: int | None = None, timeout_s: float = 15.0) -> TransferOutcome:
    """One Deposit/Withdraw through in.te.(account % n_shards); waits for its outcome."""
    t = _trading(topo)
    if not 0 < account < 1 << 32:
        raise TradingError(f"account {account} must be in 1 .. 2**32-1")
    shard = t["shards"][account % t["n_shards"]]
    tid = transfer_id if transfer_id is not None else time.time_ns() // 1000
    kind = te.WITHDRAW if withdraw else te.DEPOSIT
    name = "withdrawal" if withdraw else "deposit"
    out = _operator_record(data_dir, shard, kind, te.TRANSFER_S.pack(tid, account, amount_minor),
                           name, timeout_s)
    for e in te.decode_events(out):
        if e[0] == te.TRANSFER and e[1] == tid:
            return TransferOutcome(account, tid, name, True, balance_minor=e[4])
        if e[0] == te.REQUEST_REJECTED and e[5] == tid:
            return TransferOutcome(account, tid, name, False,
                                   reason=decode.reject_text(e[1]))
    return TransferOutcome(account, tid, name, False, repeat=True)


def fund_deposit(data_dir: str, topo, amount_minor: int, transfer_id: int,
                 timeout_s: float = 15.0) -> str:
    """One FundDeposit (kind 90, ``<Qq`` transfer id, amount) into in.liq from an operator
    source; returns its outcome as a line, read from out.liq at the record's own seq."""
    from liqengine import codec as lc
    liq = _trading(topo).get("liq")
    if not liq:
        raise TradingError("this cluster has no LiqEngine ([trading] liq = false)")
    out = _operator_record(data_dir, liq, lc.FUND_DEPOSIT,
                           lc.fund_deposit(transfer_id, amount_minor),
                           "insurance fund deposit", timeout_s)
    for e in lc.decode_events(out):
        if e[0] == lc.FUND_CHANGED:
            return f"insurance fund deposit {transfer_id} done: fund {usdt(e[1])} USDT"
        if e[0] == lc.REJECTED:
            return (f"insurance fund deposit {transfer_id} refused: "
                    f"{decode.reject_text(e[1])}")
    return (f"insurance fund deposit {transfer_id}: nothing changed, the LiqEngine answered "
            f"this transfer id before")


# -- the demo users of the default topology ----------------------------------------------------

def demo_path(data_dir: str) -> str:
    return os.path.join(os.path.abspath(data_dir), DEMO_FILE)


def demo_passwords(data_dir: str) -> dict[str, str]:
    """{user: password} of the demo users file; {} when it is missing or damaged (then
    `seqex client` asks for --password)."""
    try:
        with open(demo_path(data_dir), encoding="utf-8") as f:
            passwords = json.load(f).get("passwords", {})
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(passwords, dict):
        return {}
    return {u: p for u, p in passwords.items() if isinstance(p, str)}


def _write_demo(data_dir: str, doc: dict) -> None:
    write_private_json(demo_path(data_dir), doc)


def write_private_json(path: str, doc: dict) -> None:
    """``doc`` into ``path`` (mode 0600: it holds passwords), whole or not at all."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ensure_demo_users(topo) -> dict[str, str] | None:
    """On first start (no accounts file yet): alice and bob with random passwords. Returns
    {name: password} when it created them (to print once), else None."""
    t = getattr(topo, "trading", None)
    if not t or not t.get("demo_accounts") or os.path.exists(accounts_path(topo)):
        return None
    n = t["n_shards"]
    made = {}
    for name, accts in DEMO_USERS.items():
        if len({a % n for a in accts}) != 1:   # a topology of another shard count
            accts = [a for a in range(1, 200) if a % n == accts[0] % n][:2]
        _user, made[name] = create_user(topo, name, accts)
    _write_demo(topo.data_dir, {"passwords": made, "deposited": False})
    return made


def demo_deposits(topo, log=print) -> None:
    """Deposit on every demo account once (fixed transfer ids: a restart repeats them and the
    TradingEngine answers a repeat with nothing)."""
    t = getattr(topo, "trading", None)
    path = demo_path(topo.data_dir)
    if not t or not t.get("demo_accounts") or not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if doc.get("deposited"):
        return
    from gateway import accounts as acc
    users = acc.load(accounts_path(topo)).users
    tid = 0
    for name in DEMO_USERS:
        if name not in users:
            continue
        for account in users[name].accounts:
            tid += 1
            out = transfer(topo.data_dir, topo, account, minor_units(DEMO_DEPOSIT),
                           transfer_id=tid)
            log(f"  demo: {name}: {out.line()}")
    doc["deposited"] = True
    _write_demo(topo.data_dir, doc)


def first_start_deposits(topo, log=print) -> None:
    """What `seqex up` deposits on a cluster's first start: the insurance fund the topology
    names (`[trading] insurance_fund`, demo accounts or not: it was deposited only with them,
    and a cluster without them started with an empty fund), then the demo users' accounts."""
    t = getattr(topo, "trading", None) or {}
    fund = (t.get("liq") or {}).get("insurance_fund", 0)
    marker = os.path.join(os.path.abspath(topo.data_dir), FUND_FILE)
    if fund and not os.path.exists(marker):
        # transfer id 1: a repeat (a start that died before the marker) changes nothing
        log(f"  {fund_deposit(topo.data_dir, topo, fund, transfer_id=1)}")
        write_private_json(marker, {"deposited": fund})
    demo_deposits(topo, log)
