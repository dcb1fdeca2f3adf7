"""Trust boundaries (docs/security.md), as an attacker with a shell on the host would try them.

A topology of real processes on 127.0.0.1 (two replicators, the sequencer of in.ce.BTCUSDT,
the mirror of out.ce.BTCUSDT, a hot and a warm CrossEngine replica), every one with its own
CURVE key from `seqex keys`. The attacker holds a key the policy knows (a stolen replica key,
or a producer key registered for source 5) and, separately, a key nobody knows. Each attack of
the issue is made and must be refused with an ERROR naming the reason, with nothing written:
the replicators' logs (last seq, epoch), the mirror's out stream and the replicas' state stay
where they were. The operator key, sent the same messages, is obeyed: the checks are the
roles, not a broken link.
"""
from __future__ import annotations

import os
import re

import pytest
import zmq

from crossengine import codec as c
from deploy import keys, topology
from deploy.procs import Group, tcp
from mq import auth, sockets, wire
from mq.control import call, ping, stats, wait_until
from mq.producer import Producer
from mq.record import decode, encode
from mq.sources import OPERATOR_SOURCE

pytestmark = pytest.mark.timeout(240)

CONF = {
    "cluster": {"base_port": 7100, "tick_ms": 50},
    "replicator": [{"name": "replicator0"}, {"name": "replicator1"}],
    "symbol": [{"name": "BTCUSDT", "hot": 1, "warm": 1, "in_policy": "quorum",
                "out_policy": "first"}],
}
STREAM, OUT = "in.ce.BTCUSDT", "out.ce.BTCUSDT"
ATTACKER_SOURCE = 5


def _fresh_ports(topo):
    """Every address of the plan moved to a port free now (other tests run in parallel)."""
    seen: dict[str, str] = {}
    for spec in topo.procs:
        spec.args = [seen.setdefault(a, tcp()) if re.fullmatch(r"tcp://127\.0\.0\.1:\d+", a)
                     else a for a in spec.args]
        spec.control = seen[spec.control]
    for sym in topo.symbols.values():
        for k in ("producers", "pub", "out_pub"):
            sym[k] = seen[sym[k]]
    return topo


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("trust"))
    topo = _fresh_ports(topology.plan(CONF, root))
    keys_dir = keys.keys_dir_of(root)
    keys.write_keypair(keys_dir, "attacker")  # a key the policy does not know
    keys.generate(topo, keys_dir, producers={"gateway": [ATTACKER_SOURCE]})
    topo = keys.secure(topo, keys_dir)
    auth.configure(keys_dir, "operator")      # this test process is the operator's tools
    group = Group(os.path.join(root, "logs"))
    try:
        for spec in topo.procs:
            group.spawn(spec.name, spec.args)
            wait_until(lambda spec=spec: ping(spec.control), 60, spec.name)
        wait_until(lambda: (ping(topo.by_name("sequencer.BTCUSDT").control) or {}).get("epoch"),
                   60, "the sequencer")
        yield topo, keys_dir
    finally:
        group.stop_all()
        auth.reset()


@pytest.fixture(autouse=True)
def _operator(cluster):
    """Each test starts as the operator's tools (conftest resets the identity after each)."""
    _topo, keys_dir = cluster
    auth.configure(keys_dir, "operator")


def identity(keys_dir: str, name: str) -> auth.Identity:
    return auth.Identity(name, auth.load_public(keys_dir, name),
                         auth.load_secret(keys_dir, name), auth.Trust.load(keys_dir), keys_dir)


def ask(addr: str, who: auth.Identity, parts: list[bytes], timeout_s: float = 5.0):
    """Send parts as `who`; the answer (kind, body), or None if nothing came back."""
    sock = sockets.dealer(addr, curve=who, heartbeat_ms=0)
    try:
        sock.send_multipart(parts)
        if not sock.poll(int(timeout_s * 1000)):
            return None
        msg = sock.recv_multipart()
        return msg[0], wire.unpack(msg[1])
    finally:
        sock.close(0)


def state(addr: str) -> dict:
    _k, body, _ = call(addr, wire.STATE, {"stream": STREAM})
    return body


