"""`seqex client` (deploy/trader.py) against the scripted fake gateway of
test_gateway_client: it prints reports as a person reads them, in the contract's units;
consecutive invocations resume one session (same SessionID, the next SeqNo); bad input is
one line and exit status 2, never a traceback."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from deploy.cli import main
from tests.unit.test_gateway_client import FakeServer


@pytest.fixture
def gateway():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    srv = FakeServer()
    port = asyncio.run_coroutine_threadsafe(srv.start(), loop).result(10)
    yield srv, f"127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def client(gw, tmp_path, *words, password="pw"):
    args = ["client", "--user", "alice", "--gateway", gw, "--data", str(tmp_path),
            "--wait", "5", *words]
    return main(args + (["--password", password] if password is not None else []))


def test_a_buy_prints_its_reports_and_the_next_invocation_resumes(gateway, tmp_path, capsys):
    srv, gw = gateway
    srv.fills = {1}
    assert client(gw, tmp_path, "buy", "BTCUSDT", "0.010", "@", "50000") == 0
    out = capsys.readouterr().out.splitlines()
    # it traded at once: not 'accepted, resting' (what it left rests: '0.006 left')
    assert out == ["alice: BTCUSDT buy 0.01 @ 50000.00 [order 1] accepted",
                   "alice: BTCUSDT buy 0.01 @ 50000.00 [order 1] filled 0.004 @ 49999.50 "
                   "(taker), 0.006 left"]
    assert client(gw, tmp_path, "cancel", "BTCUSDT", "1") == 0
    out = capsys.readouterr().out
    assert "[order 2] canceled" in out
    assert srv.logons[1][0] == srv.logons[0][0]          # one session
    assert srv.logons[1][1:] == (3, 2)                     # resumes after server message 2
    assert [s for s, _cl, _f in srv.received] == [1, 2]   # nothing sent twice


@pytest.mark.parametrize("words, want", [
    (["buy", "BTCUSDT", "0.0005", "@", "50000"], "not a positive multiple of the lot 0.001"),
    (["buy", "BTCUSDT", "0.001", "@", "50000.25"], "not a positive multiple of the tick 0.5"),
    (["buy", "NOPE", "1", "@", "1"], "unknown symbol NOPE"),
    (["buy", "BTCUSDT"], "usage: seqex client --user NAME buy SYMBOL QTY [@ PRICE]"),
    (["buy", "BTCUSDT", "1", "@", "2", "3"], "extra words"),
    (["buy", "BTCUSDT", "1", "@", "1e20"],
     "BTCUSDT: price 1e20 is beyond the largest price the wire carries (92233720368.54775807)"),
    (["cancel", "BTCUSDT", "x"], "order 'x': the number shown as [order N]"),
    (["cancel", "BTCUSDT", "9"], "order 9 was not entered from here; give --side"),
    (["watch", "x"], "usage: seqex client --user NAME watch"),
    (["positions", "x"], "usage: seqex client --user NAME positions"),
])
def test_bad_input_is_one_line_and_status_2(gateway, tmp_path, capsys, words, want):
    _srv, gw = gateway
    assert client(gw, tmp_path, *words) == 2
    err = capsys.readouterr().err
    assert want in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_wrong_password_and_no_password(gateway, tmp_path, capsys, monkeypatch):
    _srv, gw = gateway
    assert client(gw, tmp_path, "watch", password="bad") == 2
    err = capsys.readouterr().err
    assert "logon refused: bad credentials" in err and err.count("bad credentials") == 1, err
    monkeypatch.delenv("SEQEX_PASSWORD", raising=False)
    assert client(gw, tmp_path, "watch", password=None) == 2
    assert "no password for alice: alice is no demo user" in capsys.readouterr().err
    # a damaged demo file is named as such (it was "no password", as if missing)
    from deploy.trading import demo_path
    for text in ("{not json", "[]", '{"passwords": {"alice": 5}}'):
        with open(demo_path(str(tmp_path)), "w") as f:
            f.write(text)
        assert client(gw, tmp_path, "watch", password=None) == 2
        err = capsys.readouterr().err
        assert "demo-users.json is damaged" in err and err.count("\n") == 1, err
    with open(demo_path(str(tmp_path)), "w") as f:
        f.write('{"passwords": {"alice": "pw", "bob": "pw-b"}}')
    assert main(["client", "--user", "mallory", "--gateway", gw, "--data", str(tmp_path),
                 "watch"]) == 2
    assert "mallory is no demo user (the demo users: alice, bob)" in capsys.readouterr().err
    # an empty --password or SEQEX_PASSWORD is refused, not replaced by the demo password
    assert client(gw, tmp_path, "watch", password="") == 2
    assert "--password is empty" in capsys.readouterr().err
    monkeypatch.setenv("SEQEX_PASSWORD", "")
    assert client(gw, tmp_path, "watch", password=None) == 2
    assert "SEQEX_PASSWORD is empty" in capsys.readouterr().err


def test_no_gateway_and_a_bad_address(tmp_path, capsys):
    assert main(["client", "--user", "a", "--data", str(tmp_path), "watch"]) == 2
    assert "seqex is not up" in capsys.readouterr().err
    # checked whatever the verb: positions reads a replica, and took any text without a word
    for verb in ("watch", "positions"):
        for bad in ("nohost", "127.0.0.1:99999"):
            with pytest.raises(SystemExit) as exit_:   # argparse's: one line, status 2
                main(["client", "--user", "a", "--gateway", bad, "--password", "x",
                      "--data", str(tmp_path), verb])
            assert exit_.value.code == 2
            err = capsys.readouterr().err
            assert f"--gateway: '{bad}': HOST:PORT" in err and err.count("\n") == 1, err


def test_tif_day_is_offered_and_an_amend_keeps_the_orders_own(gateway, tmp_path, capsys):
    """The TradingEngine takes Day orders (they expire at the end of the UTC day), so `seqex
    client --tif day` is accepted. A replace must carry the order's own time in force (the
    engine refuses another), so the client remembers it per order: an amend without --tif
    sends the order's own, and the amended order keeps it (it sent GTC)."""
    srv, gw = gateway
    assert client(gw, tmp_path, "--tif", "day", "buy", "BTCUSDT", "0.010", "@", "50000") == 0
    assert client(gw, tmp_path, "amend", "BTCUSDT", "1", "0.020", "@", "49990") == 0
    assert client(gw, tmp_path, "amend", "BTCUSDT", "2", "0.030", "@", "49980") == 0
    assert client(gw, tmp_path, "buy", "BTCUSDT", "0.010", "@", "50000") == 0
    assert client(gw, tmp_path, "amend", "BTCUSDT", "4", "0.020", "@", "49990") == 0
    assert srv.tifs == [(100, b"0"), (102, b"0"), (102, b"0"), (100, b"1"), (102, b"1")]
    capsys.readouterr()


