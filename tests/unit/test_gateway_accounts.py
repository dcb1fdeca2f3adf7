"""The accounts file: written atomically with mode 0600, loaded with every field validated (one
line naming the problem), scrypt verification that refuses wrong passwords and unknown names
alike, and the one-shard rule for a user's accounts."""
import json
import os
import stat

import pytest

from gateway import accounts as acc

FAST = {"n": 1024}  # scrypt cost for tests; the file default is 16384


def test_add_user_then_verify(tmp_path):
    path = tmp_path / "accounts.json"
    u = acc.add_user(path, "alice", "s3cret", [4, 8], max_msgs_per_sec=50, **FAST)
    assert (u.user, u.accounts, u.default_account, u.max_msgs_per_sec) == (1, (4, 8), 4, 50)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    a = acc.load(path, n_shards=4)
    assert a.verify("alice", "s3cret") == u == a.user("alice") == a.by_id[1]
    assert a.verify("alice", b"s3cret") == u
    assert a.verify("alice", "wrong") is None
    assert a.verify("bob", "s3cret") is None
    doc = json.loads(path.read_text())
    assert set(doc["users"]["alice"]) == {"user", "salt", "scrypt", "n", "r", "p", "accounts",
                                          "default_account", "max_msgs_per_sec"}
    assert not [p for p in tmp_path.iterdir() if p.name != "accounts.json"]  # no temp left


def test_hash_is_hashlib_scrypt(tmp_path):
    import hashlib
    path = tmp_path / "a.json"
    acc.add_user(path, "bob", "pw", [1], **FAST)
    d = json.loads(path.read_text())["users"]["bob"]
    assert hashlib.scrypt(b"pw", salt=bytes.fromhex(d["salt"]), n=d["n"], r=d["r"], p=d["p"],
                          dklen=32).hex() == d["scrypt"]


def test_second_user_gets_the_next_id_and_replacing_keeps_it(tmp_path):
    path = tmp_path / "a.json"
    acc.add_user(path, "alice", "one", [1], **FAST)
    b = acc.add_user(path, "bob", "two", [2, 6], default_account=6, **FAST)
    assert (b.user, b.default_account) == (2, 6)
    a2 = acc.add_user(path, "alice", "three", [3], **FAST)
    assert a2.user == 1
    loaded = acc.load(path)
    assert loaded.verify("alice", "three") and not loaded.verify("alice", "one")
    assert loaded.verify("bob", "two").user == 2


def test_accounts_in_two_shards_are_refused(tmp_path):
    path = tmp_path / "a.json"
    acc.add_user(path, "alice", "pw", [1, 2], **FAST)
    acc.load(path)  # without a shard count there is nothing to check
    acc.load(path, n_shards=1)
    with pytest.raises(acc.AccountsError, match="alice.*span shards \\[1, 2\\] of 4"):
        acc.load(path, n_shards=4)
    with pytest.raises(acc.AccountsError, match="one shard"):
        acc.add_user(tmp_path / "b.json", "bob", "pw", [1, 2], n_shards=2, **FAST)


def _doc(**over):
    user = {"user": 1, "salt": "00" * 16, "scrypt": "11" * 32, "n": 1024, "r": 8, "p": 1,
            "accounts": [5], "default_account": 5, "max_msgs_per_sec": 10}
    user.update(over)
    return {"users": {"alice": user}}


@pytest.mark.parametrize("doc, problem", [
    ([], "must be"),
    ({"users": {}, "x": 1}, "unknown key"),
    (_doc(user=-1), "u32"),
    (_doc(user=2**32), "u32"),
    (_doc(salt="zz"), "hex"),
    (_doc(scrypt="11"), "32 bytes"),
    (_doc(n=1000), "power of 2"),
    (_doc(r=0), "r must be"),
    (_doc(accounts=[]), "accounts"),
    (_doc(accounts=list(range(65)), default_account=0), "accounts"),
    (_doc(accounts=[5, 5]), "twice"),
    (_doc(accounts=["5"]), "u32"),
    (_doc(accounts=[5, 0xFFFF_FFF0]), "account 4294967280 is reserved"),
    (_doc(accounts=[0xFFFF_0000], default_account=0xFFFF_0000), "reserved"),
    (_doc(default_account=6), "default_account"),
    (_doc(max_msgs_per_sec=0), "max_msgs_per_sec"),
    (_doc(max_msgs_per_sec=1.5), "max_msgs_per_sec"),
    (_doc(extra=1), "unknown key"),
    ({"users": {"x" * 17: _doc()["users"]["alice"]}}, "1..16 bytes"),
])
def test_bad_documents_name_the_problem(doc, problem):
    with pytest.raises(acc.AccountsError, match=problem) as e:
        acc.parse(doc)
    assert "\n" not in str(e.value)