def replicators(topo) -> list[str]:
    return topo.replicator_addrs()


def forged_frame(st: dict, account: int = 31337) -> bytes:
    seq = st["last"] + 1
    order = c.new_order(1, c.BUY, 100, 1, account)
    return encode([(seq, st["ts"] + 1, ATTACKER_SOURCE, 1, st["epoch"], c.NEW_ORDER, order)])


def test_forged_append_is_refused_and_nothing_written(cluster):
    topo, keys_dir = cluster
    stolen = identity(keys_dir, "ce.BTCUSDT.hot0")  # a known key, but not the master's
    for addr in replicators(topo):
        before = state(addr)
        frame = forged_frame(before)
        fields = {"stream": STREAM, "epoch": before["epoch"], "first": before["last"] + 1,
                  "last": before["last"] + 1, "commit": before["last"] + 1}
        answer = ask(addr, stolen, [wire.APPEND, wire.pack(fields), frame])
        assert answer is not None and answer[0] == wire.ERROR, answer
        assert answer[1]["reason"] == "not_master"
        after = state(addr)
        assert after["epoch"] == before["epoch"]
        _k, body, parts = call(addr, wire.REPLAY, {"stream": STREAM, "from": 1,
                                                   "uncommitted": True})
        assert all(r[2] != ATTACKER_SOURCE for r in decode(parts[0])), "a forged record is stored"
    answer = stats(replicators(topo)[0])
    assert answer["unauthorized"] >= 1
    assert any("not_master" in reasons for reasons in answer["refusals"].values())


def test_claim_from_a_non_master_is_refused(cluster):
    topo, keys_dir = cluster
    stolen = identity(keys_dir, "ce.BTCUSDT.hot0")
    for addr in replicators(topo):
        before = state(addr)
        answer = ask(addr, stolen, [wire.CLAIM, wire.pack({"stream": STREAM,
                                                           "epoch": (1 << 32) - 1})])
        assert answer is not None and answer[0] == wire.ERROR and \
            answer[1]["reason"] == "not_master", answer
        assert state(addr)["epoch"] == before["epoch"]
    # the sequencer was not fenced: it still sequences
    seq = topo.by_name("sequencer.BTCUSDT").control
    last = stats(seq)["last"]
    wait_until(lambda: stats(seq)["committed"] > last, 30, "the sequencer to go on")


def test_forged_data_to_the_mirror_is_refused(cluster):
    topo, keys_dir = cluster
    mirror = topo.by_name("mirror.BTCUSDT").control
    before = stats(mirror)
    nxt = before["last"] + 1
    frame = encode([(s, 1, 0, s, 1, 1, b"forged") for s in range(nxt, nxt + 1000)])
    # the sequencer's key is known, but it feeds no mirror; the operator is no replica either
    for who in ("sequencer.BTCUSDT", "operator"):
        answer = ask(mirror, identity(keys_dir, who),
                     [wire.DATA, wire.pack({"replica": "ce.BTCUSDT.hot0"}), frame])
        assert answer is not None and answer[0] == wire.ERROR and \
            answer[1]["reason"] == "not_replica", answer
    after = stats(mirror)
    assert after["accepted"] - before["accepted"] <= after["last"] - before["last"]
    assert after["divergences"] == 0 and after["alarms"] == []


@pytest.mark.parametrize("target", ["sequencer.BTCUSDT", "replicator0", "ce.BTCUSDT.hot0",
                                    "ce.BTCUSDT.warm0", "mirror.BTCUSDT"])
def test_stop_from_a_non_operator_is_refused(cluster, target):
    topo, keys_dir = cluster
    addr = topo.by_name(target).control
    answer = ask(addr, identity(keys_dir, "gateway"), [wire.STOP, wire.pack({})])
    assert answer is not None and answer[0] == wire.ERROR and \
        answer[1]["reason"] == "not_operator", answer
    assert ping(addr) is not None


