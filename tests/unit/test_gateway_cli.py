"""`seqex gateway`: a bad configuration or accounts file is one line on stderr and status 2,
before anything starts; the verb is a server process (keys or --insecure required)."""
from __future__ import annotations

import json

import pytest

from deploy import cli
from gateway import accounts
from gateway import server as gs

SHARD = {"in": "tcp://127.0.0.1:7001", "pub": "tcp://127.0.0.1:7002",
         "replicators": ["tcp://127.0.0.1:7003"]}


def good(tmp_path, **over):
    path = tmp_path / "accounts.json"
    if not path.exists():
        accounts.add_user(path, "alice", "pw", [2], n=1024)
    doc = {"index": 1, "listen": "127.0.0.1:9100", "accounts": str(path), "shards": [SHARD],
           "specs": [{"symbol_id": 1, "name": "BTCUSDT", "tick": "0.5", "lot": "0.001"}],
           "max_depth": 100, "heartbeat_ms": 500, "max_connections": 10}
    doc.update(over)
    return doc


def test_parse_settings(tmp_path):
    s = gs.parse_settings(good(tmp_path))
    assert (s.host, s.port, s.cfg.index, s.cfg.max_depth, s.cfg.heartbeat_ms,
            s.cfg.max_connections) == ("127.0.0.1", 9100, 1, 100, 500, 10)
    assert s.shards == [SHARD] and s.specs[0]["name"] == "BTCUSDT"
    path = tmp_path / "gw.json"
    path.write_text(json.dumps(good(tmp_path)))
    assert gs.read_settings(str(path)).port == 9100


@pytest.mark.parametrize("over, problem", [
    ({"index": -1}, "index"),
    ({"index": 70000}, "index"),
    ({"listen": "9100"}, "listen"),
    ({"listen": "127.0.0.1:0"}, "listen"),
    ({"shards": []}, "shards"),
    ({"shards": [{"in": "x"}]}, "shard 0"),
    ({"shards": [dict(SHARD, replicators=[])]}, "replicator"),
    ({"shards": [dict(SHARD, pub="nowhere")]}, "endpoints"),
    ({"specs": [{"symbol_id": 1, "name": "X", "tick": "0", "lot": "1"}]}, "tick"),
    ({"specs": [{"symbol_id": 1, "name": "X", "tick": "1", "lot": "x"}]}, "lot"),
    ({"specs": [{"symbol_id": 1, "name": "X" * 17, "tick": "1", "lot": "1"}]}, "name"),
    ({"specs": [{"symbol_id": 1, "name": "X", "tick": "1", "lot": "1"}] * 2}, "unique"),
    ({"heartbeat_ms": 50}, "heartbeat_ms"),
    ({"max_depth": "big"}, "max_depth"),
    ({"max_connections": 0}, "max_connections"),
    ({"colour": "red"}, "unknown key 'colour'"),
])
def test_bad_settings(tmp_path, over, problem):
    with pytest.raises(ValueError, match=problem):
        gs.parse_settings(good(tmp_path, **over))


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


@pytest.mark.parametrize("config", ["{not json", "/nonexistent/gw.json", "[]"])
def test_cli_bad_config_is_one_line(capsys, config):
    rc, err = _run(capsys, "--insecure", "gateway", "--config", config)
    assert rc == 2 and len(err) == 1 and err[0].startswith("seqex gateway: "), err


def test_cli_bad_accounts_is_one_line(capsys, tmp_path):
    doc = good(tmp_path, accounts=str(tmp_path / "missing.json"))
    rc, err = _run(capsys, "--insecure", "gateway", "--config", json.dumps(doc))
    assert rc == 2 and err == [f"seqex gateway: accounts file {tmp_path}/missing.json does "
                               f"not exist"]
    accounts.add_user(tmp_path / "two.json", "bob", "pw", [1, 2], n=1024)
    doc = good(tmp_path, accounts=str(tmp_path / "two.json"), shards=[SHARD, SHARD])
    rc, err = _run(capsys, "--insecure", "gateway", "--config", json.dumps(doc))
    assert rc == 2 and len(err) == 1 and "one shard" in err[0]


def test_cli_gateway_needs_keys_or_insecure(capsys, tmp_path):
    rc, err = _run(capsys, "gateway", "--config", json.dumps(good(tmp_path)))
    assert rc == 2 and len(err) == 1 and "--insecure" in err[0]


@pytest.mark.parametrize("exc, words", [
    ("refused", "source_not_registered; the trust policy and the topology must give gateway 1"),
    ("timeout", "held by another connection"),
])
def test_a_log_that_will_not_take_the_gateway_is_one_line_and_status_2(capsys, tmp_path,
                                                                        monkeypatch, exc, words):
    """A gateway whose source id the sequencer refuses (an index the policy does not know), or
    that another gateway of the same index holds, ends with one line on stderr and status 2
    (a second gateway started by hand printed a 24-line traceback)."""
    from gateway import mq_core
    from mq.producer import Refused

    async def start(self):
        if exc == "refused":
            raise Refused("refused: in.te.0: source 1912602625: source_not_registered")
        raise TimeoutError("in.te.0: the sequencer at tcp://x says source 0x72000001 "
                           "(gateway 1) is held by another connection")
    monkeypatch.setattr(mq_core.MqCore, "start", start)
    settings = gs.parse_settings(good(tmp_path))
    assert gs.main(settings, accounts.load(settings.accounts, 1)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err, err