def test_missing_field(tmp_path):
    doc = _doc()
    del doc["users"]["alice"]["salt"]
    with pytest.raises(acc.AccountsError, match="missing salt"):
        acc.parse(doc)


def test_duplicate_user_ids(tmp_path):
    doc = _doc()
    doc["users"]["bob"] = dict(doc["users"]["alice"])
    with pytest.raises(acc.AccountsError, match="user id 1 is also 'alice'"):
        acc.parse(doc)


def test_bad_files(tmp_path):
    with pytest.raises(acc.AccountsError, match="does not exist"):
        acc.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(acc.AccountsError, match="not valid JSON"):
        acc.load(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps(_doc(user="x")))
    with pytest.raises(acc.AccountsError, match="bad2.json.*u32"):
        acc.load(tmp_path / "bad2.json")


def test_passwords_must_fit_the_logon(tmp_path):
    with pytest.raises(acc.AccountsError, match="password"):
        acc.add_user(tmp_path / "a.json", "alice", "x" * 33, [1], **FAST)
    with pytest.raises(acc.AccountsError, match="password"):
        acc.add_user(tmp_path / "a.json", "alice", "", [1], **FAST)
    assert not (tmp_path / "a.json").exists()


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    acc.add_user(path, "alice", "pw", [1], **FAST)
    before = path.read_bytes()

    def boom(*a):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(acc.os, "fsync", boom)
    with pytest.raises(OSError):
        acc.add_user(path, "bob", "pw", [2], **FAST)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_remove_user(tmp_path):
    path = tmp_path / "a.json"
    acc.add_user(path, "alice", "pw", [1], **FAST)
    acc.add_user(path, "bob", "pw", [2], **FAST)
    assert acc.remove_user(path, "alice") is True
    assert acc.remove_user(path, "alice") is False
    loaded = acc.load(path)
    assert list(loaded.users) == ["bob"] and loaded.verify("bob", "pw")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_unknown_names_cost_the_same_hash(tmp_path, monkeypatch):
    """Timing must not tell whether a name exists: an unknown name runs scrypt too, with the
    default parameters, and the comparison is hmac.compare_digest."""
    acc.add_user(tmp_path / "a.json", "alice", "pw", [1])
    a = acc.load(tmp_path / "a.json")
    calls = []
    real = acc._hash
    monkeypatch.setattr(acc, "_hash", lambda *args: calls.append(args[2:]) or real(*args))
    compared = []
    real_cmp = acc.hmac.compare_digest
    monkeypatch.setattr(acc.hmac, "compare_digest",
                        lambda x, y: compared.append(1) or real_cmp(x, y))
    assert a.verify("nobody", "pw") is None
    assert a.verify("alice", "nope") is None
    assert calls == [(16384, 8, 1), (16384, 8, 1)]
    assert compared == [1, 1]


def test_the_file_watch_sees_each_new_file_once(tmp_path):
    """The gateway re-reads the accounts file when it changes, without a SIGHUP: a user added
    with add_user (an atomic replace) is seen once, an unchanged file never, a removed file is
    no change (the gateway keeps the accounts it has)."""
    path = tmp_path / "accounts.json"
    acc.add_user(path, "alice", "pw", [1], **FAST)
    watch = acc.FileWatch(path)
    assert not watch.changed()
    acc.add_user(path, "bob", "pw", [2], **FAST)
    assert watch.changed()
    assert not watch.changed()
    os.unlink(path)
    assert not watch.changed()
    acc.add_user(path, "carol", "pw", [3], **FAST)
    assert watch.changed()