def test_an_account_query_from_a_non_operator_is_refused(cluster):
    """QUERY answers an engine's live account figures: the operator's alone (`seqex client
    positions`), not a gateway's or an engine's key."""
    topo, keys_dir = cluster
    addr = topo.by_name("ce.BTCUSDT.hot0").control
    for key in ("gateway", "ce.BTCUSDT.warm0"):
        answer = ask(addr, identity(keys_dir, key), [wire.QUERY, wire.pack({"accounts": [1]})])
        assert answer is not None and answer[0] == wire.ERROR and \
            answer[1]["reason"] == "not_operator", answer


def test_promote_from_a_non_operator_is_refused(cluster):
    topo, keys_dir = cluster
    warm = topo.by_name("ce.BTCUSDT.warm0").control
    answer = ask(warm, identity(keys_dir, "ce.BTCUSDT.hot0"), [wire.PROMOTE, wire.pack({})])
    assert answer is not None and answer[0] == wire.ERROR and \
        answer[1]["reason"] == "not_operator", answer
    assert stats(warm)["replica_role"] == "warm"


def _sequenced_sources(topo) -> set[int]:
    addr = replicators(topo)[0]
    _k, _b, parts = call(addr, wire.REPLAY, {"stream": STREAM, "from": 1, "uncommitted": True})
    return {r[2] for r in decode(parts[0])}


def test_halt_as_an_operator_source_from_a_non_operator_is_refused(cluster):
    topo, keys_dir = cluster
    seq_addr = topo.by_name("sequencer.BTCUSDT").control
    gateway = identity(keys_dir, "gateway")
    # HELLO and DATA for the operator's source id, under the gateway's key
    answer = ask(seq_addr, gateway, [wire.HELLO, wire.pack({"src": OPERATOR_SOURCE})])
    assert answer is not None and answer[0] == wire.ERROR and \
        answer[1]["reason"] == "not_operator", answer
    from mq.record import pack
    batch = pack(OPERATOR_SOURCE, 1, c.HALT, [b""])
    answer = ask(seq_addr, gateway, [wire.DATA, b"\x80", batch])
    assert answer is not None and answer[0] == wire.ERROR and \
        answer[1]["reason"] == "not_operator", answer
    assert OPERATOR_SOURCE not in _sequenced_sources(topo)


def test_an_order_under_a_source_the_key_does_not_own_is_refused(cluster):
    topo, keys_dir = cluster
    seq_addr = topo.by_name("sequencer.BTCUSDT").control
    from mq.record import pack
    batch = pack(ATTACKER_SOURCE + 1, 1, c.NEW_ORDER, [c.new_order(1, c.BUY, 100, 1, 31337)])
    # the gateway owns source 5 only; a replica's key owns no source at all
    for who in ("gateway", "ce.BTCUSDT.hot0"):
        answer = ask(seq_addr, identity(keys_dir, who), [wire.DATA, b"\x80", batch])
        assert answer is not None and answer[0] == wire.ERROR and \
            answer[1]["reason"] == "source_not_registered", answer
    assert ATTACKER_SOURCE + 1 not in _sequenced_sources(topo)


def test_an_unknown_key_gets_no_connection(cluster):
    topo, keys_dir = cluster
    stranger = identity(keys_dir, "attacker")
    for spec in topo.procs:
        assert ask(spec.control, stranger, [wire.PING, wire.pack({})], timeout_s=1.0) is None
    # nor does a client without CURVE at all
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(replicators(topo)[0])
    sock.send_multipart([wire.PING, wire.pack({})])
    assert not sock.poll(1000)
    sock.close(0)


def test_fresh_keys_without_end_do_not_grow_the_refusals_without_bound(cluster):
    """A stranger may make a new keypair for every connection; the replicator's counters
    (and so its PING answer and its log) stay bounded: beyond the first few, unknown keys
    share one entry."""
    topo, keys_dir = cluster
    addr = replicators(topo)[0]
    server_key = auth.load_public(keys_dir, "replicator0")
    n = auth.MAX_UNKNOWN_PEERS * 3
    socks = []
    for _ in range(n):
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey = server_key
        sock.connect(addr)
        socks.append(sock)
    try:
        trust = auth.Trust.load(keys_dir)

        def strangers() -> dict:
            refusals = stats(addr)["refusals"]
            return {k: v for k, v in refusals.items() if not trust.known(k)}

        wait_until(lambda: sum(v.get("unknown_key", 0) for v in strangers().values()) >= n,
                   60, "every stranger's attempt counted")
        assert len(strangers()) <= auth.MAX_UNKNOWN_PEERS + 1
        assert auth.OTHER_KEYS in strangers()
    finally:
        for sock in socks:
            sock.close(0)


