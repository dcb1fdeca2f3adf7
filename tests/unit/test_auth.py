"""mq/auth.py and deploy/keys.py without processes: the key files and their modes, the policy a
topology gives, every role decision (allowed and refused), refusal counting and the
once-a-minute log, and CURVE with the User-Id on real sockets inside this process."""
from __future__ import annotations

import logging
import os
import stat
import time

import pytest
import zmq

from deploy import keys, topology
from deploy.procs import tcp
from mq import auth, sockets
from mq.sources import OPERATOR_SOURCE, OPERATOR_SOURCE_MIN
from tests.fakeup import fake_up


@pytest.fixture(autouse=True)
def _no_identity():
    auth.reset()
    yield
    auth.reset()


@pytest.fixture
def default(tmp_path):
    topo = topology.load(None, str(tmp_path))
    keys_dir = keys.generate(topo, producers={"gateway": [101, 102]})
    return topo, keys_dir


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_keys_for_every_process_with_secret_files_0600(default):
    topo, keys_dir = default
    # a standby master has its primary's key (the same server key on the same endpoints)
    for name in [keys.key_name(p) for p in topo.procs] + ["operator", "gateway"]:
        assert _mode(auth.secret_path(keys_dir, name)) == 0o600
        assert _mode(auth.public_path(keys_dir, name)) == 0o644
        assert len(auth.load_secret(keys_dir, name)) == 40
    assert _mode(os.path.join(keys_dir, auth.TRUST_FILE)) == 0o644


def test_a_secret_key_readable_by_others_is_refused(default):
    _topo, keys_dir = default
    os.chmod(auth.secret_path(keys_dir, "replicator0"), 0o640)
    with pytest.raises(auth.KeyFileError, match="readable by others"):
        auth.load_secret(keys_dir, "replicator0")


def test_generate_keeps_keys_and_rotate_replaces_only_the_named_one(default):
    topo, keys_dir = default
    before = {p.name: auth.load_public(keys_dir, keys.key_name(p)) for p in topo.procs}
    assert keys.ensure(topo, keys_dir) == keys_dir
    keys.generate(topo, keys_dir, rotate=["replicator0"])
    after = {p.name: auth.load_public(keys_dir, keys.key_name(p)) for p in topo.procs}
    assert after["replicator0"] != before["replicator0"]
    assert {k: v for k, v in after.items() if k != "replicator0"} == \
        {k: v for k, v in before.items() if k != "replicator0"}
    trust = auth.Trust.load(keys_dir)
    assert before["replicator0"].decode() not in trust.peers
    assert trust.peers[after["replicator0"].decode()].name == "replicator0"
    with pytest.raises(ValueError):
        keys.generate(topo, keys_dir, rotate=["nobody"])


def test_ensure_generates_on_first_start_only(tmp_path):
    topo = topology.load(None, str(tmp_path))
    keys_dir = keys.ensure(topo)
    first = auth.load_public(keys_dir, "operator")
    keys.ensure(topo)
    assert auth.load_public(keys_dir, "operator") == first


def test_the_policy_of_the_default_topology(default):
    topo, keys_dir = default
    trust = auth.Trust.load(keys_dir)
    by_name = {p.name: (k, p) for k, p in trust.peers.items()}
    assert by_name["sequencer.BTCUSDT"][1].masters == {"in.ce.BTCUSDT"}
    assert by_name["mirror.BTCUSDT"][1].masters == {"out.ce.BTCUSDT"}
    for replica in ("ce.BTCUSDT.hot0", "ce.BTCUSDT.hot1", "ce.BTCUSDT.warm0"):
        assert by_name[replica][1].feeds == {"out.ce.BTCUSDT"}
        assert not by_name[replica][1].masters
    assert by_name["gateway"][1].sources == {101, 102}
    assert trust.operator == {auth.load_public(keys_dir, "operator").decode()}
    # every endpoint a process binds names that process's key; a replica's --pub (the in
    # stream it reads) is the sequencer's
    seq = topo.by_name("sequencer.BTCUSDT")
    assert trust.servers[seq.control] == by_name["sequencer.BTCUSDT"][0]
    assert trust.servers[topo.symbols["BTCUSDT"]["pub"]] == by_name["sequencer.BTCUSDT"][0]
    for spec in topo.procs:
        if spec.role in ("gateway", "marketdata"):   # PROTOCOL.md over TCP, not ZeroMQ
            assert spec.control not in trust.servers
            continue
        assert trust.servers[spec.control] == by_name[keys.key_name(spec)][0]
    # a standby is its primary in the policy: no peer of its own
    assert topo.by_name("sequencer.BTCUSDT.standby").extra["key"] == "sequencer.BTCUSDT"
    assert "sequencer.BTCUSDT.standby" not in by_name


