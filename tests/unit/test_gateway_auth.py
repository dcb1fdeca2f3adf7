"""gateway/auth.py on its own: the credential checks' slots when the accounts go away."""
import asyncio
import threading

from gateway import accounts as acc
from gateway.auth import BUSY, Authenticator


class Conn:
    def __init__(self, peer="127.0.0.1"):
        self.peer = peer
        self.auth_check = None


def test_a_queued_check_whose_accounts_became_unreadable_is_answered_and_holds_no_slot(
        tmp_path, monkeypatch):
    """The market-data feed's accounts file can be unreadable for a moment (being rewritten):
    a check that leaves the queue then is answered "busy" at once; it used to take a slot
    it never gave back, and Logons with the same credentials joined it until a restart."""
    path = str(tmp_path / "accounts.json")
    acc.add_user(path, "alice", "pw-alice", [2], n=1 << 10)
    now = {"accounts": acc.load(path)}
    gate = threading.Event()
    real = acc.Accounts.verify

    def verify(self, name, password):
        gate.wait(20)
        return real(self, name, password)
    monkeypatch.setattr(acc.Accounts, "verify", verify)
    answers = []

    async def main():
        auth = Authenticator(lambda: now["accounts"], lambda c, u, f: answers.append((c, u, f)),
                             {}, max_pending=1)
        c1, c2, c3 = Conn(), Conn(), Conn()
        auth.start(c1, "alice", b"wrong")
        auth.start(c2, "alice", b"pw-alice")          # queued behind c1's check
        assert (auth.running, len(auth.queue)) == (1, 1)
        now["accounts"] = None                          # the file unreadable
        gate.set()
        for _ in range(2000):
            if len(answers) == 2:
                break
            await asyncio.sleep(0.01)
        assert [(c, u, f) for c, u, f in answers] == [(c1, None, ""), (c2, None, BUSY)]
        assert (auth.running, len(auth.queue), auth.checks, auth.running_by) == (0, 0, {}, {})
        now["accounts"] = acc.load(path)                # back: alice logs on
        auth.start(c3, "alice", b"pw-alice")
        for _ in range(2000):
            if len(answers) == 3:
                break
            await asyncio.sleep(0.01)
        assert answers[2][0] is c3 and answers[2][1].name == "alice"
        auth.close()
    asyncio.run(main())