def test_the_operator_and_registered_producers_are_served(cluster):
    """The same paths work for the keys whose role allows them: CURVE end to end, producer
    -> sequencer -> replicators -> replica -> mirror -> replicators."""
    topo, keys_dir = cluster
    seq_addr = topo.by_name("sequencer.BTCUSDT").control
    auth.configure_identity(identity(keys_dir, "gateway"))
    try:
        prod = Producer(ATTACKER_SOURCE, seq_addr)
        prod.connect(30)
        prod.submit(c.NEW_ORDER, [c.new_order(7, c.BUY, 100, 1, 1)])
        runs = prod.flush(30)
        prod.close()
    finally:
        auth.configure_identity(identity(keys_dir, "operator"))
    seq = runs[-1][2]
    mirror = topo.by_name("mirror.BTCUSDT").control
    wait_until(lambda: stats(mirror)["committed"] >= seq, 60, "the order's output")
    assert stats(mirror)["divergences"] == 0


def test_halt_from_a_client_source_is_sequenced_but_refused_by_the_engine(cluster):
    """A registered producer may write its own source id, but HALT from it is not the
    operator's: the CrossEngine refuses it (the source is in the record), and so would every
    replica and every rebuild. The operator's HALT, through the operator's key and source,
    halts."""
    topo, keys_dir = cluster
    seq_addr = topo.by_name("sequencer.BTCUSDT").control

    def produce(who: str, src: int, kind: int) -> int:
        auth.configure_identity(identity(keys_dir, who))
        try:
            prod = Producer(src, seq_addr)
            prod.connect(30)
            prod.submit(kind, [b""])
            runs = prod.flush(30)
            prod.close()
        finally:
            auth.configure_identity(identity(keys_dir, "operator"))
        return runs[-1][2]

    def events_at(seq: int) -> list[tuple]:
        def stored() -> bytes:
            _k, _b, parts = call(replicators(topo)[0], wire.REPLAY,
                                 {"stream": OUT, "from": seq, "to": seq})
            return parts[0]
        frame = wait_until(stored, 60, f"the output of seq {seq} in {OUT}")
        return c.decode_events(decode(frame)[0][6])

    refused = events_at(produce("gateway", ATTACKER_SOURCE, c.HALT))
    assert refused[0][0] == c.EV_REJECTED and refused[0][3] == c.CODES["source_not_operator"]
    assert events_at(produce("operator", OPERATOR_SOURCE, c.HALT)) == [(c.EV_HALTED,)]
    assert events_at(produce("operator", OPERATOR_SOURCE, c.RESUME)) == [(c.EV_RESUMED,)]


def test_a_divergence_alarm_names_the_key_not_the_name_in_the_message(cluster):
    """A stolen replica key may feed its mirror (that is its role), but the alarm its forged
    copy raises names the key's owner, not the replica it claims to be in the message.
    (Runs last: it leaves a divergence alarm behind.)"""
    topo, keys_dir = cluster
    mirror = topo.by_name("mirror.BTCUSDT").control
    seq = stats(mirror)["committed"]
    frame = encode([(seq, 1, 7, 1, 1, c.NEW_ORDER, b"forged copy")])
    sock = sockets.dealer(mirror, curve=identity(keys_dir, "ce.BTCUSDT.hot0"), heartbeat_ms=0)
    sock.send_multipart([wire.DATA, wire.pack({"replica": "ce.BTCUSDT.hot1"}), frame])
    alarms = wait_until(lambda: stats(mirror)["alarms"], 30, "the divergence alarm")
    sock.close(0)
    assert alarms[-1]["seq"] == seq and alarms[-1]["divergent"] == "ce.BTCUSDT.hot0", alarms