def test_secure_puts_the_identity_in_front_of_every_command(default):
    topo, keys_dir = default
    for spec in keys.secure(topo, keys_dir).procs:
        assert spec.args[:4] == ["--keys", keys_dir, "--key", keys.key_name(spec)]


def test_role_decisions(default):
    _topo, keys_dir = default
    auth.configure(keys_dir, "operator")
    trust = auth.identity().trust
    key = {p.name: k for k, p in trust.peers.items()}
    op = next(iter(trust.operator))
    seq, mirror, hot = key["sequencer.BTCUSDT"], key["mirror.BTCUSDT"], key["ce.BTCUSDT.hot0"]
    gw = key["gateway"]
    # replicator
    for kind in (b"APPEND", b"COMMIT", b"TRUNCATE", b"CLAIM"):
        assert auth.replicator_refusal(seq, kind, "in.ce.BTCUSDT") is None
        assert auth.replicator_refusal(seq, kind, "out.ce.BTCUSDT") == "not_master"
        assert auth.replicator_refusal(mirror, kind, "out.ce.BTCUSDT") is None
        assert auth.replicator_refusal(hot, kind, "in.ce.BTCUSDT") == "not_master"
        assert auth.replicator_refusal(None, kind, "in.ce.BTCUSDT") == "not_master"
    assert auth.replicator_refusal(op, b"CLAIM", "in.ce.BTCUSDT") is None
    assert auth.replicator_refusal(op, b"APPEND", "in.ce.BTCUSDT") == "not_master"
    for kind in (b"REPLAY", b"STATE", b"DIGEST", b"PING"):
        assert auth.replicator_refusal(hot, kind, None) is None
    assert auth.replicator_refusal("x" * 40, b"REPLAY", None) == "unknown_key"
    assert auth.replicator_refusal(seq, b"STOP", None) == "not_operator"
    assert auth.replicator_refusal(op, b"STOP", None) is None
    # sequencer
    assert auth.producer_refusal(gw, 101) is None
    assert auth.producer_refusal(gw, 103) == "source_not_registered"
    assert auth.producer_refusal(hot, 101) == "source_not_registered"
    assert auth.producer_refusal(gw, OPERATOR_SOURCE) == "not_operator"
    assert auth.producer_refusal(op, OPERATOR_SOURCE_MIN) is None
    assert auth.producer_refusal(op, OPERATOR_SOURCE_MIN - 1) == "source_not_registered"
    # mirror
    assert auth.feed_refusal(hot, "out.ce.BTCUSDT") is None
    assert auth.feed_refusal(hot, "out.ce.ETHUSDT") == "not_replica"
    assert auth.feed_refusal(mirror, "out.ce.BTCUSDT") == "not_replica"
    assert auth.feed_refusal(op, "out.ce.BTCUSDT") == "not_replica"
    # operator verbs
    assert auth.operator_refusal(op) is None
    assert auth.operator_refusal(seq) == "not_operator"
    assert auth.operator_refusal(None) == "not_operator"


def test_insecure_allows_everything():
    assert auth.insecure()
    assert auth.replicator_refusal(None, b"APPEND", "s") is None
    assert auth.producer_refusal(None, OPERATOR_SOURCE) is None
    assert auth.feed_refusal(None, "s") is None
    assert auth.operator_refusal(None) is None


