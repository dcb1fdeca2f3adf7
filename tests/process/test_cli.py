"""The `seqex` command as a user meets it (real processes on 127.0.0.1).

Bad input: every verb, given each kind of bad input the command line can carry (values out
of range, bad endpoints, dead addresses, missing or broken state and topology files, bad
environment), exits with status 2 and one line on stderr, never a traceback.

Then one cluster, started with `seqex up` from a topology whose contract has a decimal tick
(0.5) and lot (0.001), in a temporary directory on free ports:
- `submit` prints the outcome in the contract's units: accepted, filled (price, quantity),
  expired, or rejected with the CrossEngine's reason in words;
- `replay --json` decodes every record (no hex), leaves Ticks out unless asked, filters;
- `tail` finds the cluster's addresses itself and stops at --to / --count exactly;
- two concurrent API clients submit 10,000 orders each: every order is sequenced at a real
  seq, answered with a typed outcome, and the log holds exactly those orders at those seqs;
- a second `seqex up` on the running data directory exits 2 with one line and leaves the
  first cluster as it was;
- a process that keeps dying is restarted with backoff, then given up on, loudly.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from deploy import topology
from deploy.procs import Group, free_port
from deploy.supervisor import gave_up as sv_gave_up
from deploy.supervisor import read_heartbeats, read_state
from mq.control import ping, replay, stats, wait_until
from mq.record import decode
from mq.sources import OPERATOR_SOURCE_MIN
from tests.fakeup import fake_up
from tests.process.test_cluster import free_block, pids_of, seqex  # noqa: F401 (others import it here)

TOPOLOGY = """
[cluster]
data_dir = "unused"
base_port = 7100

[[replicator]]
name = "replicator0"

[[replicator]]
name = "replicator1"