@pytest.mark.parametrize("text, want", [
    ("{garbage", "cannot be read"),
    ("[1, 2]", "is damaged (not an object)"),
    ('{"session_id": 5, "next_seq": 1, "last_seen": 0}', "is damaged (no next_cl_ord_id)"),
])
def test_a_damaged_session_file_is_one_line_and_status_2(gateway, tmp_path, capsys, text, want):
    """A session file the user (or a crash of another tool) damaged was reported as
    "internal error: SessionError ... (SEQEX_LOG=debug shows the traceback)", status 1: it is
    the user's to fix (move it away), so it is one plain line and status 2."""
    _srv, gw = gateway
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "alice.session.json").write_text(text)
    assert client(gw, tmp_path, "watch") == 2
    err = capsys.readouterr().err
    assert err.startswith("seqex client: session file ") and want in err, err
    assert "move it away" in err or "cannot be read" in err
    assert "internal error" not in err and err.count("\n") == 1


def _fake_cluster(monkeypatch, answers, instruments=None):
    """positions against a two-shard topology (alice: accounts 2 and 4, shard 0) whose
    replicas' QUERY answers are ``answers``: by replica name, a (kind, body) or an exception."""
    from types import SimpleNamespace as NS

    from deploy import supervisor
    from gateway import accounts as acc
    from mq import control, wire
    procs = [NS(name=n, role=f"replica-{r}", stream=s, control=f"tcp://127.0.0.1:{7000 + i}")
             for i, (n, r, s) in enumerate([("te0.hot0", "hot", "in.te.0"),
                                            ("te0.warm0", "warm", "in.te.0"),
                                            ("te1.hot0", "hot", "in.te.1")])]
    trading = {"accounts": "accounts.json", "n_shards": 2, "instruments": instruments or [],
               "shards": [{"in": "in.te.0", "out": "out.te.0"},
                          {"in": "in.te.1", "out": "out.te.1"}]}
    monkeypatch.setattr(supervisor, "read_state",
                        lambda data: (NS(trading=trading, procs=procs), 1))
    monkeypatch.setattr(acc, "load", lambda path: NS(
        user=lambda name: NS(accounts=[2, 4]) if name == "alice" else None,
        verify=lambda name, pw: NS(accounts=[2, 4]) if (name, pw) == ("alice", "pw") else None))
    by_addr = {p.control: p.name for p in procs}

    def call(addr, kind, body=None, timeout_s=2.0, refused_ends=False):
        assert kind == wire.QUERY
        got = answers[by_addr[addr]]
        if isinstance(got, Exception):
            raise got
        return got[0], got[1], []
    monkeypatch.setattr(control, "call", call)