def test_refusals_are_counted_each_and_logged_once_a_minute(monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="seqex.auth"):
        for _ in range(500):
            auth.note_refusal("K" * 40, "not_master")
        auth.note_refusal("K" * 40, "not_operator")
        auth.note_refusal("L" * 40, "not_master")
        assert len(caplog.records) == 2   # one per peer
        now[0] += auth.LOG_EVERY_S - 0.001
        auth.note_refusal("K" * 40, "not_master")
        assert len(caplog.records) == 2
        now[0] += 0.001
        auth.note_refusal("K" * 40, "not_master")
        assert len(caplog.records) == 3
    assert "K" * 40 in caplog.records[-1].getMessage()
    assert auth.refusal_stats() == {"K" * 40: {"not_master": 502, "not_operator": 1},
                                    "L" * 40: {"not_master": 1}}


def _ident(name: str, trust: auth.Trust) -> auth.Identity:
    public, secret = zmq.curve_keypair()
    return auth.Identity(name, public, secret, trust)


def test_curve_admits_known_keys_and_names_them_on_every_message():
    addr = tcp()
    trust = auth.Trust()
    server = _ident("server", trust)
    client, stranger = _ident("client", trust), _ident("stranger", trust)
    trust.peers[client.public.decode()] = auth.Peer("client")
    trust.servers[addr] = server.public.decode()
    auth.configure_identity(server)
    router = sockets.router(addr)
    known = sockets.dealer(addr, curve=client, heartbeat_ms=0)
    unknown = sockets.dealer(addr, curve=stranger, heartbeat_ms=0)
    try:
        for k in range(3):
            known.send_multipart([b"PING", b"%d" % k])
            assert router.poll(5000)
            peer, msg = auth.recv_multipart(router)
            assert peer == client.public.decode() and msg[1:] == [b"PING", b"%d" % k]
        # The stranger's handshake may already have been refused (its pipe is then gone and a
        # blocking send would wait for a peer forever): send without blocking.
        try:
            unknown.send_multipart([b"PING", b"x"], zmq.NOBLOCK)
        except zmq.Again:
            pass
        assert not router.poll(500)
        deadline = time.monotonic() + 10
        while not auth.refusals[(stranger.public.decode(), "unknown_key")]:
            assert time.monotonic() < deadline, "the stranger's key was never refused"
            time.sleep(0.01)
    finally:
        for s in (router, known, unknown):
            s.close(0)


def test_a_client_needs_the_servers_key():
    auth.configure_identity(_ident("me", auth.Trust()))
    with pytest.raises(auth.KeyFileError, match="no server key"):
        sockets.dealer(tcp())


def test_prepare_up_generates_on_first_start_and_takes_the_operator_key(tmp_path):
    topo = topology.load(None, str(tmp_path))
    started = keys.prepare_up(topo)
    keys_dir = keys.keys_dir_of(str(tmp_path))
    assert auth.identity().public == auth.load_public(keys_dir, "operator")
    assert all(p.args[:2] == ["--keys", keys_dir] for p in started.procs)
    auth.reset()
    with pytest.raises(auth.KeyFileError, match="no keys"):
        keys.prepare_up(topology.load(None, str(tmp_path / "other")), generate_missing=False)


def test_process_verbs_without_keys_refuse_and_tools_find_the_operator_key(tmp_path, capsys):
    import argparse
    ns = argparse.Namespace
    with pytest.raises(SystemExit, match="no --keys given"):
        keys.setup(ns(verb="replicator", keys=None, key=None, insecure=False))
    keys.setup(ns(verb="replicator", keys=None, key=None, insecure=True))
    assert "CURVE is OFF" in capsys.readouterr().out
    topo = topology.load(None, str(tmp_path))
    keys_dir = keys.generate(topo)
    keys.setup(ns(verb="status", keys=None, key=None, insecure=False, data=str(tmp_path)))
    assert auth.identity().public == auth.load_public(keys_dir, "operator")
    auth.reset()
    keys.setup(ns(verb="status", keys=None, key=None, insecure=True, data=str(tmp_path)))
    assert auth.insecure()
    keys.setup(ns(verb="sequencer", keys=keys_dir, key="sequencer.BTCUSDT", insecure=False))
    assert auth.identity().name == "sequencer.BTCUSDT"
    with pytest.raises(SystemExit):
        keys.setup(ns(verb="sequencer", keys=keys_dir, key="sequencer.BTCUSDT", insecure=True))