[[symbol]]
name = "BTCUSDT"
symbol_id = 1
tick_size = "0.5"
lot_size = "0.001"
min_qty = 1
max_qty = 1000000
hot = 2
warm = 1
"""


def one_line_error(out: subprocess.CompletedProcess) -> str:
    """The stderr line of a refusal; fails unless it is exactly one line, status 2."""
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    assert out.returncode == 2, f"status {out.returncode}: {text}"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    return lines[0]


def write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


# -- bad input, no cluster needed ---------------------------------------------------------------

def bad_input_cases(tmp: str) -> list[tuple[list[str], dict, str]]:
    """(arguments, environment, what the one line must say)."""
    dead = f"tcp://127.0.0.1:{free_port()}"
    missing = os.path.join(tmp, "nothing-here")
    # A state file whose supervisor is alive (this test) but whose processes are all gone:
    # value checks that need the contract's units run against it.
    fake = os.path.join(tmp, "fake")
    os.makedirs(fake)
    topo = topology.load(write(os.path.join(tmp, "t.toml"), TOPOLOGY), fake, free_block(12))
    fake_up(fake, json.loads(topo.to_json()))
    order = ["submit", "--data", fake, "--side", "buy"]
    # the default topology: its CrossEngines take orders from its TradingEngines
    trading = os.path.join(tmp, "trading")
    os.makedirs(trading)
    fake_up(trading, json.loads(topology.load(None, trading, free_block(64)).to_json()))
    tops = {name: write(os.path.join(tmp, f"{name}.toml"), text) for name, text in {
        "corrupt": "[cluster\nbase_port = 1\n",
        "port_type": '[cluster]\nbase_port = "abc"\n[[replicator]]\nname = "r0"\n',
        "no_replicator": '[cluster]\nbase_port = 7100\n',
        "nameless": '[[replicator]]\ndurability = "os"\n',
        "durability": '[[replicator]]\nname = "r0"\ndurability = "sometimes"\n',
        "port_high": '[cluster]\nbase_port = 70000\n[[replicator]]\nname = "r0"\n',
        "port_run": '[cluster]\nbase_port = 65530\n[[replicator]]\nname = "r0"\n'
                    '[[symbol]]\nname = "X"\n',
        "hot_type": '[[replicator]]\nname = "r0"\n[[symbol]]\nname = "X"\nhot = "two"\n',
        "typo": '[[replicator]]\nname = "r0"\ndurabilty = "os"\n',
        "twice": '[[replicator]]\nname = "r0"\n[[replicator]]\nname = "r0"\n',
        "tick": '[[replicator]]\nname = "r0"\n[[symbol]]\nname = "X"\ntick_size = "-1"\n',
        "symname": '[[replicator]]\nname = "r0"\n[[symbol]]\nname = "X.Y"\n',
    }.items()}
    up = ["up", "--data", os.path.join(tmp, "updata"), "--topology"]
    a_file = write(os.path.join(tmp, "a-file"), "not a directory\n")
    return [
        # addresses
        (["stop", dead, "--timeout", "0.5"], {}, "did not answer STOP"),
        (["ping", dead, "--timeout", "0.5"], {}, "did not answer PING"),
        (["stop", "tcp://127.0.0.1"], {}, "not an endpoint"),
        (["ping", "localhost:7000"], {}, "not an endpoint"),
        (["--insecure", "replicator", "--data", os.path.join(tmp, "r"), "--bind",
          "tcp://256.1.1.1:7001"], {}, "ZeroMQ"),
        (["replicator", "--data", os.path.join(tmp, "r"), "--bind", "tcp://127.0.0.1:7001"], {},
         "no --keys given"),
        (["--insecure", "sequencer", "--stream", "s", "--producers", "tcp://127.0.0.1:99999", "--pub", dead,
          "--replicator", dead], {}, "not an endpoint"),
        (["--insecure", "sequencer", "--stream", "s", "--producers", dead, "--pub", dead,
          "--replicator", dead, "--upstream", "stream=x,source=0"], {}, "bad upstream spec"),
        (["--insecure", "sequencer", "--stream", "s", "--producers", dead, "--pub", dead,
          "--replicator", dead, "--upstream",
          "stream=x,source=1,pub=tcp://h:1,replicators=tcp://h:2,route=0xZZ"], {},
         "bad upstream spec"),
        (["--insecure", "replica", "--name", "x", "--stream", "s", "--pub", dead,
          "--replicator", dead, "--control", dead, "--engine-config", "{bad"], {}, "not JSON"),
        (["replica", "--name", "x", "--stream", "s", "--pub", dead, "--replicator", dead,
          "--control", dead, "--engine", "nope"], {}, "invalid choice"),
        (["mirror", "--stream", "s", "--inputs", dead, "--pub", dead, "--from-seq", "0"], {},
         "out of range"),
        (["tail", "in.ce.BTCUSDT", "--pub", "nowhere", "--replicator", dead], {},
         "not an endpoint"),
        # environment and state
        (["status", "--data", missing], {"SEQEX_LOG": "debug"}, "not up"),
        (["status", "--data", missing], {"SEQEX_LOG": "loud"}, "SEQEX_LOG must be"),
        (["status", "--data", missing], {}, "not up"),
        (["restart", "gateway0", "--data", missing], {}, "not up"),
        (["restart", "--data", missing], {}, "required"),
        (["down", "--data", missing], {}, "not up"),
        (["audit", "--data", missing], {}, "not up"),
        (["audit", "--data", fake], {}, "has no order path to audit"),
        (["audit", "--data", fake, "--every", "0"], {}, "--every"),
        (["tail", "in.ce.BTCUSDT", "--data", missing], {}, "not up"),
        (["replay", "in.ce.BTCUSDT", "--data", missing], {}, "not up"),
        (["replay", "in.ce.BTCUSDT", "--rebuild", "--data", missing], {},
         "--rebuild needs the engine's configuration"),
        (["replay", "in.ce.BTCUSDT", "--rebuild", "--engine-config", "{bad",
          "--replicator", dead], {}, "not JSON"),
        (["replay", "in.ce.BTCUSDT", "--rebuild", "--engine-config", '{"tick": 1}',
          "--replicator", dead], {}, "does not fit"),
        (["replay", "in.ce.BTCUSDT", "--data", fake, "--from", "5", "--to", "2"], {},
         "beyond --to"),
        (["replay", "in.ce.NOPE", "--data", fake], {}, "no replicator answers"),
        (["tail", "in.ce.NOPE", "--data", fake], {}, "unknown stream"),
        (["tail", "in.ce.BTCUSDT", "--data", fake], {}, "no replicator answers"),
        (["tail", "in ce", "--data", fake], {}, "not a stream name"),
        # submit
        ([*order, "--qty", "-5", "--price", "1"], {}, "negative"),
        ([*order, "--qty", "5", "--price", "-1"], {}, "negative"),
        ([*order, "--qty", "5", "--price", "1", "--account", "-1"], {}, "out of range"),
        ([*order, "--qty", "5", "--price", "1", "--account", str(1 << 32)], {},
         "out of range"),
        ([*order, "--qty", "1e30", "--price", "1"], {}, "out of range"),
        ([*order, "--qty", "1", "--price", "1e30"], {}, "out of range"),
        ([*order, "--qty", "abc", "--price", "1"], {}, "not a number"),
        ([*order, "--qty", "1", "--price", "nan"], {}, "is not a number"),
        ([*order, "--qty", "1", "--price", "1", "--source", "0"], {}, "out of range"),
        ([*order, "--qty", "1", "--price", "1", "--client-order-id", "0"], {}, "out of range"),
        ([*order, "--qty", "1"], {}, "--price is required"),
        ([*order, "--qty", "1", "--price", "1", "--market"], {}, "takes no --price"),
        ([*order, "--qty", "1", "--price", "100.25"], {}, "not a multiple of the tick 0.5"),
        ([*order, "--qty", "0.0005", "--price", "100"], {}, "not a multiple of the lot 0.001"),
        ([*order, "--qty", "1", "--price", "100", "--symbol", "NOPE"], {}, "unknown symbol"),
        ([*order, "--qty", "1", "--price", "100", "--timeout", "0"], {}, "a number of seconds above 0"),
        (["submit", "--data", trading, "--side", "buy", "--qty", "0.001", "--price", "100"], {},
         "trades through its TradingEngines"),
        (["submit", "--data", fake, "--side", "up", "--qty", "1", "--price", "1"], {},
         "invalid choice"),
        ([*order, "--qty", "1", "--price", "100"], {}, "does not answer"),
        # topology files
        ([*up, os.path.join(tmp, "missing.toml")], {}, "no such topology file"),
        ([*up, tops["corrupt"]], {}, "not valid TOML"),
        ([*up, tops["port_type"]], {}, "port_type.toml:2: cluster.base_port: must be an integ"),
        ([*up, tops["no_replicator"]], {}, "at least one [[replicator]]"),
        ([*up, tops["nameless"]], {}, "nameless.toml:1: replicator[0]: needs a name"),
        ([*up, tops["durability"]], {}, "durability.toml:3: replicator[0].durability"),
        ([*up, tops["port_high"]], {}, "port_high.toml:2: cluster.base_port: must be in 1 .."),
        ([*up, tops["port_run"]], {}, "runs past 65535"),
        ([*up, tops["hot_type"]], {}, "hot_type.toml:5: symbol[0].hot: must be an integer"),
        ([*up, tops["typo"]], {}, "typo.toml:3: replicator[0].durabilty: unknown key"),
        ([*up, tops["twice"]], {}, "'r0' is used twice"),
        ([*up, tops["tick"]], {}, "symbol[0].tick_size: must be a positive decimal"),
        ([*up, tops["symname"]], {}, "symbol[0].name"),
        (["up", "--base-port", "70000", "--data", os.path.join(tmp, "u2")], {}, "out of range"),
        (["up", "--base-port", "65530", "--data", os.path.join(tmp, "u3")], {},
         "runs past 65535"),
        (["up", "--host", "nowhere", "--data", os.path.join(tmp, "u4"), "--base-port",
          str(free_block(12))], {}, "no process of the topology runs there"),
        # the rest
        (["produce", "--sequencer", dead, "--source", "0", "--count", "1"], {}, "out of range"),
        (["demo", "--rate", "0"], {}, "out of range"),
        # a data directory whose name a file holds (it said "File exists")
        (["up", "--data", a_file, "--base-port", str(free_block(12))], {},
         "is a file, not a directory"),
        (["keys", "--dir", a_file], {}, "is a file, not a directory"),
        (["bogus"], {}, "invalid choice"),
        ([], {}, "required"),
    ]


@pytest.mark.timeout(300)
def test_every_verb_refuses_bad_input_with_one_line_and_status_2(tmp_path):
    servers = ("replicator", "sequencer", "mirror", "replica")
    # Server verbs run with --insecure, so that their own checks answer; one case checks that
    # a server given neither --keys nor --insecure refuses to start.
    cases = [(["--insecure", *args] if args and args[0] in servers
              and "no --keys" not in want else args, env, want)
             for args, env, want in bad_input_cases(str(tmp_path))]
    with ThreadPoolExecutor(4) as pool:
        # in a directory of their own: a ./seqex-data left by `seqex up` in the checkout (the
        # README's first command) gives the client verbs its trust policy
        results = list(pool.map(lambda c: seqex(*c[0], env=c[1], cwd=str(tmp_path)), cases))
    failures = []
    for (args, env, want), out in zip(cases, results, strict=True):
        try:
            line = one_line_error(out)
            assert want in line, f"{want!r} not in {line!r}"
        except AssertionError as exc:
            failures.append(f"seqex {' '.join(args)} {env or ''}: {exc}")
    assert not failures, "\n".join(failures)
    verbs = {next((a for a in c[0] if not a.startswith("--")), "") for c in cases}
    assert verbs >= {"replicator", "sequencer", "replica", "mirror", "tail", "replay", "ping",
                     "stop", "up", "down", "status", "submit", "produce", "demo", "audit",
                     "restart"}


# -- one cluster --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("cli"))
    data = os.path.join(tmp, "data")
    top = write(os.path.join(tmp, "topology.toml"), TOPOLOGY)
    with Group(os.path.join(tmp, "logs")) as group:
        up = group.spawn("up", ["up", "--topology", top, "--data", data, "--base-port",
                                str(free_block()), "--restart-backoff", "0.1",
                                "--max-restarts", "2"])
        wait_until(lambda: os.path.exists(os.path.join(data, "seqex.json")) or not up.alive,
                   120, "seqex up")
        assert up.alive, up.log()
        yield data, up
        if up.alive:
            seqex("down", "--data", data)
            up.wait(60)
        assert pids_of(data) == [], "processes left behind after seqex down"


def test_submit_prints_the_outcome_in_contract_units(cluster):
    data, _up = cluster
    run = lambda *a: seqex("submit", "--data", data, *a)  # noqa: E731
    out = run("--side", "sell", "--price", "100.5", "--qty", "0.005", "--account", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("accepted at seq ") and ": 0.005 BTCUSDT at 100.5 resting" \
        in out.stdout, out.stdout
    out = run("--side", "BUY", "--price", "101", "--qty", "0.003", "--account", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("filled at seq ") \
        and ": 0.003 BTCUSDT at 100.5 (0.003 @ 100.5) (client" in out.stdout, out.stdout
    line = one_line_error(run("--side", "buy", "--price", "100", "--qty", "0", "--account", "2"))
    assert "rejected at seq" in line and "the quantity is below the symbol's minimum" in line \
        and "3003 qty_below_min" in line, line
    line = one_line_error(run("--side", "buy", "--price", "100", "--qty", "1001",
                              "--account", "2"))
    assert "the quantity is above the symbol's maximum (code 3004" in line, line
    out = run("--side", "buy", "--market", "--qty", "0.01", "--account", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("filled at seq ") and ": 0.002 BTCUSDT at 100.5" in out.stdout \
        and "0.008 expired unfilled" in out.stdout, out.stdout
    out = run("--side", "buy", "--market", "--qty", "0.01", "--account", "3")
    assert out.returncode == 0 and out.stdout.startswith("expired at seq"), out.stdout


def test_replay_json_decodes_every_record_and_filters(cluster):
    data, _up = cluster
    # what it looks for, of its own: a trade (150, under every sell) and a rejection
    for side, account in (("sell", "8"), ("buy", "9")):
        out = seqex("submit", "--data", data, "--side", side, "--price", "150", "--qty",
                    "0.001", "--account", account)
        assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("filled at seq "), out.stdout
    assert "rejected at seq" in one_line_error(seqex(
        "submit", "--data", data, "--side", "buy", "--price", "150", "--qty", "0",
        "--account", "9"))
    out = seqex("submit", "--data", data, "--side", "sell", "--price", "200", "--qty", "0.001",
                "--account", "7")
    seq = int(out.stdout.split("at seq")[1].split()[0])
    wait_committed(data, "in.ce.BTCUSDT", seq)
    wait_committed(data, "out.ce.BTCUSDT", seq)
    for stream in ("in.ce.BTCUSDT", "out.ce.BTCUSDT"):
        out = seqex("replay", stream, "--data", data, "--json")
        assert out.returncode == 0, out.stderr
        recs = [json.loads(x) for x in out.stdout.splitlines()]
        assert recs and all("payload_hex" not in json.dumps(r) for r in recs)
        assert all(r["command"] != "Tick" for r in recs), "Ticks shown without --ticks"
        with_ticks = [json.loads(x) for x in seqex("replay", stream, "--data", data, "--json",
                                                   "--ticks").stdout.splitlines()]
        assert [r["seq"] for r in with_ticks] == list(range(1, len(with_ticks) + 1))
        assert {r["command"] for r in with_ticks} == {"Tick", "NewOrder"}
    orders = [json.loads(x) for x in seqex("replay", "in.ce.BTCUSDT", "--data", data, "--json",
                                           "--account", "7").stdout.splitlines()]
    assert [(o["side"], o["price"], o["qty"], o["ord_type"]) for o in orders] == [
        ("sell", "200", "0.001", "limit")]
    trades = [json.loads(x) for x in seqex("replay", "out.ce.BTCUSDT", "--data", data, "--json",
                                           "--kind", "trade").stdout.splitlines()]
    assert trades and all(any(e["event"] == "Trade" for e in r["events"]) for r in trades)
    rejected = [json.loads(x) for x in seqex("replay", "out.ce.BTCUSDT", "--data", data,
                                             "--json", "--kind", "OrderRejected"
                                             ).stdout.splitlines()]
    assert {e["reason"] for r in rejected for e in r["events"]} >= {"qty_below_min"}
    coid = orders[0]["client_order_id"]
    mine = [json.loads(x) for x in seqex("replay", "out.ce.BTCUSDT", "--data", data, "--json",
                                         "--order", str(coid)).stdout.splitlines()]
    assert [r["seq"] for r in mine] == [orders[0]["seq"]]
    assert mine[0]["events"][0] == {
        "event": "OrderAccepted", "order_id": mine[0]["events"][0]["order_id"],
        "client_order_id": coid, "account": 7, "side": "sell", "ord_type": "limit",
        "price": "200", "qty": "0.001", "tif": "gtc", "flags": []}
    text = seqex("replay", "out.ce.BTCUSDT", "--data", data, "--account", "7")
    assert "OrderAccepted" in text.stdout and "price=200" in text.stdout


def test_tail_finds_the_cluster_and_stops_exactly(cluster):
    data, _up = cluster
    # Two orders of its own (far below any sell), so the test does not lean on earlier ones.
    for price in ("1", "2"):
        out = seqex("submit", "--data", data, "--side", "buy", "--price", price, "--qty",
                    "0.001", "--account", "12")
        assert out.returncode == 0 and "resting" in out.stdout, out.stdout + out.stderr
    wait_committed(data, "out.ce.BTCUSDT", int(out.stdout.split("at seq")[1].split()[0]))
    out = seqex("tail", "in.ce.BTCUSDT", "--data", data, "--ticks", "--to", "3", "--json")
    assert out.returncode == 0, out.stderr
    assert [json.loads(x)["seq"] for x in out.stdout.splitlines()] == [1, 2, 3]
    out = seqex("tail", "out.ce.BTCUSDT", "--data", data, "--count", "2")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 2 and "Tick" not in out.stdout
    end = stats(read_state(data)[0].symbols["BTCUSDT"]["producers"])["committed"]
    # Follow mode says what it waits for, then gives up after --wait with one line.
    out = seqex("tail", "in.ce.BTCUSDT", "--data", data, "--from", str(end + 10**9),
                "--wait", "1")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    waiting, line = out.stderr.strip().splitlines()
    assert f"waiting up to 1 s for seq {end + 10**9}" in waiting, waiting
    assert f"no seq {end + 10**9} of in.ce.BTCUSDT within 1 s" in line, line
    line = one_line_error(seqex("replay", "in.ce.BTCUSDT", "--data", data, "--from",
                                str(end + 10**9)))
    assert "is beyond the end of in.ce.BTCUSDT" in line, line
    line = one_line_error(seqex("tail", "out.ce.NOPE", "--data", data))
    assert "unknown stream 'out.ce.NOPE'" in line and "in.ce.BTCUSDT" in line, line
    # A durable tail (--out) whose file has taken seqs the stream does not hold (another
    # stream's file, another cluster's) said nothing and waited for good.
    out_file = os.path.join(data, "..", "tail-out.txt")
    with open(out_file, "w") as f:
        f.write(f"{end + 10**6} 0 1 1\n")
    line = one_line_error(seqex("tail", "in.ce.BTCUSDT", "--data", data, "--out", out_file,
                                "--count", "1"))
    assert f"has taken in.ce.BTCUSDT up to seq {end + 10**6}" in line and \
        "no replicator holds a seq above" in line, line
    # within the stream it resumes as before: the next seq, once
    with open(out_file, "w") as f:
        f.write("2 0 1 1\n")
    out = seqex("tail", "in.ce.BTCUSDT", "--data", data, "--out", out_file, "--count", "1")
    assert out.returncode == 0, out.stderr
    with open(out_file) as f:
        assert [x.split()[0] for x in f.read().splitlines()] == ["2", "3"]
    # an unknown stream with --out is refused at once, as without it
    line = one_line_error(seqex("tail", "out.ce.NOPE", "--data", data, "--out", out_file))
    assert "unknown stream 'out.ce.NOPE'" in line, line
    # A durable tail restarted while its stream's master appends nothing (frozen here): the
    # replicators know a commit point one record behind what they store and what the live
    # feed delivered. Its file is the stream's own: it resumes (it was refused as another
    # stream's file).
    masters = pids_with("mirror --stream out.ce.BTCUSDT")
    assert masters
    for pid in masters:
        os.kill(pid, signal.SIGSTOP)
    try:
        reps = read_state(data)[0].replicator_addrs()
        held = max(int(((ping(r) or {}).get("streams", {}).get("out.ce.BTCUSDT") or {})
                       .get("last") or 0) for r in reps)
        with open(out_file, "w") as f:
            f.write(f"{held} 0 1 1\n")
        tail = subprocess.Popen([sys.executable, "-m", "deploy.cli", "tail", "out.ce.BTCUSDT",
                                 "--data", data, "--out", out_file, "--count", "1"],
                                stderr=subprocess.PIPE, text=True)
    finally:
        for pid in masters:
            os.kill(pid, signal.SIGCONT)
    try:
        assert tail.wait(120) == 0, tail.stderr.read()
    finally:
        if tail.poll() is None:
            tail.kill()
    with open(out_file) as f:
        assert [int(x.split()[0]) for x in f.read().splitlines()] == [held, held + 1]
    # A durable tail from a seq the stream has not reached waits for it without a word and
    # without end (a person's tail gives up after --wait, above): still waiting past --wait.
    os.remove(out_file)
    waiting = subprocess.Popen([sys.executable, "-m", "deploy.cli", "tail", "in.ce.BTCUSDT",
                                "--data", data, "--out", out_file, "--from",
                                str(end + 10**9), "--wait", "1"],
                               stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(6)
    finally:
        waiting.kill()
        waiting.wait()


CLIENT = """
import json, sys
from deploy.client import Client
data, n, account = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Client(data) as c:
    tickets = []
    for i in range(0, n, 500):
        tickets += c.send_many("BTCUSDT", [dict(
            side=("BUY", "sell")[(i + k) % 2], qty=f"0.00{1 + (i + k) % 3}",
            price=str(100 + (i + k) % 5), account=account) for k in range(min(500, n - i))])
    outs = c.wait(tickets, timeout_s=120)
    print(json.dumps({"source": c.source, "orders": [
        [t.source_seq, t.client_order_id, o.seq, type(o).__name__] for t, o in
        zip(tickets, outs)]}))
