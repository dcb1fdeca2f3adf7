"""deploy/trading.py and `seqex account`: users go into the gateway's accounts file (one
shard per user), amounts are USDT decimals in 1e-8 minor units, and the demo users of the
default topology are made once, with their passwords kept for `seqex client`."""
from __future__ import annotations

import json
import os

import pytest

from deploy import topology, trading
from deploy.cli import main
from gateway import accounts


@pytest.mark.parametrize("text, minor", [("1", 10**8), ("0.00000001", 1), ("1000.5", 1000_5 * 10**7)])
def test_amounts_in_minor_units(text, minor):
    assert trading.minor_units(text) == minor


@pytest.mark.parametrize("text, want", [("0", "must be positive"), ("-1", "must be positive"),
                                         ("0.000000001", "more than 8 decimal places"),
                                         ("x", "is not a number"), ("1e30", "too large")])
def test_bad_amounts(text, want):
    with pytest.raises(trading.TradingError, match=want):
        trading.minor_units(text)


def test_account_create_writes_the_accounts_file(tmp_path, capsys):
    assert main(["account", "create", "carol", "--accounts", "6,8", "--password", "pw12",
                 "--data", str(tmp_path)]) == 0
    assert "user carol (id 1): accounts 6, 8; in" in capsys.readouterr().out
    acc = accounts.load(str(tmp_path / "accounts.json"), n_shards=2)
    assert acc.verify("carol", "pw12").accounts == (6, 8)
    assert main(["account", "create", "dave", "--accounts", "10,11", "--data",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "all of a user's accounts must be in one shard" in err and "Traceback" not in err
    assert main(["account", "create", "dave", "--data", str(tmp_path)]) == 2
    assert "needs --accounts" in capsys.readouterr().err


def test_account_deposit_needs_a_running_cluster(tmp_path, capsys):
    assert main(["account", "deposit", "2", "100", "--data", str(tmp_path)]) == 2
    assert "seqex is not up" in capsys.readouterr().err
    assert main(["account", "deposit", "x", "100", "--data", str(tmp_path)]) == 2
    assert "account 'x'" in capsys.readouterr().err


def test_demo_users_are_made_once_in_their_shards(tmp_path):
    topo = topology.load(data_dir=str(tmp_path))
    made = trading.ensure_demo_users(topo)
    assert set(made) == {"alice", "bob"}
    assert trading.ensure_demo_users(topo) is None            # not twice
    acc = accounts.load(trading.accounts_path(topo), n_shards=2)
    assert acc.verify("alice", made["alice"]).accounts == (2, 4)
    assert acc.verify("bob", made["bob"]).accounts == (3, 5)
    assert trading.demo_passwords(str(tmp_path)) == made
    assert os.stat(trading.demo_path(str(tmp_path))).st_mode & 0o777 == 0o600
    assert json.load(open(trading.demo_path(str(tmp_path))))["deposited"] is False


@pytest.mark.parametrize("text", ['{"passwords": 5}', '{"passwords": {"alice": 7}}', "[]",
                                  "junk"])
def test_a_damaged_demo_users_file_gives_no_password_not_an_internal_error(tmp_path, text):
    """`seqex client` looks up the demo password; '{"passwords": 5}' raised TypeError there
    ("internal error", status 1). A damaged file holds no passwords: the client says to give
    --password."""
    with open(trading.demo_path(str(tmp_path)), "w") as f:
        f.write(text)
    assert trading.demo_passwords(str(tmp_path)) == {}


def test_account_create_does_not_replace_a_user_unless_told(tmp_path, capsys):
    """`seqex account create alice --accounts 12` on the demo cluster silently replaced alice:
    new password, her accounts 2 and 4 (and their money and positions) taken from her, and
    free for the next `account create eve --accounts 2`. An existing name is now refused
    unless --replace; account 0 (the wire's "session default") is refused; and `account
    deposit 0` is one line, status 2 (it was an internal error)."""
    data = str(tmp_path)
    assert main(["account", "create", "alice", "--accounts", "2,4", "--password", "pw-a",
                 "--data", data]) == 0
    capsys.readouterr()
    assert main(["account", "create", "alice", "--accounts", "12", "--data", data]) == 2
    err = capsys.readouterr().err
    assert err == ("seqex account: user 'alice' exists (accounts 2, 4); --replace gives it a new "
                   "password and these accounts\n"), err
    acc = accounts.load(str(tmp_path / "accounts.json"), n_shards=2)
    assert acc.verify("alice", "pw-a").accounts == (2, 4)
    assert main(["account", "create", "eve", "--accounts", "2", "--data", data]) == 2
    assert "account 2 is 'alice''s" in capsys.readouterr().err
    assert main(["account", "create", "alice", "--accounts", "12", "--password", "pw-b",
                 "--replace", "--data", data]) == 0
    acc = accounts.load(str(tmp_path / "accounts.json"), n_shards=2)
    assert acc.verify("alice", "pw-b").accounts == (12,)
    # what the replace took from her is said, with how to reach it again
    out = capsys.readouterr().out
    assert "note: accounts 2, 4 no longer are alice's" in out and "--accounts 2,4" in out, out
    assert main(["account", "create", "zed", "--accounts", "0", "--data", data]) == 2
    assert "account 0 cannot be a user's" in capsys.readouterr().err
    assert main(["account", "deposit", "0", "5", "--data", data]) == 2
    err = capsys.readouterr().err
    assert err == "seqex account: account '0': a number in 1 .. 2**32-1\n", err


def test_the_insurance_fund_is_deposited_on_first_start_without_demo_accounts(
        tmp_path, monkeypatch):
    """`[trading] insurance_fund` says it is deposited on first start; it was deposited only
    with the demo accounts, and a cluster without them took its first handoff on an empty fund.
    Once, whatever the demo accounts (transfer id 1: a repeat after a start that died before
    it was noted changes nothing)."""
    from types import SimpleNamespace
    calls = []

    def fund_deposit(data_dir, topo, amount, transfer_id):
        calls.append((amount, transfer_id))
        return f"insurance fund deposit {transfer_id} done: fund 50,000.00 USDT"
    monkeypatch.setattr(trading, "fund_deposit", fund_deposit)
    topo = SimpleNamespace(data_dir=str(tmp_path),
                           trading={"demo_accounts": False,
                                    "liq": {"insurance_fund": 5_000_000_000_000}})
    lines: list[str] = []
    trading.first_start_deposits(topo, lines.append)
    trading.first_start_deposits(topo, lines.append)             # noted: not again
    assert calls == [(5_000_000_000_000, 1)]
    assert lines == ["  insurance fund deposit 1 done: fund 50,000.00 USDT"]
    topo.trading["liq"]["insurance_fund"] = 0                    # none named: none made
    trading.first_start_deposits(SimpleNamespace(data_dir=str(tmp_path / "x"),
                                                 trading=topo.trading), lines.append)
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["a/b", "../evil", "..", ".hidden", "ca rol", "x\ty",
                                  "é"])
def test_a_new_users_name_is_refused_if_it_could_leave_a_directory(tmp_path, capsys, name):
    """`seqex account create '../evil'` succeeded, and `seqex client --user ../evil` then
    wrote its session and order files outside data/clients/ (and 'a/b' could not be used at
    all). A new name holds letters, digits and . _ - @ + only, not starting with . or -."""
    assert main(["account", "create", name, "--accounts", "6", "--password", "pw12",
                 "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "may hold only letters, digits" in err and err.count("\n") == 1, err
    assert not os.path.exists(tmp_path / "accounts.json")


def test_an_empty_password_is_refused_not_replaced_by_a_random_one(tmp_path, capsys):
    assert main(["account", "create", "carol", "--accounts", "6", "--password", "",
                 "--data", str(tmp_path)]) == 2
    assert "an empty password" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "accounts.json")


def test_an_older_files_user_name_still_loads_and_the_client_keeps_its_files_inside(tmp_path):
    """A name from a file written before the rule loads (the Logon takes any bytes), and the
    client's files for it are named inside its directory."""
    import urllib.parse
    user = accounts.make_user("../old", 1, "pw", [6], n=1024)
    path = tmp_path / "accounts.json"
    accounts.write(str(path), accounts.Accounts({"../old": user}))
    assert accounts.load(str(path)).user("../old") is not None
    accounts.add_user(str(path), "../old", "pw2", [6], n=1024)     # replaced: it exists
    with pytest.raises(accounts.AccountsError, match="not starting with"):
        accounts.add_user(str(path), "-x", "pw", [8], n=1024)
    base = os.path.join(str(tmp_path / "clients"), urllib.parse.quote("../old", safe="@+"))
    assert os.path.dirname(os.path.abspath(base)) == str(tmp_path / "clients")


def test_a_ctrl_c_while_the_command_loads_ends_with_status_130_not_a_traceback(monkeypatch):
    import builtins
    import sys

    from deploy import entry
    real = builtins.__import__

    def interrupted(name, *a, **kw):
        if name == "deploy.cli":
            raise KeyboardInterrupt
        return real(name, *a, **kw)
    monkeypatch.delitem(sys.modules, "deploy.cli")
    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert entry.main() == 130


def test_an_account_of_another_user_is_named_with_its_owner(tmp_path, capsys):
    assert main(["account", "create", "ab", "--accounts", "6", "--password", "pw12",
                 "--data", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["account", "create", "@", "--accounts", "6", "--password", "pw12",
                 "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "account 6 is 'ab''s" in err, err      # was "user 'ab': account 6 is also '@''s"