def test_a_secret_key_that_is_not_z85_is_refused_with_its_path(default):
    _topo, keys_dir = default
    path = auth.secret_path(keys_dir, "replicator0")
    with open(path, "w") as f:
        f.write("~" * 40 + "\n")
    with pytest.raises(auth.KeyFileError, match="replicator0.key_secret.*z85"):
        auth.configure(keys_dir, "replicator0")
    assert auth.insecure()


def test_a_secret_key_of_another_keypair_is_refused(default):
    """A valid secret key that does not belong to the public key would start a server no
    client can reach, with nothing said: it is refused at start instead."""
    _topo, keys_dir = default
    with open(auth.secret_path(keys_dir, "replicator1"), "rb") as f:
        other = f.read()
    with open(auth.secret_path(keys_dir, "replicator0"), "wb") as f:
        f.write(other)
    with pytest.raises(auth.KeyFileError, match="does not belong"):
        auth.configure(keys_dir, "replicator0")
    assert auth.insecure()


@pytest.mark.parametrize("where", ["operator", "peers", "servers"])
def test_a_policy_with_a_key_that_is_not_z85_is_refused(default, where):
    import json
    _topo, keys_dir = default
    path = os.path.join(keys_dir, auth.TRUST_FILE)
    with open(path) as f:
        d = json.load(f)
    if where == "operator":
        d["operator"] = ["~" * 40]
    elif where == "peers":
        d["peers"]["short"] = {"name": "x"}
    else:
        d["servers"] = {a: "~" * 40 for a in d["servers"]}
    with open(path, "w") as f:
        json.dump(d, f)
    with pytest.raises(auth.KeyFileError, match="trust policy.*z85"):
        auth.Trust.load(keys_dir)


def test_prepare_up_closes_the_data_directory_to_other_users(tmp_path):
    """The log on disk (the replicators' files), the snapshots and the process logs hold every
    order; CURVE keeps other users off the sockets, the data directory's mode keeps them off
    the files."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    keys.prepare_up(topology.load(None, str(data)))
    assert _mode(str(data)) == 0o700


def test_refusals_of_ever_new_unknown_keys_stay_bounded(default, monkeypatch, caplog):
    """A stranger may make a fresh keypair for every connection: the refusals of keys outside
    the policy beyond the first MAX_UNKNOWN_PEERS share one entry and one log line a minute,
    so the counters, the PING answers and the log stay bounded; a known key is always counted
    on its own."""
    _topo, keys_dir = default
    auth.configure(keys_dir, "operator")
    known = next(k for k, p in auth.identity().trust.peers.items() if p.name == "gateway")
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="seqex.auth"):
        for _ in range(5000):
            auth.note_refusal(zmq.curve_keypair()[0].decode(), "unknown_key")
        auth.note_refusal(known, "not_operator")
    stats = auth.refusal_stats()
    assert len(stats) == auth.MAX_UNKNOWN_PEERS + 2
    assert stats[auth.OTHER_KEYS] == {"unknown_key": 5000 - auth.MAX_UNKNOWN_PEERS}
    assert stats[known] == {"not_operator": 1}
    assert len(caplog.records) == auth.MAX_UNKNOWN_PEERS + 2
    assert sum(sum(r.values()) for r in stats.values()) == 5001


@pytest.mark.parametrize("producers, match", [
    ({"operator": [5]}, "operator"),                 # would hand out the operator's key
    ({"sequencer.BTCUSDT": [5]}, "process"),         # would drop the sequencer's masters
    ({"replicator0": [5]}, "process"),
    ({"../outside": [5]}, "name"),                   # key files outside the keys directory
    ({"": [5]}, "name"),
    ({"g": [0]}, "source"),                          # the sequencer's own Ticks
    ({"g": [-3]}, "source"),
    ({"g": [OPERATOR_SOURCE_MIN]}, "operator"),      # only the operator key may use it
    ({"g": [1 << 32]}, "source"),
    ({"a": [5], "b": [6, 5]}, "both"),               # two producers must never share one
])
def test_keys_refuses_producers_that_clash_with_roles_or_sources(tmp_path, producers, match):
    topo = topology.load(None, str(tmp_path))
    with pytest.raises(ValueError, match=match):
        keys.generate(topo, producers=producers)
    assert not os.path.exists(os.path.join(str(tmp_path), "outside.key"))
    assert not os.path.exists(os.path.join(keys.keys_dir_of(str(tmp_path)), auth.TRUST_FILE))


def test_keys_command_errors_are_one_line(tmp_path):
    import subprocess
    import sys
    for bad in ("x", "operator=5", "g=4294967295"):
        run = subprocess.run([sys.executable, "-m", "deploy.cli", "keys", "--data",
                              str(tmp_path), "--producer", bad],
                             capture_output=True, text=True, timeout=60)
        err = run.stderr.strip()
        assert run.returncode != 0 and err.startswith("seqex keys: ") and "\n" not in err, err


def test_keys_for_a_running_cluster_names_its_own_ports(tmp_path):
    """`seqex keys --data D` while a cluster started with --base-port runs in D makes the
    policy for the cluster's ports (one for the default ports would lock its tools and its
    restarted processes out); other ports than the cluster's are refused, exit status 2."""
    import json
    import subprocess
    import sys
    data = str(tmp_path)
    running = topology.load(None, data, 24600)
    held = fake_up(data, json.loads(running.to_json()))     # alive: the cluster is up

    def seqex_keys(*args):
        return subprocess.run([sys.executable, "-m", "deploy.cli", "keys", "--data", data,
                               *args], capture_output=True, text=True, timeout=60)
    assert seqex_keys().returncode == 0
    with open(os.path.join(keys.keys_dir_of(data), auth.TRUST_FILE)) as f:
        servers = json.load(f)["servers"]
    assert "tcp://127.0.0.1:24600" in servers and "tcp://127.0.0.1:7100" not in servers
    assert seqex_keys("--base-port", "24600").returncode == 0
    run = seqex_keys("--base-port", "7100")
    assert run.returncode == 2 and run.stderr.startswith("seqex keys: seqex is up in ")
    with open(os.path.join(keys.keys_dir_of(data), auth.TRUST_FILE)) as f:
        assert json.load(f)["servers"] == servers
    # a damaged policy is remade for the running cluster (reading its state does not need it)
    with open(os.path.join(keys.keys_dir_of(data), auth.TRUST_FILE), "w") as f:
        f.write("{")
    assert seqex_keys().returncode == 0
    with open(os.path.join(keys.keys_dir_of(data), auth.TRUST_FILE)) as f:
        assert json.load(f)["servers"] == servers
    # a damaged state while a supervisor holds the directory: its ports unknown, refused
    from deploy.supervisor import lock_data_dir
    with open(os.path.join(data, "seqex.json"), "w") as f:
        f.write("{")
    os.close(held)
    fd = lock_data_dir(data)
    try:
        run = seqex_keys()
        assert run.returncode == 2 and "its ports are unknown" in run.stderr, run.stderr
    finally:
        os.close(fd)


