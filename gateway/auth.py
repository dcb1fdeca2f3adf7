"""Logon credential checks, shared by the order-entry gateway and the market-data feed.

scrypt is slow on purpose, so the checks at once are bounded, and a bound is something an
attacker can fill (docs/security.md "Client logon"). An `Authenticator`:
* recognises a password scrypt accepted before (for the user's hash as it is now) by a keyed
  fast hash (accounts.VerifiedCache), at once, without scrypt and without a slot;
* runs one scrypt check for all the Logons that carry the same credentials at once;
* gives at most `max_pending` checks to its worker threads, at most `max_per_peer` of them from
  one peer address, and queues at most `max_queued` more (`max_queued_per_peer` from one
  address) first come first served; beyond that the Logon is told "busy: try again".

A connection it checks has a `peer` (its address) and an `auth_check` attribute (the check it
waits for, or None); the owner's `answer(conn, user, failed)` is called exactly once per
`start`, from the event loop: `user` on success, None with `failed` empty for wrong
credentials, None with `failed` set (a reason to tell the client) when no answer could be had.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.accounts import Accounts, User, VerifiedCache

log = logging.getLogger("seqex.gateway")

BUSY = "busy: try again"


class Check:
    """One scrypt check of a (username, password) and the connections whose Logon waits for
    it: several when their Logons carry the same credentials (the same VerifiedCache tag),
    since one answer is theirs all. It counts once against the caps, under the peer address
    of the connection that made it."""

    __slots__ = ("tag", "name", "password", "peer", "conns", "state", "future")

    def __init__(self, tag: bytes, name: str, password: bytes, peer: str):
        self.tag = tag
        self.name = name
        self.password = password
        self.peer = peer
        self.conns: list[Any] = []
        self.state = "queued"   # then "running" (given to the worker pool)
        self.future = None


class Authenticator:
    def __init__(self, accounts: Callable[[], Accounts | None],
                 answer: Callable[[Any, User | None, str], None], stats: dict[str, int],
                 max_pending: int = 64, max_per_peer: int = 8, max_queued: int = 256,
                 max_queued_per_peer: int = 64, thread_name_prefix: str = "gw-auth"):
        self.accounts = accounts          # the accounts as they are now
        self.answer = answer
        self.stats = stats
        for k in ("auth_cached", "auth_scrypt", "auth_joined", "auth_busy"):
            stats.setdefault(k, 0)
        self.max_pending = max_pending
        self.max_per_peer = max_per_peer
        self.max_queued = max_queued
        self.max_queued_per_peer = max_queued_per_peer
        self.verified = VerifiedCache()   # passwords scrypt accepted (keyed fast hash)
        self.checks: dict[bytes, Check] = {}      # tag → its check, queued or running
        self.queue: deque[Check] = deque()        # checks waiting for an scrypt slot
        self.queued_by: dict[str, int] = {}       # peer → its checks in queue
        self.running = 0                          # scrypt checks in the pool
        self.running_by: dict[str, int] = {}      # peer → its checks in the pool
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=thread_name_prefix)
        self.loop: asyncio.AbstractEventLoop | None = None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def retain(self, accounts: Accounts) -> None:
        """A new accounts file: forget the verified passwords of users whose hash changed or
        who are gone."""
        self.verified.retain(accounts)

    def start(self, conn: Any, name: str, password: bytes) -> None:
        """A Logon arrived: answer it at once if its password was verified before or there is
        no room for its check; else check it now if there is a slot, or queue it."""
        accounts = self.accounts()
        if accounts is None:          # unreadable now (being rewritten?): nothing to check
            self.answer(conn, None, BUSY)
            return
        tag = self.verified.tag(name, password)
        user = self.verified.lookup(accounts, name, tag)
        if user is not None:
            self.stats["auth_cached"] += 1
            self.answer(conn, user, "")
            return
        check = self.checks.get(tag)
        if check is not None:
            # the same credentials are being checked for another connection: its answer is
            # this one's too (a user's many connections logging on at once cost one scrypt)
            self.stats["auth_joined"] += 1
            check.conns.append(conn)
            conn.auth_check = check
            return
        peer = conn.peer
        check = Check(tag, name, password, peer)
        if self.running < self.max_pending and self.running_by.get(peer, 0) < self.max_per_peer:
            # A slot for this peer: whatever is queued waits for a slot overall or for one
            # of its own peer (_dispatch leaves nothing else queued), so none is passed.
            self._attach(check, conn)
            self._run(check)
            return
        if len(self.queue) >= self.max_queued or \
                self.queued_by.get(peer, 0) >= self.max_queued_per_peer:
            self.stats["auth_busy"] += 1
            self.answer(conn, None, BUSY)
            return
        self._attach(check, conn)
        self.queue.append(check)
        self.queued_by[peer] = self.queued_by.get(peer, 0) + 1

    def abandon(self, conn: Any) -> None:
        """The connection no longer waits for its check (closed, or waited too long). A
        check no connection waits for any more leaves the queue, or is cancelled if the
        pool has not started it (its slot comes back through the done callback); a running
        one finishes and frees its slot then."""
        check = conn.auth_check
        if check is None:
            return
        conn.auth_check = None
        try:
            check.conns.remove(conn)
        except ValueError:
            pass
        if check.conns:
            return
        if check.state == "queued":
            try:
                self.queue.remove(check)
            except ValueError:
                pass
            else:
                self._unqueue(check)
            self._forget(check)
        elif check.future is not None and check.future.cancel():
            self._forget(check)

    def _forget(self, check: Check) -> None:
        if self.checks.get(check.tag) is check:
            del self.checks[check.tag]

    def _attach(self, check: Check, conn: Any) -> None:
        check.conns.append(conn)
        conn.auth_check = check
        self.checks[check.tag] = check

    def _dispatch(self) -> None:
        """Give queued checks to scrypt, first come first served, while there are slots; a
        check whose peer has max_per_peer checks in flight waits for one of those, and the
        checks behind it from other peers go first."""
        q = self.queue
        keep: deque[Check] = deque()
        while q and self.running < self.max_pending:
            check = q.popleft()
            if self.running_by.get(check.peer, 0) < self.max_per_peer:
                self._unqueue(check)
                self._run(check)
            else:
                keep.append(check)
        if keep:
            keep.extend(q)
            self.queue = keep

    def _unqueue(self, check: Check) -> None:
        """`check` has left the queue (the caller took it out)."""
        n = self.queued_by.get(check.peer, 0) - 1
        if n > 0:
            self.queued_by[check.peer] = n
        else:
            self.queued_by.pop(check.peer, None)

    def _run(self, check: Check) -> None:
        """One scrypt check in the pool. Its slot is held until the thread is done with it
        (or the check is cancelled before it started), whatever becomes of the connections:
        scrypt's CPU is bounded by the slots, not by the connections still open."""
        accounts = self.accounts()
        if accounts is None:
            # The accounts became unreadable while the check waited: it is answered now, and
            # holds no slot (it would never give one back).
            self._answer(check, None, failed=BUSY)
            return
        peer = check.peer
        self.running += 1
        self.running_by[peer] = self.running_by.get(peer, 0) + 1
        self.stats["auth_scrypt"] += 1
        check.state = "running"
        loop = self.loop = asyncio.get_running_loop()

        def done(fut):
            try:
                loop.call_soon_threadsafe(self._done, check, fut)
            except RuntimeError:  # the loop is closed: the server is gone
                pass

        check.future = self.pool.submit(accounts.verify, check.name, check.password)
        check.future.add_done_callback(done)

    def _done(self, check: Check, fut) -> None:
        self.running -= 1
        n = self.running_by.get(check.peer, 0) - 1
        if n > 0:
            self.running_by[check.peer] = n
        else:
            self.running_by.pop(check.peer, None)
        try:
            if fut.cancelled():
                self._answer(check, None, failed=BUSY)
                return
            exc = fut.exception()
            if exc is not None:
                log.error("credential check of %r failed: %r", check.name, exc)
                self._answer(check, None, failed="credential check failed")
                return
            user = fut.result()
            if user is not None:
                accounts = self.accounts()
                current = None if accounts is None else accounts.users.get(user.name)
                if current is None or VerifiedCache._identity(current) != \
                        VerifiedCache._identity(user):
                    # the accounts were reloaded with another hash meanwhile: stale
                    self._answer(check, None, failed="user changed: try again")
                    return
                self.verified.remember(current, check.tag)
                user = current
            self._answer(check, user)
        finally:
            self._dispatch()

    def _answer(self, check: Check, user: User | None, failed: str = "") -> None:
        """The check is over: every connection still waiting for it gets its answer."""
        self._forget(check)
        conns, check.conns = check.conns, []
        for conn in conns:
            conn.auth_check = None
            self.answer(conn, user, failed)
