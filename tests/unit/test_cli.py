"""deploy/cli.py in process: argument types refuse bad values at the edge (and accept the
limit), the parser's errors are one line with status 2, SEQEX_LOG is checked, and main()
turns each kind of operating error into one line and status 2."""
from __future__ import annotations

import argparse

import pytest

from deploy import cli
from tests.fakeup import fake_up


@pytest.mark.parametrize("text", ["tcp://127.0.0.1:1", "tcp://127.0.0.1:65535", "tcp://*:7001",
                                  "tcp://127.0.0.1:*", "tcp://[::1]:7001", "tcp://host-a.x:80",
                                  "ipc:///tmp/seqex.ipc", "inproc://x"])
def test_endpoints_that_zeromq_takes(text):
    assert cli.endpoint(text) == text


@pytest.mark.parametrize("text", ["tcp://127.0.0.1:0", "tcp://127.0.0.1:65536", "tcp://127.0.0.1",
                                  "127.0.0.1:7001", "tcp://:7001", "udp://h:1", "tcp://a b:1",
                                  "ipc://", ""])
def test_endpoints_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="not an endpoint"):
        cli.endpoint(text)


def test_integer_and_decimal_ranges_at_the_edge():
    parse = cli.int_range(1, (1 << 32) - 1)
    assert parse("1") == 1 and parse(str((1 << 32) - 1)) == (1 << 32) - 1
    for bad in ("0", str(1 << 32), "-1", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    assert cli.decimal_arg("0") == "0" and cli.decimal_arg("100.25") == "100.25"
    for bad in ("-0.5", "nan", "inf", "1,5", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.decimal_arg(bad)
    assert cli.seconds("0.1") == 0.1
    for bad in ("0", "-1", "86401", "soon"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.seconds(bad)


def test_parser_errors_are_one_line_and_status_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parser().parse_args(["submit", "--side", "buy", "--qty", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["seqex submit: argument --qty: 'x' is not a number (--help for usage)"]


@pytest.mark.parametrize("value, level", [("debug", "DEBUG"), ("Info", "INFO"),
                                          (" WARNING ", "WARNING")])
def test_seqex_log_takes_any_case(monkeypatch, value, level):
    monkeypatch.setenv("SEQEX_LOG", value)
    assert cli._log_level() == level


def test_a_bad_seqex_log_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("SEQEX_LOG", "verbose")
    assert cli.main(["status", "--data", "/nonexistent"]) == 2
    assert capsys.readouterr().err == ("seqex: SEQEX_LOG must be one of debug, info, warning, "
                                       "error, critical, got 'verbose'\n")


def test_operating_errors_are_one_line(monkeypatch, capsys, tmp_path):
    import zmq

    def boom(exc):
        def fn(_a):
            raise exc
        return fn
    for exc, want in [(TimeoutError("x did not answer"), "seqex ping: x did not answer"),
                      (zmq.ZMQError(98), "seqex ping: ZeroMQ: Address already in use"),
                      (FileNotFoundError(2, "No such file or directory", "/x"),
                       "seqex ping: No such file or directory: /x"),
                      (ValueError("qty must not be negative"),
                       "seqex ping: qty must not be negative")]:
        monkeypatch.setattr(cli, "cmd_ping", boom(exc))
        assert cli.main(["ping", "tcp://127.0.0.1:9"]) == 2
        assert capsys.readouterr().err == want + "\n"
    monkeypatch.setattr(cli, "cmd_ping", boom(KeyError("bug")))
    assert cli.main(["ping", "tcp://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("seqex ping: internal error: KeyError") and err.count("\n") == 1


def test_a_reader_that_goes_away_ends_the_output_quietly(monkeypatch, capsys):
    def fn(_a):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(cli, "cmd_ping", fn)
    assert cli.main(["ping", "tcp://127.0.0.1:9"]) == 0
    assert capsys.readouterr().err == ""


def test_the_engine_names_are_the_replica_hosts():
    from deploy.engines import ENGINES
    assert tuple(sorted(ENGINES)) == cli.ENGINE_NAMES


def test_replay_takes_one_replicator_address_whole(monkeypatch, capsys, tmp_path):
    """`replay --replicator ADDR` is one address, not a list of its characters."""
    monkeypatch.chdir(tmp_path)   # no seqex-data here: no keys, no cluster
    assert cli.main(["--insecure", "replay", "in.demo", "--replicator", "tcp://127.0.0.1:9",
                     "--from", "1"]) == 2
    err = capsys.readouterr().err
    assert err == ("seqex replay: no replicator answers (tcp://127.0.0.1:9): is the cluster up? "
                   "(`seqex status`)\n")


@pytest.mark.parametrize("verb", ["replay", "tail"])
def test_an_unknown_kind_filter_is_refused(monkeypatch, capsys, tmp_path, verb):
    """--kind with a name no codec knows would print nothing at all: say so instead."""
    monkeypatch.chdir(tmp_path)
    argv = ["--insecure", verb, "in.demo", "--replicator", "tcp://127.0.0.1:9"]
    argv += ["--pub", "tcp://127.0.0.1:9"] if verb == "tail" else []
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv + ["--kind", "nosuchkind"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"seqex {verb}: argument --kind: 'nosuchkind' is not a command or "
                          "event") and err.count("\n") == 1
    for ok in ("Trade", "neworder", "32"):
        assert cli.kind_filter(ok) == ok


def test_a_submit_that_times_out_says_the_order_may_still_trade(monkeypatch, capsys):
    """The command ends when --timeout passes, but the order it sent may still be sequenced:
    it must not advise a retry (a second order) without telling how to look for the first."""
    from deploy import client

    class Late:
        def __init__(self, *_a):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *_a):
            pass

        def submit(self, *_a, **_kw):
            t = client.Ticket("BTCUSDT", 527, 778, 8, 1, 41, 1)
            raise client.OutcomeTimeout("1 order(s) not acknowledged ... wait again to retry",
                                        [t])
    monkeypatch.setattr(client, "Client", Late)
    assert cli.main(["--insecure", "submit", "--side", "buy", "--price", "41", "--qty", "1",
                     "--client-order-id", "778", "--timeout", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wait again" not in err
    assert "may still be sequenced" in err
    assert "seqex replay in.ce.BTCUSDT --order 778" in err


@pytest.mark.parametrize("text", ['{"bad', "[]", '"x"', "{}", '{"supervisor": "abc"}', "null"])
def test_a_damaged_state_file_is_one_line_and_down_removes_it(monkeypatch, capsys, tmp_path,
                                                              text):
    """status says the state file is damaged and that `seqex down` removes it; down does
    (no supervisor holds the directory), rather than refusing with the same advice."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seqex.json").write_text(text)
    assert cli.main(["status", "--data", "."]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqex status: ") and "damaged" in err and err.count("\n") == 1, err
    assert cli.main(["down", "--data", "."]) == 0
    assert "damaged" in capsys.readouterr().out
    assert not (tmp_path / "seqex.json").exists()
    assert cli.main(["status", "--data", "."]) == 2
    assert "is not up" in capsys.readouterr().err


def test_the_supervisor_says_how_a_process_ended():
    """`exited (-9): ... INFO hot replica from seq 1` read as if the process had stopped with
    that line; a signal is named as one."""
    from deploy.supervisor import how_it_ended
    assert how_it_ended(-9, "x INFO started") == "was killed by SIGKILL (its log ends: x INFO " \
        "started)"
    assert how_it_ended(-200, "y") == "was killed by signal 200 (its log ends: y)"
    assert how_it_ended(2, "seqex replica: ZeroMQ: Address already in use") == \
        "exited with status 2: seqex replica: ZeroMQ: Address already in use"


@pytest.mark.parametrize("text", [b"abc def\n", b"\xff\xfe\n", b"-5 1 1 16\n"])
def test_a_tail_out_file_of_another_format_is_named(tmp_path, text):
    """tail --out resumes after the last line's seq; a file that is not tail's said only
    "invalid literal for int() with base 10: b'abc'"."""
    path = tmp_path / "out.txt"
    path.write_bytes(b"1 5 1 16\n" + text)
    with pytest.raises(cli.UsageError, match=r"out.txt: its last line .* is not "
                       r"'seq source source_seq kind'"):
        cli._resume_point(str(path))
    assert path.read_bytes() == b"1 5 1 16\n" + text   # left as it was


def test_a_new_tail_out_file_starts_at_from_and_an_old_one_resumes(tmp_path):
    """`tail --from 100 --out NEW` wrote from seq 1: a file with no line yet starts at --from;
    one with lines resumes after its last, whatever --from says."""
    path = tmp_path / "out.txt"
    assert cli._resume_point(str(path), 100) == 100
    path.write_bytes(b"")
    assert cli._resume_point(str(path), 100) == 100
    path.write_bytes(b"7 5 1 16\n8 5 2 16\n9 5")   # a torn last line is cut off
    assert cli._resume_point(str(path), 100) == 9
    assert path.read_bytes() == b"7 5 1 16\n8 5 2 16\n"
    path.write_bytes(b"12 5")                         # a torn first line: cut off too
    assert cli._resume_point(str(path), 100) == 100 and path.read_bytes() == b""
    path.write_bytes(b"notes without a newline")      # another program's file: left alone
    with pytest.raises(cli.UsageError, match="not a file `seqex tail --out` wrote"):
        cli._resume_point(str(path), 100)
    assert path.read_bytes() == b"notes without a newline"


def test_rebuild_reads_from_a_replicator_that_answers(monkeypatch, capsys, tmp_path):
    """replay --rebuild read from the first replicator of the topology, answering or not: with
    replicator0 frozen it failed after 10 s while replicator1 held the whole log."""
    import json as json_

    from deploy import topology
    from mq import control
    # a topology of the CrossEngine alone (the default's CrossEngines also take out.te.N)
    (tmp_path / "t.toml").write_text('[[replicator]]\nname = "replicator0"\n[[replicator]]\n'
                                     'name = "replicator1"\n[[symbol]]\nname = "BTCUSDT"\n')
    topo = topology.load(str(tmp_path / "t.toml"), str(tmp_path), 9100)
    fake_up(str(tmp_path), json_.loads(topo.to_json()))
    r0, r1 = topo.replicator_addrs()[:2]
    monkeypatch.setattr(control, "ping", lambda addr, timeout_s=1.0: None if addr == r0 else
                        {"streams": {"in.ce.BTCUSDT": {"commit": 0}}})
    read_from = []

    def replay(addr, *_a, **_kw):
        read_from.append(addr)
        return iter(())
    monkeypatch.setattr(control, "replay", replay)
    assert cli.main(["--insecure", "replay", "in.ce.BTCUSDT", "--rebuild", "--json",
                     "--data", str(tmp_path)]) == 0
    assert read_from == [r1]
    assert '"seq": 0' in capsys.readouterr().out


def _default_cluster_state(tmp_path):
    """seqex.json of the default topology (two symbols, two shards, the LiqEngine) as if a
    `seqex up` ran here: the cluster the README trades on."""
    import json as json_

    from deploy import topology
    topo = topology.load(None, str(tmp_path), 9100)
    fake_up(str(tmp_path), json_.loads(topo.to_json()))
    return topo


def test_tail_follows_every_stream_of_the_cluster(monkeypatch, capsys, tmp_path):
    """`seqex tail out.te.0` (README, "Trade on it") was refused as an unknown stream: tail
    knew the addresses of the CrossEngine streams only. Every stream of the default cluster
    resolves to the address its master publishes on, and an unknown one is named with the
    full list."""
    topo = _default_cluster_state(tmp_path)
    shard0, shard1 = topo.trading["shards"]
    liq = topo.trading["liq"]
    btc, eth = topo.symbols["BTCUSDT"], topo.symbols["ETHUSDT"]
    pubs = {"in.ce.BTCUSDT": btc["pub"], "out.ce.BTCUSDT": btc["out_pub"],
            "in.ce.ETHUSDT": eth["pub"], "out.ce.ETHUSDT": eth["out_pub"],
            "in.te.0": shard0["pub"], "out.te.0": shard0["out_pub"],
            "in.te.1": shard1["pub"], "out.te.1": shard1["out_pub"],
            "in.liq": liq["pub"], "out.liq": liq["out_pub"]}
    parser = cli.parser()
    for stream in pubs:
        a = parser.parse_args(["tail", stream, "--data", str(tmp_path)])
        assert cli._StreamView(a).pub == pubs[stream], stream
    a = parser.parse_args(["tail", "out.te.7", "--data", str(tmp_path)])
    with pytest.raises(cli.UsageError) as exc:
        cli._StreamView(a)
    assert str(exc.value).endswith("has in.ce.BTCUSDT, in.ce.ETHUSDT, in.liq, in.te.0, "
                                   "in.te.1, out.ce.BTCUSDT, out.ce.ETHUSDT, out.liq, "
                                   "out.te.0, out.te.1")
    assert topo.stream_pubs() == pubs


def test_deploy_for_a_host_the_topology_does_not_name_is_status_2(capsys, tmp_path):
    """README: bad input to any verb is one line on stderr and exit status 2; `seqex deploy
    systemd --host nosuch` exited with status 1 (a SystemExit with a message)."""
    code = cli.main(["--insecure", "deploy", "systemd", "--host", "nosuch", "--data",
                     str(tmp_path), "--out", str(tmp_path / "units")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.endswith("seqex deploy: --host nosuch: no process of the topology runs there "
                        "(hosts: local)\n") and err.count("\n") == 1 + err.count("WARNING")


@pytest.mark.parametrize("extra", [["--user", "root\nExecStartPre=/bin/touch /tmp/x"],
                                   ["--data", "d\nExecStartPre=/bin/true"]])
def test_deploy_refuses_a_value_that_would_write_a_directive_of_its_own(capsys, tmp_path,
                                                                       extra):
    """A newline in --user (or any word of a unit) wrote `ExecStartPre=...` into every unit:
    one line, status 2, and no unit written."""
    out = tmp_path / "units"
    extra = [str(tmp_path / x) if x.startswith("d\n") else x for x in extra]
    args = ["--data", str(tmp_path)] if "--data" not in extra else []
    code = cli.main(["--insecure", "deploy", "systemd", "--host", "local", *args, "--out",
                     str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 + err.count("WARNING"), err
    assert not out.exists() or not any(out.iterdir())


def test_ping_prints_fields_a_person_reads(monkeypatch, capsys):
    """`seqex ping` decodes the answer: names, separated counts, UTC times, nested tables
    indented; --json keeps the raw answer for scripts."""
    from mq import control
    stats = {"role": "sequencer", "stream": "in.te.0", "epoch": 3, "committed": 1234567,
             "ts_ns": 1_796_000_000_123_456_789, "uncommitted_bytes": 0,
             "replicators": [{"addr": "tcp://127.0.0.1:7001", "acked": 1234567,
                              "disk_full": False}],
             "upstreams": {"out.ce.BTCUSDT": {"source": 9, "taken": 12}}, "refusals": {}}
    monkeypatch.setattr(control, "ping", lambda addr, timeout_s=2.0: stats)
    assert cli.main(["ping", "tcp://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "tcp://127.0.0.1:9: sequencer of in.te.0 answered"
    assert "  committed: 1,234,567" in out and "  epoch: 3" in out
    assert "  time: 2026-11-30 00:53:20.123 UTC" in out
    assert "  replicators:" in out and "    - acked: 1,234,567" in out
    assert "      disk full: no" in out and "  refusals: none" in out
    assert "  upstreams:" in out and "      taken: 12" in out
    assert cli.main(["ping", "tcp://127.0.0.1:9", "--json"]) == 0
    import json
    assert json.loads(capsys.readouterr().out) == stats


def test_up_with_a_host_not_in_the_topology_leaves_nothing(tmp_path, capsys):
    data = tmp_path / "d"
    assert cli.main(["up", "--data", str(data), "--host", "nosuch"]) == 2
    assert "--host nosuch: no process of the topology runs there" in capsys.readouterr().err
    assert not data.exists()


def test_rebuild_takes_the_engine_the_replicas_of_the_stream_run():
    from types import SimpleNamespace as NS
    topo = NS(procs=[NS(role="replica-hot", stream="in.risk", args=["--engine", "liqengine"]),
                     NS(role="gateway", stream="", args=[])])
    assert cli._stream_engine(topo, "in.risk") == "liqengine"
    assert cli._stream_engine(None, "in.liq") == "liqengine"
    assert cli._stream_engine(None, "in.te.1") == "tradingengine"
    assert cli._stream_engine(topo, "in.ce.BTCUSDT") == "crossengine"
    assert cli._stream_engine(topo, "in.other") is None


def _main_within(argv: list[str], seconds: float) -> int:
    """cli.main(argv) in a thread; fails the test when it has not returned in `seconds` (a
    hang would otherwise hang the suite)."""
    import threading
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(cli.main(argv)), daemon=True)
    t.start()
    t.join(seconds)
    assert result, f"seqex {argv} still runs after {seconds} s"
    return result[0]


def test_produce_to_a_server_that_never_completes_the_handshake_stops_at_timeout(capsys):
    """A sequencer that wants CURVE keys this tool lacks never completes the ZeroMQ handshake
    (here: a TCP listener that says nothing). `produce` hung for good in its first HELLO;
    it must fail after --timeout with one line, as `ping` does."""
    import socket
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        addr = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        code = _main_within(["--insecure", "produce", "--sequencer", addr, "--source", "5",
                             "--count", "1", "--timeout", "1"], 15)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"seqex produce: {addr} did not answer") and "CURVE keys" in err


def test_produce_says_the_sequencer_refused_its_source(capsys):
    """A sequencer that refuses the source (not registered to this key) answers HELLO with
    an ERROR: `produce` printed 'no WELCOME' after its timeout; it must give the reason."""
    import threading

    import zmq

    from mq import auth, wire
    router = zmq.Context.instance().socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if not router.poll(50):
                continue
            ident, kind, _body = router.recv_multipart()
            if kind == wire.PING:
                router.send_multipart([ident, wire.PONG, wire.pack({"role": "sequencer"})])
            elif kind == wire.HELLO:
                router.send_multipart([ident, wire.ERROR, wire.pack(auth.refused_body(
                    "source_not_registered", "in.demo: source 5"))])
    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        code = _main_within(["--insecure", "produce", "--sequencer", f"tcp://127.0.0.1:{port}",
                             "--source", "5", "--count", "1", "--timeout", "3"], 15)
    finally:
        stop.set()
        server.join()
        router.close(0)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "refused source 5" in err and "source_not_registered" in err, err


@pytest.mark.parametrize("op", ["deposit", "withdraw"])
def test_an_interrupted_transfer_names_its_id_and_the_safe_retry(monkeypatch, capsys, op):
    """Ctrl-C while a transfer waits for its outcome: it may be applied already. The command
    printed nothing (status 130) and its default id came from the clock, so no retry was
    safe. It must name the transfer id and the retry with it (idempotent)."""
    from deploy import supervisor, trading
    monkeypatch.setattr(supervisor, "read_state", lambda data: (object(), None))
    sent: list[int] = []

    def interrupted(_data, _topo, _account, _amount, withdraw=False, transfer_id=None,
                    timeout_s=15.0):
        sent.append(transfer_id)
        raise KeyboardInterrupt
    monkeypatch.setattr(trading, "transfer", interrupted)
    assert cli.main(["--insecure", "account", op, "2", "100"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and sent and sent[0] is not None, err
    assert f"transfer id {sent[0]}" in err and "outcome is unknown" in err
    # the retry as printed reaches the same cluster: its --data is in it
    assert f"`seqex account {op} 2 100 --transfer-id {sent[0]} --data seqex-data` again is " \
           "safe" in err


def test_an_interrupted_drill_says_what_it_did_to_the_cluster(monkeypatch, capsys):
    """Ctrl-C mid-drill printed nothing (status 130): the operator could not tell whether the
    frozen process was resumed. It must say what was done, undone included."""
    from deploy import drill

    def interrupted(*_a, done, **_kw):
        done += ["ce.BTCUSDT.hot1 (pid 42) frozen (SIGSTOP)", "ce.BTCUSDT.hot1 resumed (SIGCONT)"]
        raise KeyboardInterrupt
    monkeypatch.setattr(drill, "run", interrupted)
    assert cli.main(["--insecure", "drill", "freeze"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("seqex drill: interrupted by SIGINT (freeze): ce.BTCUSDT.hot1 (pid 42) "
                          "frozen (SIGSTOP); ce.BTCUSDT.hot1 resumed (SIGCONT)"), err


def test_a_drills_undo_runs_to_its_end_through_a_second_interrupt():
    """A freeze drill's undo interrupted (a Ctrl-C as the drill was ending, or one the signal
    handler let through) runs again to its end, once per step, then the interrupt goes on up;
    during a drill only the first SIGINT, SIGTERM or SIGHUP interrupts it."""
    import os
    import signal

    from deploy import drill
    steps, hits = [], [0]

    def undo():
        hits[0] += 1
        if hits[0] == 1:
            raise KeyboardInterrupt       # before its step
        if not steps:
            steps.append("SIGCONT")
    with pytest.raises(KeyboardInterrupt):
        drill.undo_surely(undo)
    assert steps == ["SIGCONT"] and hits[0] == 2
    before = [signal.getsignal(s) for s in drill.Interrupts.WATCHED]
    with drill.Interrupts() as it:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        os.kill(os.getpid(), signal.SIGINT)      # a later one: dropped
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(1000):
            pass
        assert it.first == signal.SIGTERM and it.exit_status == 143
    assert [signal.getsignal(s) for s in drill.Interrupts.WATCHED] == before


def test_up_keeps_supervising_when_its_reader_goes_away(monkeypatch, tmp_path):
    """`seqex up | head -2`: the supervisor's next line hit a broken pipe, which stopped the
    whole cluster and exited 0 without a word. It must go on, its lines into its log file."""
    import io
    import os
    import sys

    from deploy import supervisor
    r, w = os.pipe()
    os.close(r)   # the reader is gone
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(os.fdopen(w, "wb"), write_through=True))
    lines: list[int] = []

    def up(self, ready_timeout_s=60):
        for i in range(3):
            print(f"line {i}", flush=True)
            lines.append(i)
    monkeypatch.setattr(supervisor.Supervisor, "up", up)
    data = tmp_path / "d"
    assert cli.main(["up", "--data", str(data), "--base-port", "27400"]) == 0
    assert lines == [0, 1, 2]
    log = (data / "logs" / "seqex-up.log").read_text()
    assert "standard output was closed" in log and "line 2" in log


def test_ping_names_peers_and_sources_and_prices_an_oracle(monkeypatch, capsys, tmp_path):
    """ping printed an oracle's marks in ticks (BTCUSDT: 100,815), its source as a number
    and a sequencer's refusals under raw Z85 CURVE keys. With the cluster's --data (which
    ping refused: 'unrecognized arguments') it names them and gives prices; without, it says
    the numbers are ticks."""
    from types import SimpleNamespace as NS

    from deploy import decode, topology
    from mq import auth, control
    topo = _default_cluster_state(tmp_path)
    price = decode.units_of(topo.symbols)[topo.symbols["BTCUSDT"]["symbol_id"]].price(100_815)
    oracle = {"role": "oracle", "source": topology.SRC_ORACLE, "marks": {"BTCUSDT": 100_815},
              "index": {"BTCUSDT": 100_800}}
    monkeypatch.setattr(control, "ping", lambda addr, timeout_s=2.0: oracle)
    assert cli.main(["--insecure", "ping", "--data", str(tmp_path), "tcp://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"    BTCUSDT: {price}" in out and price != "100815", out
    assert f"  source: oracle0 ({topology.SRC_ORACLE})" in out, out
    assert cli.main(["--insecure", "ping", "--data", str(tmp_path / "none"),
                     "tcp://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out
    assert "marks in ticks (give --data of the cluster for prices):" in out, out
    key, stranger = "K" * 40, "S" * 40
    sequencer = {"role": "sequencer", "refusals": {key: {"source_not_registered": 3},
                                                   stranger: {"not_operator": 1}}}
    monkeypatch.setattr(control, "ping", lambda addr, timeout_s=2.0: sequencer)
    trust = auth.Trust(frozenset(), {key: auth.Peer("feeder1", sources=frozenset({5}))})
    monkeypatch.setattr(auth, "identity", lambda: NS(trust=trust))
    assert cli.main(["--insecure", "ping", "tcp://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "    feeder1:" in out and f"    {key}:" not in out, out
    assert f"    a key the policy does not know ({stranger}):" in out, out


def _replay_cluster(monkeypatch, tmp_path, records: list[tuple[int, int]]):
    """A running CrossEngine-only cluster (its state file) whose replicator holds
    in.ce.BTCUSDT as `records` ((seq, kind), payloads empty); what replay asked is returned."""
    import json as json_

    from deploy import topology
    from mq import control
    from mq.record import encode
    (tmp_path / "t.toml").write_text('[[replicator]]\nname = "replicator0"\n[[symbol]]\n'
                                     'name = "BTCUSDT"\n')
    topo = topology.load(str(tmp_path / "t.toml"), str(tmp_path), 9100)
    fake_up(str(tmp_path), json_.loads(topo.to_json()))
    monkeypatch.setattr(control, "ping", lambda addr, timeout_s=1.0:
                        {"streams": {"in.ce.BTCUSDT": {"commit": len(records)}}})
    asked: list[tuple] = []

    def replay(addr, stream, first, last=None, **_kw):
        asked.append((first, last))
        return iter([encode([(seq, 1_000 + seq, 0, seq, 1, kind, b"")
                             for seq, kind in records])])
    monkeypatch.setattr(control, "replay", replay)
    return asked


def test_a_replay_of_ticks_alone_says_so(monkeypatch, capsys, tmp_path):
    """`replay --from 1 --to 12` over 12 Ticks printed nothing at all, status 0, as if the
    stream were empty. It must say what it read and how to see it."""
    _replay_cluster(monkeypatch, tmp_path, [(s, 1) for s in range(1, 13)])
    argv = ["--insecure", "replay", "in.ce.BTCUSDT", "--data", str(tmp_path)]
    assert cli.main([*argv, "--from", "1", "--to", "12"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == "12 records, all Ticks (show them with --ticks)\n"



def test_a_replay_that_its_filters_empty_says_so(monkeypatch, capsys, tmp_path):
    from crossengine import codec as ce
    _replay_cluster(monkeypatch, tmp_path, [(1, ce.HALT), *((s, 1) for s in range(2, 13))])
    assert cli.main(["--insecure", "replay", "in.ce.BTCUSDT", "--data", str(tmp_path),
                     "--account", "7"]) == 0
    assert capsys.readouterr().err == ("12 records, none matches --account 7 (11 Ticks: "
                                       "--ticks shows them)\n")


def test_rebuild_refuses_options_it_would_ignore(monkeypatch, capsys, tmp_path):
    """--rebuild --from 100 rebuilt from 1 without a word; --engine bogus was answered 'name
    the engine with --engine' though it was given; --engine-config without --rebuild was
    ignored. Each is one line, status 2, naming what is wrong."""
    asked = _replay_cluster(monkeypatch, tmp_path, [(1, 1)])
    argv = ["--insecure", "replay", "in.ce.BTCUSDT", "--data", str(tmp_path)]
    for extra, want in [
            (["--rebuild", "--from", "100"], "--rebuild applies the stream from seq 1"),
            (["--rebuild", "--engine", "bogus"], "--engine 'bogus': no such engine (the "
             "engines: crossengine, liqengine, tradingengine)"),
            (["--engine-config", "{}"], "--engine-config goes only with --rebuild")]:
        assert cli.main(argv + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"seqex replay: {want}") and err.count("\n") == 1, err
    assert asked == []
    assert cli.main([*argv, "--rebuild", "--from", "1"]) == 0   # seq 1 is where it starts
    capsys.readouterr()
    # an out stream is an engine's output: rebuilt with the crossengine it ended in an
    # internal error (truncated commands)
    out = ["--insecure", "replay", "out.ce.BTCUSDT", "--data", str(tmp_path), "--rebuild",
           "--engine", "crossengine"]
    assert cli.main(out) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqex replay: --rebuild applies an engine's input stream; "
                          "out.ce.BTCUSDT is an engine's output (rebuild its in.ce.BTCUSDT "
                          "instead)") and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, name", [
    (["client", "--user", "al\udcffice", "watch"], "--user 'al\ufffdice'"),
    (["client", "--user", "alice", "--password", "p\udcff", "watch"], "--password:"),
    (["account", "create", "\udcff\udcfe", "--accounts", "9"], "NAME '\ufffd\ufffd'"),
    (["up", "--data", "d\udcff", "--base-port", "27500"], "--data 'd\ufffd'")])
def test_an_argument_that_is_not_utf8_is_named(monkeypatch, capsys, tmp_path, argv, name):
    """A byte string that is not UTF-8 failed deep in an encode: "'utf-8' codec can't encode
    characters ... surrogates not allowed", naming no argument (and `up` left its lock
    behind). One line now that names the argument (and never echoes a password)."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--insecure", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"seqex {argv[0]}: {name}") and "not valid UTF-8" in err, err
    assert err.count("\n") == 1 and "p\ufffd" not in err
    assert list(tmp_path.iterdir()) == []   # nothing left behind (no lock, no data dir)


def test_account_create_names_a_data_directory_that_does_not_exist(capsys, tmp_path):
    """It printed 'No such file or directory: DIR/accounts.json.tmp.PID.RANDOM', the name of
    an internal temporary file."""
    missing = tmp_path / "nonexistent"
    assert cli.main(["--insecure", "account", "create", "zed", "--accounts", "9",
                     "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"seqex account: the directory of the accounts file, {missing}, "
                          "does not exist") and ".tmp" not in err, err


def test_the_demo_says_why_its_cluster_did_not_start(tmp_path):
    """`seqex demo` whose `seqex up` ended at once (a port in use, a base port too high) said
    only "`seqex up` ended with status 2; see up.log": its one line now carries the reason."""
    from deploy import demo
    with pytest.raises(demo.DemoError) as err:
        demo.start_cluster(str(tmp_path / "data"), timeout_s=120, base_port=65530)
    assert "ended with status 2: seqex up: " in str(err.value) and \
        "runs past 65535" in str(err.value), err.value


def test_produce_says_what_it_waits_for(monkeypatch, capsys):
    """`seqex produce` against a silent sequencer printed nothing for its whole --timeout
    (120 s by default): after a few seconds it now says what it waits for."""
    from mq import control
    asked = []
    monkeypatch.setattr(control, "ping", lambda addr, t: asked.append(t))
    assert cli.main(["--insecure", "produce", "--sequencer", "tcp://127.0.0.1:9", "--source",
                     "1", "--count", "1", "--timeout", "60"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert asked == [3.0, 57.0], asked
    assert err[0] == ("seqex produce: no answer from the sequencer at tcp://127.0.0.1:9 yet; "
                      "waiting up to 60 s (--timeout)"), err
    assert "did not answer PING in 60 s" in err[1] and len(err) == 2, err


def test_rebuild_with_another_engine_than_the_streams_names_the_streams(capsys, tmp_path):
    """`replay in.te.0 --rebuild --engine crossengine` said "the cluster has no configuration
    for in.te.0", as if the cluster lacked something: the stream is a TradingEngine's."""
    import json as json_

    from deploy import topology
    topo = topology.load(None, str(tmp_path), 9100)
    fake_up(str(tmp_path), json_.loads(topo.to_json()))
    assert cli.main(["--insecure", "replay", "in.te.0", "--rebuild", "--engine", "crossengine",
                     "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == ("seqex replay: --rebuild: in.te.0 is a tradingengine's stream, not a "
                   "crossengine's (leave --engine out, or give --engine tradingengine)\n"), err