@pytest.mark.parametrize("what", ["trust", "dir"])
def test_a_policy_that_others_may_write_is_refused(default, what):
    """Whoever may write trust.json (or replace it in its directory) names the operator."""
    _topo, keys_dir = default
    path = os.path.join(keys_dir, auth.TRUST_FILE) if what == "trust" else keys_dir
    os.chmod(path, 0o666 if what == "trust" else 0o777)
    with pytest.raises(auth.KeyFileError, match="writable by others"):
        auth.configure(keys_dir, "operator")
    assert auth.insecure()


def test_a_policy_of_another_user_is_refused(default):
    _topo, keys_dir = default
    try:
        os.chown(keys_dir, 65534, -1)
    except PermissionError:
        pytest.skip("needs root to give a file away")
    with pytest.raises(auth.KeyFileError, match="another user"):
        auth.Trust.load(keys_dir)


def test_prepare_up_names_a_bad_key_of_any_process_before_starting(tmp_path):
    topo = topology.load(None, str(tmp_path))
    keys_dir = keys.generate(topo)
    with open(auth.secret_path(keys_dir, "replicator0"), "rb") as f:
        other = f.read()
    with open(auth.secret_path(keys_dir, "ce.BTCUSDT.warm0"), "wb") as f:
        f.write(other)
    with pytest.raises(auth.KeyFileError, match="ce.BTCUSDT.warm0.key_secret does not belong"):
        keys.prepare_up(topo)