def test_positions_names_why_no_replica_answered(monkeypatch, tmp_path, capsys):
    """A replica that refuses the QUERY (a key that is not the operator's) or answers it with
    an error is not "down": the one line says what each replica said, status 2."""
    from mq import wire
    _fake_cluster(monkeypatch, {
        "te0.hot0": (wire.ERROR, {"error": "refused: te0.hot0: QUERY: not_operator",
                                  "reason": "not_operator"}),
        "te0.warm0": ConnectionRefusedError("tcp://127.0.0.1:7001 refused the connection"),
        "te1.hot0": AssertionError("shard 1 holds none of alice's accounts")})
    assert main(["client", "--user", "alice", "--password", "pw", "--data", str(tmp_path),
                 "positions"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "no TradingEngine replica of in.te.0 answers" in err
    assert "QUERY: not_operator" in err and "te0.warm0: tcp://127.0.0.1:7001 refused" in err


def _answer(seq, balance, catching_up):
    from mq import wire
    return (wire.PONG, {"seq": seq, "catching_up": catching_up, "accounts": [
        {"account": 2, "balance": balance, "available": balance, "order_margin": 0,
         "position_margin": 0, "open_orders": 0, "positions": []}]})


def test_positions_prefers_a_replica_that_is_not_catching_up(monkeypatch, tmp_path, capsys):
    """A hot replica restarted from an older snapshot answers from its state while it replays
    the log: its figures are not the engine's latest. A replica that is up to date is taken
    instead; when every one is replaying, the freshest answer, with a note saying so."""
    _fake_cluster(monkeypatch, {"te0.hot0": _answer(5, 100 * 10**8, True),
                                "te0.warm0": _answer(900, 250 * 10**8, False),
                                "te1.hot0": AssertionError("not asked")})
    assert main(["client", "--user", "alice", "--password", "pw", "--data", str(tmp_path),
                 "positions"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("alice: account 2: balance 250.00 USDT"), out
    _fake_cluster(monkeypatch, {"te0.hot0": _answer(5, 100 * 10**8, True),
                                "te0.warm0": _answer(700, 200 * 10**8, True),
                                "te1.hot0": AssertionError("not asked")})
    assert main(["client", "--user", "alice", "--password", "pw", "--data", str(tmp_path),
                 "positions"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "catching up" in out[0] and "seq 700" in out[0], out
    assert out[1].startswith("alice: account 2: balance 200.00 USDT"), out


def test_positions_show_the_mark_and_the_unrealised_pnl(monkeypatch, tmp_path, capsys):
    """A position's line says where the mark is and what closing there would realise."""
    from mq import wire
    # BTCUSDT: tick 0.1, lot 0.001, so 10,000 minor units per tick per lot; long 30 lots
    # (0.03 BTC) at 50,000.0 (500,000 ticks), mark 50,500.0: +15.00 USDT
    row = [1, 30, 30 * 500_000 * 10_000, 150 * 10**8, 0, 0, 0, 1000, 0]
    answer = (wire.PONG, {"seq": 9, "catching_up": False, "accounts": [
        {"account": 2, "balance": 10**11, "available": 10**11, "order_margin": 0,
         "position_margin": 150 * 10**8, "open_orders": 0, "positions": [row],
         "marks": [[1, 505_000]]}]})
    _fake_cluster(monkeypatch, {"te0.hot0": answer, "te0.warm0": AssertionError("not asked"),
                                "te1.hot0": AssertionError("not asked")},
                  instruments=[{"security_id": 1, "symbol": "BTCUSDT", "tick": "0.1",
                                "lot": "0.001"}])
    assert main(["client", "--user", "alice", "--password", "pw", "--data", str(tmp_path),
                 "--account", "2", "positions"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "BTCUSDT long 0.030 @ 50,000.00 entry, mark 50,500.00, unrealised PnL 15.00 USDT" \
        in out[1], out
    row[1], row[2] = -30, -30 * 500_000 * 10_000                 # short: -15.00 USDT
    assert main(["client", "--user", "alice", "--password", "pw", "--data", str(tmp_path),
                 "--account", "2", "positions"]) == 0
    assert "unrealised PnL -15.00 USDT" in capsys.readouterr().out
    # --gateway does not say where positions come from: it says so (it was taken in silence)
    assert main(["client", "--user", "alice", "--password", "pw", "--data", str(tmp_path),
                 "--account", "2", "--gateway", "127.0.0.1:1", "positions"]) == 0
    out = capsys.readouterr()
    assert "unrealised PnL -15.00 USDT" in out.out
    assert "--gateway is not used" in out.err and out.err.count("\n") == 1, out.err


def test_positions_needs_the_users_password(monkeypatch, tmp_path, capsys):
    """positions shows a user's accounts only with their password, as a logon does."""
    _fake_cluster(monkeypatch, {"te0.hot0": AssertionError("not asked"),
                                "te0.warm0": AssertionError("not asked"),
                                "te1.hot0": AssertionError("not asked")})
    assert main(["client", "--user", "alice", "--password", "wrong", "--data", str(tmp_path),
                 "positions"]) == 2
    err = capsys.readouterr().err
    assert "bad credentials" in err and err.count("\n") == 1, err


def test_numbers_are_ascii_digits():
    """Decimal() takes full-width digits and underscores: `account deposit 3 １０` deposited 10
    and `1_000` 1,000. An amount, price or quantity is ASCII digits, one line otherwise."""
    import pytest

    from deploy.trading import TradingError, minor_units
    from gateway.client import plain_decimal
    assert [plain_decimal(x) for x in ("10", "1.5", ".5", "1e3", " 7 ")] == [True] * 5
    assert not any(plain_decimal(x) for x in ("１０", "1_000", "inf", "nan", "", "0x10"))
    assert minor_units("1.5") == 150_000_000
    for bad in ("１０", "1_000"):
        with pytest.raises(TradingError, match="is not a number"):
            minor_units(bad)


def test_a_gateway_not_open_yet_is_waited_for(gateway, tmp_path, capsys):
    """LogonReject 6 (the gateway is not open: its TradingEngine did not answer in time, a
    shard failing over) is worth another try: `seqex client` gave up at once, whatever
    --wait said, while the SDK retries it. It logs on again until the wait is over."""
    srv, gw = gateway
    srv.not_open = 2
    assert client(gw, tmp_path, "buy", "BTCUSDT", "0.010", "@", "50000") == 0
    out = capsys.readouterr().out
    assert "[order 1] accepted" in out, out
    srv.not_open = 1000
    started = time.monotonic()
    assert main(["client", "--user", "alice", "--gateway", gw, "--data", str(tmp_path),
                 "--wait", "1", "--password", "pw", "cancel", "BTCUSDT", "1"]) == 2
    err = capsys.readouterr().err
    assert "the gateway is not open" in err and len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - started >= 1



def test_a_dangling_at_is_refused_not_sent_as_a_market_order(gateway, tmp_path, capsys):
    """`buy BTCUSDT 0.01 @` meant a price; it went out as a market order. Refused now."""
    srv, gw = gateway
    assert client(gw, tmp_path, "buy", "BTCUSDT", "0.01", "@") == 2
    err = capsys.readouterr().err
    assert err == ("seqex client: buy SYMBOL QTY [@ PRICE]: expected PRICE after @\n")
    assert srv.received == []


def test_an_interrupted_order_names_its_clordid_and_how_to_look(gateway, tmp_path, capsys,
                                                                monkeypatch):
    """Ctrl-C after the order left: the command printed nothing (status 130), though the
    order may trade. It must say which order was sent and how to see its outcome."""
    from deploy import trader
    _srv, gw = gateway

    async def interrupted(*_a):
        raise KeyboardInterrupt
    monkeypatch.setattr(trader, "_print_reports", interrupted)
    assert client(gw, tmp_path, "buy", "BTCUSDT", "0.010", "@", "50000") == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("seqex client: interrupted: buy BTCUSDT 0.010 @ 50000 [order 1] "
                          "(its ClOrdID) was sent; its outcome is unknown"), err
    # the look, as printed, reaches the same cluster: its --data is in it
    assert f"`seqex client --data {tmp_path} --user alice watch` shows its reports" in err


def test_only_an_order_that_rests_is_said_to_rest(gateway, tmp_path, capsys):
    """An order that traded at once was printed 'accepted, resting' (its New report came
    first). 'resting' is said only when no trade followed the acceptance."""
    srv, gw = gateway
    srv.fills = set()
    assert client(gw, tmp_path, "buy", "BTCUSDT", "0.010", "@", "50000") == 0
    assert capsys.readouterr().out.splitlines() == [
        "alice: BTCUSDT buy 0.01 @ 50000.00 [order 1] accepted, resting"]
    srv.fills = {2}
    assert client(gw, tmp_path, "buy", "BTCUSDT", "0.010", "@", "50000") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "alice: BTCUSDT buy 0.01 @ 50000.00 [order 2] accepted", out
    assert "resting" not in "".join(out)


def test_an_interrupt_after_the_acceptance_still_prints_it(gateway, tmp_path, capsys,
                                                            monkeypatch):
    """The acceptance is held back a moment (to tell whether it rests), and the SDK counts a
    report handled once the next is asked for: a Ctrl-C in that moment lost it for good (the
    session file said it was seen; the next invocation starts after it)."""
    from gateway import client as sdk
    srv, gw = gateway
    srv.fills = set()
    real = sdk.Client.next_report
    calls = []

    async def next_report(self, timeout_s=None):
        calls.append(timeout_s)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return await real(self, timeout_s)
    monkeypatch.setattr(sdk.Client, "next_report", next_report)
    assert client(gw, tmp_path, "buy", "BTCUSDT", "0.010", "@", "50000") == 130
    out, err = capsys.readouterr()
    assert out.splitlines() == ["alice: BTCUSDT buy 0.01 @ 50000.00 [order 1] accepted"], out
    assert "interrupted" in err


def test_ctrl_c_ends_a_watch_as_it_says(gateway, tmp_path, capsys, monkeypatch):
    """`client watch` says "(Ctrl-C ends)"; ending it so printed "interrupted: nothing was
    sent" and exited 130, as if something had gone wrong."""
    from gateway import client as sdk
    _srv, gw = gateway

    async def next_report(self, timeout_s=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(sdk.Client, "next_report", next_report)
    assert client(gw, tmp_path, "watch") == 0
    out, err = capsys.readouterr()
    assert "(Ctrl-C ends)" in out and err == "", err


@pytest.mark.parametrize("words, want", [
    (["sell", "BTCUSDT", "0.01", "@", "400000000"],
     "BTCUSDT: price 400000000 is above the contract's largest, 46116860"),
    (["buy", "BTCUSDT", "100000", "@", "50000"],
     "BTCUSDT: quantity 100000 is above the contract's largest, 1000"),
])
def test_beyond_the_contracts_largest_price_or_quantity_is_refused_in_words(
        gateway, tmp_path, capsys, monkeypatch, words, want):
    """The engine can only answer such an order "rejected (other)" (its price_invalid has no
    FIX OrdRejReason) or "incorrect quantity": with the running cluster's contracts at hand,
    the client refuses it before sending, and says which limit."""
    from deploy import supervisor, topology
    srv, gw = gateway
    topo = topology.load()
    monkeypatch.setattr(supervisor, "read_state", lambda *_a, **_k: (topo, 1))
    assert client(gw, tmp_path, *words) == 2
    err = capsys.readouterr().err
    assert want in err and len(err.strip().splitlines()) == 1, err
    assert srv.received == []
    # within the limits: sent as before
    assert client(gw, tmp_path, "buy", "BTCUSDT", "1000", "@", "46116860") == 0
    assert len(srv.received) == 1