"""


@pytest.mark.timeout(300)
def test_two_api_clients_10000_orders_each_all_sequenced_and_answered(cluster, tmp_path):
    data, _up = cluster
    script = write(str(tmp_path / "client.py"), CLIENT)
    n = 10_000
    procs = [subprocess.Popen([sys.executable, script, data, str(n), str(100 + i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    sources = [r["source"] for r in results]
    assert len(set(sources)) == 2, f"two concurrent clients share a source: {sources}"
    seqs = [o[2] for r in results for o in r["orders"]]
    coids = [o[1] for r in results for o in r["orders"]]
    assert len(seqs) == len(set(seqs)) == 2 * n and min(seqs) > 0
    assert len(set(coids)) == 2 * n
    kinds = Counter(o[3] for r in results for o in r["orders"])
    assert set(kinds) <= {"Accepted", "Filled", "Expired", "Rejected"} and not kinds["Rejected"]
    # From the first of these orders on, the log holds exactly these orders of these sources,
    # at the seqs the clients were told (a source id is free again once its client closed,
    # so earlier tests' orders may carry the same source, before these).
    topo, _pid = read_state(data)
    wait_committed(data, "in.ce.BTCUSDT", max(seqs))
    logged = {(r[2], r[3]): r[0] for f in replay(topo.replicator_addrs()[0], "in.ce.BTCUSDT",
                                                 min(seqs))
              for r in decode(f) if r[2] in sources}
    told = {(res["source"], o[0]): o[2] for res in results for o in res["orders"]}
    assert logged == told


def test_a_retry_after_a_timeout_never_duplicates_and_seqs_are_found(cluster):
    """The sequencer is frozen (SIGSTOP): wait() gives up with the ticket still pending; the
    retry (wait again, or submit with the same client order id) after SIGCONT yields one
    order in the log, at the seq the client reports. An order acknowledged without a seq (as
    a new master's WELCOME does) is found in the log by (source, source_seq)."""
    from deploy.client import Client, OutcomeTimeout
    data, _up = cluster
    topo, _pid = read_state(data)
    # the master and its standby (one command line, one lock): the master holds the lock
    from deploy.supervisor import master_lock_holder, standby_lock_of
    both = pids_with(f"--producers {topo.symbols['BTCUSDT']['producers']} ")
    assert len(both) == 2
    sequencer = [master_lock_holder(standby_lock_of(topo.by_name("sequencer.BTCUSDT")))]
    assert sequencer[0] in both
    with Client(data) as client:
        first = client.submit("BTCUSDT", "sell", "0.001", "300", account=11)
        os.kill(sequencer[0], signal.SIGSTOP)
        try:
            t = client.send("BTCUSDT", "sell", "0.001", "300.5", account=11,
                            client_order_id=777_001)
            with pytest.raises(OutcomeTimeout) as exc:
                client.wait([t], timeout_s=1.0)
            assert exc.value.pending == [t] and t.seq is None
            assert "not acknowledged" in str(exc.value)
            again = client.send("BTCUSDT", "sell", "0.001", "300.5", account=11,
                                client_order_id=777_001)
            assert again is t, "a retry with the same client order id made a new order"
        finally:
            os.kill(sequencer[0], signal.SIGCONT)
        outcome = client.wait(exc.value.pending, timeout_s=30)[0]
        assert outcome.seq > first.seq and outcome.client_order_id == 777_001
        assert client.submit("BTCUSDT", "sell", "0.001", "300.5", account=11,
                             client_order_id=777_001).seq != outcome.seq  # a new order now
        wait_committed(data, "in.ce.BTCUSDT", outcome.seq)
        mine = [(r[0], r[3]) for f in replay(topo.replicator_addrs()[0], "in.ce.BTCUSDT",
                                             first.seq) for r in decode(f)
                if r[2] == client.source]
        assert [q for q, _ss in mine][:2] == [first.seq, outcome.seq]
        assert [ss for _q, ss in mine] == sorted({ss for _q, ss in mine})  # no duplicates
        # the seq of an order acknowledged without one is looked up in the log
        lost = type(t)("BTCUSDT", t.source_seq, t.client_order_id, 11, t.side, t.price_ticks,
                       t.qty_lots)
        client.pending["BTCUSDT"][lost.source_seq] = lost
        client._find_seqs("BTCUSDT", [lost])
        assert lost.seq == outcome.seq


def test_a_producer_sharing_the_clients_source_is_detected(cluster, tmp_path):
    """A producer outside the client's lock (`seqex produce`) holds the source id the client
    asks for: the sequencer refuses the second live connection on one source, and the client
    says so at once (SourceClash, with the sequencer's reason) instead of waiting, or
    reporting another producer's outcome as its own."""
    from deploy.client import Client, SourceClash
    data, _up = cluster
    topo, _pid = read_state(data)
    sym = topo.symbols["BTCUSDT"]
    start = stats(sym["producers"])["committed"]
    with Group(str(tmp_path)) as group:
        # the cluster runs with CURVE: only the operator's key, with an operator source id,
        # writes in.ce directly (docs/security.md)
        src = OPERATOR_SOURCE_MIN + 1
        other = group.spawn("other", ["--keys", os.path.join(data, "keys"), "produce",
                                      "--sequencer", sym["producers"], "--source", str(src),
                                      "--count", "1000000", "--rate", "500"])

        def other_is_in() -> bool:
            return any(r[2] == src for f in replay(topo.replicator_addrs()[0],
                                                   sym["in"], start + 1)
                       for r in decode(f))
        wait_until(other_is_in, 60, "the other producer's records in the log")
        with Client(data, source=src) as client:
            with pytest.raises(SourceClash, match=f"refused source {src}: .*in use by "
                                                  "another live producer connection"):
                client.submit("BTCUSDT", "buy", "0.001", "1", account=12, timeout_s=30)
        other.kill()


def test_a_second_up_on_a_running_data_dir_exits_2_and_leaves_the_first_intact(cluster):
    data, up = cluster
    state = os.path.join(data, "seqex.json")
    before = open(state).read()
    topo, pid = read_state(data)
    line = one_line_error(seqex("up", "--data", data, "--base-port", str(free_block())))
    assert f"seqex is already up in {data} (supervisor pid {pid})" in line, line
    # the same ports from another data directory: refused before anything starts
    other = os.path.join(os.path.dirname(data), "other")
    port = int(topo.procs[0].control.rsplit(":", 1)[1])
    line = one_line_error(seqex("up", "--data", other, "--base-port", str(port)))
    assert "is already in use on this machine" in line, line
    assert not os.path.exists(os.path.join(other, "seqex.json"))
    # nothing written before the ports were checked: no keys, accounts or demo passwords
    assert not os.path.exists(os.path.join(other, "keys"))
    assert not os.path.exists(os.path.join(other, "accounts.json"))
    assert not os.path.exists(os.path.join(other, "demo-users.json"))
    # its state file copied into another directory names this supervisor, which does not
    # hold that directory's lock: not up there, and `down` there signals no one (it used to
    # SIGTERM the pid the file named, and stopped this cluster)
    copied = os.path.join(os.path.dirname(data), "copied")
    os.makedirs(copied)
    with open(os.path.join(copied, "seqex.json"), "w") as f:
        f.write(before)
    line = one_line_error(seqex("status", "--data", copied))
    assert "does not hold" in line, line
    out = seqex("down", "--data", copied)
    assert out.returncode == 0 and "was gone" in out.stdout, (out.stdout, out.stderr)
    assert not os.path.exists(os.path.join(copied, "seqex.json"))
    assert open(state).read() == before and up.alive
    status = seqex("status", "--data", data)
    assert status.returncode == 0 and "DOWN" not in status.stdout, status.stdout
    assert "restarting" not in up.log()


@pytest.mark.timeout(120)
def test_status_shows_a_frozen_replicator_and_its_recovery(cluster):
    """A replicator stopped with SIGSTOP stays alive and does not answer: within a few
    seconds `seqex status` marks it FROZEN, with its pid and the operator's next step; after
    SIGCONT it answers again and shows healthy."""
    data, _up = cluster
    pid = wait_until(lambda: read_heartbeats(data).get("replicator1", {}).get("pid"), 30,
                     "the supervisor's heartbeats")
    assert pid in pids_of(data)

    def status_of(name: str) -> tuple[str, str]:
        out = seqex("status", "--data", data, "--frozen-after", "2")
        assert out.returncode == 0, out.stderr
        rows = [x for x in out.stdout.splitlines() if x.startswith(name + " ")]
        return " | ".join(rows), out.stdout

    os.kill(pid, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        wait_until(lambda: "FROZEN" in status_of("replicator1")[0], 30, "FROZEN in status")
        took = time.monotonic() - frozen_at
        row, out = status_of("replicator1")
        assert f"FROZEN (pid {pid})" in row and "s ago" in row, out
        advice = [x for x in out.splitlines() if "replicator1 is FROZEN" in x]
        assert advice and f"kill -CONT {pid}" in advice[0], out
        assert "FROZEN" not in status_of("replicator0")[0]
        print(f"status showed replicator1 FROZEN {took:.1f} s after SIGSTOP")
    finally:
        os.kill(pid, signal.SIGCONT)
    # (each `seqex status` probes again: the row is checked in the run that showed it thawed,
    # a second run's probe could miss on a busy machine and read "not answering")
    wait_until(lambda: (lambda row: " now " in row and " up" in row and "FROZEN" not in row)(
        status_of("replicator1")[0]), 30, "replicator1 up again in status")


@pytest.mark.timeout(300)
def test_a_process_that_keeps_dying_is_backed_off_then_given_up(cluster):
    """Runs last. Its control port is taken by a stranger, so every restart dies at once
    (address in use); the supervisor waits 0.1 s, then 0.2 s, then gives up with the reason,
    and `seqex status` shows it; `seqex restart` then brings it back."""
    data, up = cluster
    topo, _pid = read_state(data)
    spec = topo.by_name("ce.BTCUSDT.hot1")
    victim = pids_of(data, spec.name)
    assert len(victim) == 1
    host, port = spec.control[len("tcp://"):].rsplit(":", 1)
    stranger = socket.socket()
    # The supervisor is frozen while the stranger takes the port, so that no restart can
    # win the race for it.
    up.popen.send_signal(signal.SIGSTOP)
    try:
        os.kill(victim[0], signal.SIGKILL)
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        wait_until(lambda: _try_bind(stranger, host, int(port)), 30, "the port to be free")
        stranger.listen()
    finally:
        up.popen.send_signal(signal.SIGCONT)
    try:
        wait_until(lambda: "giving up on it" in up.log(), 60, "the supervisor to give up")
        log = up.log()
        assert "restarting in 0.1 s (failure 1 of 2)" in log
        assert "restarting in 0.2 s (failure 2 of 2)" in log
        why = next(x for x in log.splitlines() if "giving up on it" in x)
        assert "ce.BTCUSDT.hot1 died 3 times in a row" in why and "Address already in use" \
            in why, why
        status = seqex("status", "--data", data)
        assert status.returncode == 0
        assert any(x.startswith("ce.BTCUSDT.hot1") and "GAVE UP" in x
                   for x in status.stdout.splitlines()), status.stdout
        assert up.alive and ping(topo.by_name("ce.BTCUSDT.hot0").control)
    finally:
        stranger.close()
    # The cause gone (the port free), `seqex restart` starts it again without a `down`/`up`
    # (an adversary's campaign: a warm replica given up on cost a whole outage to revive),
    # and it catches up with the stream.
    line = one_line_error(seqex("restart", "ce.BTCUSDT.hot9", "--data", data))
    assert "no process named 'ce.BTCUSDT.hot9'" in line, line
    out = seqex("restart", "ce.BTCUSDT.hot1", "--data", data, "--timeout", "120")
    assert out.returncode == 0, out.stdout + out.stderr
    new_pid = pids_of(data, spec.name)
    assert len(new_pid) == 1 and new_pid[0] != victim[0]
    assert f"ce.BTCUSDT.hot1: restarted (pid {new_pid[0]}), answering" in out.stdout, out.stdout
    assert "restarting ce.BTCUSDT.hot1 (given up on; asked by the operator" in up.log()
    status = seqex("status", "--data", data)
    assert not any("GAVE UP" in x for x in status.stdout.splitlines()), status.stdout
    assert read_state(data)[0] and "ce.BTCUSDT.hot1" not in sv_gave_up(data)
    hot0 = ping(topo.by_name("ce.BTCUSDT.hot0").control)
    wait_until(lambda: (ping(spec.control) or {}).get("seq", -1) >= hot0["seq"], 60,
               "the restarted replica to catch up")
    # a running process: stopped (SIGTERM) and started again, not counted as a failure
    before = pids_of(data, "ce.BTCUSDT.hot0")
    out = seqex("restart", "ce.BTCUSDT.hot0", "--data", data, "--timeout", "120")
    assert out.returncode == 0, out.stdout + out.stderr
    after = pids_of(data, "ce.BTCUSDT.hot0")
    assert len(after) == 1 and after != before, (before, after)
    assert "restarting ce.BTCUSDT.hot0 (running; asked by the operator" in up.log()
    assert "failure" not in up.log().split("restarting ce.BTCUSDT.hot0 (running")[1]


def wait_committed(data: str, stream: str, seq: int) -> None:
    """Until every replicator knows seq as committed (replay serves committed records only,
    and a replicator learns the commit point a moment after the producer's ack)."""
    topo, _pid = read_state(data)

    def done() -> bool:
        for addr in topo.replicator_addrs():
            st = (ping(addr) or {}).get("streams", {}).get(stream, {})
            if st.get("commit", 0) < seq:
                return False
        return True
    wait_until(done, 60, f"seq {seq} of {stream} to be committed at every replicator")


def pids_with(text: str) -> list[int]:
    """seqex processes whose command line holds text."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "deploy.cli" in cmd and text in cmd:
            out.append(int(pid))
    return out


def _try_bind(sock: socket.socket, host: str, port: int) -> bool:
    try:
        sock.bind((host, port))
    except OSError:
        return False
    return True


def test_a_supervisors_children_end_with_it(tmp_path):
    """A SIGKILLed `seqex up` left its seven children running, holding their ports, and
    `seqex down` then only removed the state file: nothing could stop them but kill by pid.
    A supervisor's children now get SIGTERM when it dies, however it dies."""
    import time
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from deploy.procs import Group
        g = Group({str(tmp_path)!r}, die_with_parent=True)
        p = g.spawn("tail", ["--insecure", "tail", "in.demo", "--pub", "tcp://127.0.0.1:9",
                             "--replicator", "tcp://127.0.0.1:9", "--out",
                             {str(tmp_path / "o.txt")!r}])
        print(p.popen.pid, flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    child = int(parent.stdout.readline())

    def alive(pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                return not any(x.startswith("State:") and "Z" in x.split()[1] for x in f)
        except OSError:
            return False
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "tail.log").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)   # let the child get past its start
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the child outlived its supervisor"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.timeout(400)
def test_up_again_after_its_supervisor_was_killed_waits_for_the_last_runs_processes(tmp_path):
    """A SIGKILLed `seqex up` leaves its processes on their way down (SIGTERM from
    SEQEX_PARENT); a second `seqex up` run at once found some of their ports still taken and
    refused to start ("already in use"). It now waits for them. Here one of them is frozen
    (SIGSTOP): the new `up` says it waits (for it, and for any other still on its way down),
    and starts the cluster once it has been let go and has ended."""
    data = str(tmp_path / "data")
    top = write(str(tmp_path / "topology.toml"), TOPOLOGY)
    args = ["up", "--topology", top, "--data", data, "--base-port", str(free_block())]

    def cmdline(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:   # gone meanwhile
            return " up --topology "

    def cluster_pids() -> list[int]:   # the servers, not the `up`s
        return [pid for pid in pids_of(data) if " up --topology " not in cmdline(pid)]

    with Group(str(tmp_path / "logs")) as group:
        first = group.spawn("up1", args)
        wait_until(lambda: "seqex is up" in first.log() or not first.alive, 180, "seqex up")
        assert first.alive, first.log()
        frozen = next(pid for pid in cluster_pids()
                      if f"--data {data}/replicator0 " in cmdline(pid))
        os.kill(frozen, signal.SIGSTOP)
        try:
            first.kill()
            second = group.spawn("up2", args)
            # the frozen one, and maybe others still on their way down
            wait_until(lambda: re.search(r"waiting for \d+ process(es)? of the last run",
                                         second.log()) or not second.alive, 60,
                       "the second up to wait for the last run's processes")
            assert second.alive, second.log()
            assert frozen in cluster_pids() and "seqex is up" not in second.log()
        finally:
            os.kill(frozen, signal.SIGCONT)
        wait_until(lambda: "seqex is up" in second.log() or not second.alive, 180,
                   "the second up to start the cluster")
        assert second.alive, second.log()
        assert "in use" not in second.log(), second.log()
        topo, _ = read_state(data)

        def status_all_up():
            st = seqex("status", "--data", data)
            return st.returncode == 0 and "DOWN" not in st.stdout
        wait_until(status_all_up, 120, "every process answering seqex status")
        assert len(cluster_pids()) == len(topo.procs)
        assert seqex("down", "--data", data).returncode == 0
        second.wait(60)
    assert pids_of(data) == [], "processes left behind after seqex down"