def test_prepare_up_refuses_a_data_directory_of_another_user(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    try:
        os.chown(data, 65534, -1)
    except PermissionError:
        pytest.skip("needs root to give a file away")
    with pytest.raises(auth.KeyFileError, match="another user"):
        keys.prepare_up(topology.load(None, str(data)))


def test_a_process_verb_with_keys_needs_its_own_key_name(default, capsys):
    """Without --key, a server would take the operator's key: the wrong key for its clients,
    and the key that may do everything, held by a process that needs far less."""
    import argparse
    _topo, keys_dir = default
    for verb in keys.PROCESS_VERBS:
        with pytest.raises(SystemExit, match="--key NAME"):
            keys.setup(argparse.Namespace(verb=verb, keys=keys_dir, key=None, insecure=False))
        assert auth.insecure()
    keys.setup(argparse.Namespace(verb="status", keys=keys_dir, key=None, insecure=False))
    assert auth.identity().name == "operator"


def test_a_server_process_never_runs_insecure_by_omission(tmp_path):
    """A process verb started with neither --keys nor --insecure refuses to start (one line,
    status 2) instead of running without CURVE; --insecure starts it with the warning."""
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-m", "deploy.cli", "replicator", "--data",
                          str(tmp_path / "r"), "--bind", "tcp://127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)
    err = run.stderr.strip()
    assert run.returncode == 2, run
    assert "\n" not in err and "no --keys given" in err and "--insecure" in err, err
    assert not (tmp_path / "r").exists()   # refused before anything was created


def test_the_harness_says_insecure_explicitly():
    """Servers without keys, and tools pointed at a cluster by address alone (which would
    otherwise take the keys of a ./seqex-data in their working directory); never a tool with
    a data directory, whose keys it finds there, nor `up`, `keys` or `demo`."""
    from deploy.procs import harness_args
    assert harness_args(["replicator", "--data", "d"]) == ["--insecure", "replicator", "--data",
                                                           "d"]
    keyed = ["--keys", "k", "--key", "n", "sequencer"]
    assert harness_args(keyed) == keyed
    assert harness_args(["tail", "in.ce.X", "--pub", "tcp://127.0.0.1:1"]) == \
        ["--insecure", "tail", "in.ce.X", "--pub", "tcp://127.0.0.1:1"]
    assert harness_args(["status", "--data", "d"]) == ["status", "--data", "d"]
    for verb in ("up", "keys", "demo"):
        assert harness_args([verb]) == [verb]
    assert harness_args(["--insecure", "mirror"]) == ["--insecure", "mirror"]
    assert harness_args([]) == []


def test_rotating_a_key_keeps_the_producers_and_says_what_it_rotated(tmp_path, capsys):
    """`seqex keys --producer p1=5`, then `seqex keys --rotate replicator0`: the second
    dropped p1 from trust.json without a word (its producer was locked out). It must keep
    every producer the policy has, and say which key it rotated."""
    from deploy.cli import main
    data = str(tmp_path / "K")
    assert main(["keys", "--data", data, "--producer", "p1=5"]) == 0
    keys_dir = keys.keys_dir_of(data)
    p1 = auth.load_public(keys_dir, "p1").decode()
    capsys.readouterr()
    assert main(["keys", "--data", data, "--rotate", "replicator0"]) == 0
    out = capsys.readouterr().out
    trust = auth.Trust.load(keys_dir)
    assert trust.peers[p1].name == "p1" and trust.peers[p1].sources == {5}
    assert "1 producer: p1" in out and "rotated: replicator0 has a new keypair" in out, out
    assert main(["keys", "--data", data, "--rotate", "p1"]) == 0   # a kept producer rotates
    trust = auth.Trust.load(keys_dir)
    assert p1 not in trust.peers
    assert trust.peers[auth.load_public(keys_dir, "p1").decode()].sources == {5}


def test_seqex_keys_refuses_a_directory_others_may_write_before_writing_a_key(tmp_path,
                                                                               capsys):
    """`seqex keys --dir D` with D mode 0777 wrote every secret key into it and said nothing;
    every process then refused the directory at use. Now it is refused at once."""
    from deploy.cli import main
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    assert main(["keys", "--data", str(tmp_path / "d"), "--dir", str(shared)]) == 2
    err = capsys.readouterr().err
    assert "writable by others" in err and "no keys were written" in err, err
    assert os.listdir(shared) == []
