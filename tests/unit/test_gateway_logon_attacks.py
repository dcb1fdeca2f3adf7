"""Adversarial review (review3) of the gateway's credential check: the verified-password
cache and the shared checks never let a wrong password in, a reload in the middle of a check
does not either, and a closed connection leaves nothing behind (no fixed sleeps: the scrypt
checks are held by GatedAccounts' gate)."""
from __future__ import annotations

from gateway import server as gs
from gateway import wire
from gateway.accounts import Accounts, make_user
from tests.unit.test_gateway_server import (
    AUTH_CFG,
    Client,
    GatedAccounts,
    logged_on,
    rejected,
    run,
    started,
    users,
    wait_for,
)


def test_a_right_and_a_wrong_password_at_once_are_two_checks_and_two_answers():
    async def main():
        accts = GatedAccounts(users())
        gw, core, port = await started(cfg=gs.Config(**AUTH_CFG), accts=accts)
        try:
            right = await Client.connect(port)
            await right.logon(session=1)
            wrong = await Client.connect(port)
            await wrong.logon(password="pw-alicE", session=2)
            padded = await Client.connect(port)      # the same password: joins its check
            await padded.logon(password="pw-alice\0\0", session=3)
            junk = await Client.connect(port)        # bytes after the NUL: not padding
            await junk.logon(password="pw-alice\0zz", session=5)
            assert await rejected(junk) == wire.LOGON_REJECT_BAD_CREDENTIALS
            await wait_for(lambda: accts.started == 2 and gw.stats["auth_joined"] == 1)
            assert len(gw.auth.checks) == 2
            accts.gate.set()
            assert (await right.expect(wire.LOGON_ACK)).SessionID == 1
            assert (await padded.expect(wire.LOGON_ACK)).SessionID == 3
            assert await rejected(wrong) == wire.LOGON_REJECT_BAD_CREDENTIALS
            # cached now: a wrong password, a longer one, another case of the name, a name
            # with the right password of another user all still go to scrypt and fail
            for user, pw in (("alice", "pw-alice "), ("alice", "pw-alic"), ("Alice", "pw-alice"),
                             ("bob", "pw-alice"), ("alice\u00a0", "pw-alice")):
                c = await Client.connect(port)
                await c.logon(user=user, password=pw, session=9)
                assert await rejected(c) == wire.LOGON_REJECT_BAD_CREDENTIALS, (user, pw)
            assert gw.stats["auth_cached"] == 0
            (await logged_on(gw, port, session=4)).close()
            assert gw.stats["auth_cached"] == 1
            assert sorted(gs.SESSION_LOGON_S.unpack_from(p)[1] for _k, p in core.kinds(80)) \
                == [1, 3, 4]
            await gw.close()
        finally:
            accts.gate.set()
    run(main())


def test_a_reload_during_the_check_refuses_the_old_password_and_caches_nothing():
    async def main():
        accts = GatedAccounts(users())
        gw, core, port = await started(cfg=gs.Config(**AUTH_CFG), accts=accts)
        try:
            c = await Client.connect(port)
            await c.logon(session=1)                       # the old password, in flight
            await wait_for(lambda: accts.started == 1)
            gw.reload_accounts(Accounts({"alice": make_user("alice", 7, "pw-new", [4, 8],
                                                            n=1024),
                                         "bob": users().users["bob"]}))
            accts.gate.set()
            rej = await c.expect(wire.LOGON_REJECT)
            assert rej.Reason == wire.LOGON_REJECT_NOT_OPEN
            assert "alice" not in gw.auth.verified and not core.kinds(80)
            c = await Client.connect(port)
            await c.logon(session=2)                       # the old password again
            assert await rejected(c) == wire.LOGON_REJECT_BAD_CREDENTIALS
            (await logged_on(gw, port, session=3, password="pw-new")).close()
            await gw.close()
        finally:
            accts.gate.set()
    run(main())


def test_connections_that_joined_a_check_and_closed_leave_nothing_behind():
    async def main():
        accts = GatedAccounts(users())
        gw, core, port = await started(cfg=gs.Config(max_auth_pending=1, **{
            k: v for k, v in AUTH_CFG.items() if k != "max_auth_pending"}), accts=accts)
        try:
            first = await Client.connect(port)
            await first.logon(password="guess", session=1)
            await wait_for(lambda: accts.started == 1)
            joined = [await Client.connect(port) for _ in range(5)]
            for c in joined:
                await c.logon(password="guess", session=1)
            queued = await Client.connect(port)
            await queued.logon(user="bob", password="nope", session=1)
            await wait_for(lambda: gw.stats["auth_joined"] == 5 and len(gw.auth.queue) == 1)
            for c in (first, *joined, queued):
                c.close()
            await wait_for(lambda: not gw.conns)
            assert not gw.auth.queue and not gw.auth.queued_by
            assert [ch.conns for ch in gw.auth.checks.values()] == [[]]   # still running
            accts.gate.set()
            await wait_for(lambda: not gw.auth.checks and gw.auth.running == 0)
            assert not gw.auth.running_by and accts.started == 1 and not core.kinds(80)
            await gw.close()
        finally:
            accts.gate.set()
    run(main())
