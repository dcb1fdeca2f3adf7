"""Trust boundaries of the log: CURVE on every socket between seqex processes, a role for
every key, and a check of that role on every message (DESIGN.md §8, docs/security.md).

Authentication is ZeroMQ's own: CURVE, with pyzmq's ZAP authenticator
(``zmq.auth.thread.ThreadAuthenticator``) deciding at connect time whether a client key is
known at all. An unknown key never gets a connection. A known key gets one, and pyzmq's
authenticator stamps each of its messages with the key (z85) as the frame property
``User-Id``; the servers read it on every message (``recv_multipart``) and ask the policy
what that key may do:

* a replicator takes APPEND, COMMIT and TRUNCATE for a stream only from that stream's master
  keys, CLAIM from those and the operator, STOP from the operator; it serves STATE, REPLAY,
  DIGEST and PING to any authenticated key;
* a sequencer takes records (HELLO, DATA) for a source id only from the keys registered for
  that source id (the operator key for the operator sources, mq.sources), STOP from the
  operator;
* a mirror takes DATA only from the keys of its engine's replicas, STOP from the operator;
* a replica takes STOP and PROMOTE only from the operator.

A refused message gets ERROR {error, reason} and changes nothing. Refusals are counted per
peer and reason and logged once per peer and minute (with the peer's key), not per message.

The policy is a file, ``trust.json`` in the keys directory (deploy/keys.py writes it from a
topology)::

    {"operator": ["<z85 public key>", ...],
     "peers": {"<z85>": {"name": "sequencer.BTCUSDT", "masters": ["in.ce.BTCUSDT"],
                         "feeds": [], "sources": []}, ...},
     "servers": {"tcp://127.0.0.1:7101": "<z85 public key of the process bound there>"}}

``masters``: streams whose replicators it writes; ``feeds``: out streams whose mirror it
writes (an engine replica); ``sources``: producer source ids it may use; ``servers``: the
key a client expects from each endpoint (CURVE authenticates the server to the client too).

A process takes an identity with ``configure(keys_dir, name)`` (the `seqex` command line
does it for ``--keys DIR --key NAME``); from then on every socket that mq/sockets.py and
the masters create is a CURVE server or client. Without it, nothing is secured and every
check passes (``insecure()``): that mode is for benchmarks only, and says so when it starts.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.utils import z85

from mq import sockets, sources

log = logging.getLogger("seqex.auth")

TRUST_FILE = "trust.json"
PUBLIC_SUFFIX = ".key"             # z85 public key, one line, mode 0644
SECRET_SUFFIX = ".key_secret"      # z85 secret key, one line, mode 0600
LOG_EVERY_S = 60.0                 # a peer's refusals are logged at most this often
ZAP_DOMAIN = "seqex"                # the ZAP domain of every seqex server socket
INSECURE_WARNING = ("seqex: WARNING: CURVE is OFF: any process that reaches these ports may "
                    "write to the log, stop or promote processes. Use this only for benchmarks "
                    "on a closed machine; run with --keys DIR --key NAME otherwise.")


class KeyFileError(ValueError):
    """A key file or the trust policy is missing or unreadable."""


def public_path(keys_dir: str, name: str) -> str:
    return os.path.join(keys_dir, name + PUBLIC_SUFFIX)


def secret_path(keys_dir: str, name: str) -> str:
    return os.path.join(keys_dir, name + SECRET_SUFFIX)


def _read_key(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read key {path}: {exc}") from None
    if not valid_key(key):
        raise KeyFileError(f"{path} does not hold a z85 CURVE key (40 characters)")
    return key


def valid_key(key: bytes | str) -> bool:
    """Whether key is a CURVE key in z85 (40 characters of the z85 alphabet)."""
    if isinstance(key, str):
        key = key.encode("ascii", "replace")
    if len(key) != 40:
        return False
    try:
        z85.decode(key)
    except (ValueError, KeyError, TypeError):
        return False
    return True


def load_public(keys_dir: str, name: str) -> bytes:
    return _read_key(public_path(keys_dir, name))


def load_secret(keys_dir: str, name: str) -> bytes:
    path = secret_path(keys_dir, name)
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError as exc:
        raise KeyFileError(f"cannot read key {path}: {exc}") from None
    if mode & 0o077:
        raise KeyFileError(f"{path} is readable by others (mode {mode:o}); chmod 600 it, and "
                        f"treat the key as leaked if others could read it (docs/security.md)")
    return _read_key(path)


def load_pair(keys_dir: str, name: str) -> tuple[bytes, bytes]:
    """name's public and secret key, checked to be one pair."""
    public, secret = load_public(keys_dir, name), load_secret(keys_dir, name)
    if zmq.curve_public(secret) != public:
        raise KeyFileError(f"{secret_path(keys_dir, name)} does not belong to "
                           f"{public_path(keys_dir, name)} (a key of another pair): no peer "
                           f"could reach this process; restore the pair or `seqex keys "
                           f"--rotate {name}`")
    return public, secret


def check_owned(path: str) -> None:
    """path (the policy, or a directory above it) must be this user's and writable by no one
    else: whoever may write the policy decides who is the operator."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc}") from None
    if st.st_uid != os.geteuid():
        raise KeyFileError(f"{path} belongs to another user (uid {st.st_uid}): whoever may "
                           f"write the trust policy decides who is the operator")
    if st.st_mode & 0o022:
        raise KeyFileError(f"{path} is writable by others (mode {st.st_mode & 0o777:o}): "
                           f"whoever may write the trust policy decides who is the operator")


@dataclass
class Peer:
    name: str
    masters: frozenset[str] = frozenset()
    feeds: frozenset[str] = frozenset()
    sources: frozenset[int] = frozenset()


@dataclass
class Trust:
    """Who is who: the operator keys, every known key's rights, every server's key."""
    operator: frozenset[str] = frozenset()
    peers: dict[str, Peer] = field(default_factory=dict)
    servers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trust:
        peers = {}
        for key, p in (d.get("peers") or {}).items():
            peers[key] = Peer(str(p.get("name", key[:8])), frozenset(p.get("masters", [])),
                              frozenset(p.get("feeds", [])),
                              frozenset(int(s) for s in p.get("sources", [])))
        return cls(frozenset(d.get("operator", [])), peers, dict(d.get("servers", {})))

    def to_dict(self) -> dict[str, Any]:
        return {"operator": sorted(self.operator),
                "peers": {k: {"name": p.name, "masters": sorted(p.masters),
                              "feeds": sorted(p.feeds), "sources": sorted(p.sources)}
                          for k, p in sorted(self.peers.items())},
                "servers": dict(sorted(self.servers.items()))}

    @classmethod
    def load(cls, keys_dir: str) -> Trust:
        path = os.path.join(keys_dir, TRUST_FILE)
        if os.path.exists(path):
            check_owned(os.path.dirname(os.path.abspath(path)))
            check_owned(path)
        try:
            with open(path, encoding="utf-8") as f:
                trust = cls.from_dict(json.load(f))
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise KeyFileError(f"cannot read the trust policy {path}: {exc}") from None
        bad = next((k for k in [*trust.operator, *trust.peers, *trust.servers.values()]
                    if not valid_key(k)), None)
        if bad is not None:
            raise KeyFileError(f"cannot read the trust policy {path}: {str(bad)[:48]!r} is not "
                               f"a z85 CURVE key; regenerate it with `seqex keys`")
        return trust

    def known(self, key: str) -> bool:
        return key in self.operator or key in self.peers

    def name(self, key: str | None) -> str:
        if key is None:
            return "?"
        if key in self.operator:
            return "operator"
        peer = self.peers.get(key)
        return peer.name if peer else "unknown"


@dataclass
class Identity:
    name: str
    public: bytes
    secret: bytes
    trust: Trust
    keys_dir: str = ""


_identity: Identity | None = None
_authenticator: Any = None
refusals: Counter = Counter()                 # (peer key, reason) -> count
_logged_at: dict[str, float] = {}             # peer key -> when its refusals were last logged
_unknown_peers: set[str] = set()              # keys outside the policy counted on their own
MAX_UNKNOWN_PEERS = 32
OTHER_KEYS = "other unknown keys"


# -- process identity ----------------------------------------------------------------------
def configure(keys_dir: str, name: str, trust: Trust | None = None) -> Identity:
    """Take the identity `name` from keys_dir: from now on every socket this process makes
    through mq/sockets.py (and the masters' PUB, the subscribers' SUB) uses CURVE, and its
    servers admit only the keys of the trust policy."""
    global _identity
    trust = trust if trust is not None else Trust.load(keys_dir)
    public, secret = load_pair(keys_dir, name)
    ident = Identity(name, public, secret, trust, keys_dir)
    _identity = ident
    _start_authenticator()
    return ident


def configure_identity(ident: Identity) -> None:
    """The same as configure(), with keys already in memory (tests)."""
    global _identity
    _identity = ident
    _start_authenticator()


def reset() -> None:
    """Back to no identity (tests): sockets made from now on are not secured. The ZAP
    authenticator keeps running (its endpoint cannot be bound again at once after a stop);
    with no identity it admits nobody, and no socket asks it."""
    global _identity
    _identity = None
    refusals.clear()
    _logged_at.clear()
    _unknown_peers.clear()


def identity() -> Identity | None:
    return _identity


def insecure() -> bool:
    return _identity is None


class _Known:
    """The ZAP credentials callback: a client key is admitted if the policy knows it."""

    def callback(self, domain: str, key: bytes) -> bool:
        ident = _identity
        z85 = key.decode("ascii", "replace")
        ok = ident is not None and ident.trust.known(z85)
        if not ok:
            note_refusal(z85, "unknown_key")
        return ok


def _start_authenticator() -> None:
    global _authenticator
    if _authenticator is not None:
        return
    from zmq.auth.thread import ThreadAuthenticator
    auth = ThreadAuthenticator(zmq.Context.instance())
    auth.start()
    auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_Known())
    _authenticator = auth


# -- sockets -------------------------------------------------------------------------------
def secure_server(sock: zmq.Socket, ident: Identity | None = None) -> None:
    """Make sock (before it binds) a CURVE server with this process's key; no-op insecure."""
    ident = ident or _identity
    if ident is None:
        return
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    sock.curve_secretkey = ident.secret
    sock.curve_publickey = ident.public
    sock.curve_server = True


def secure_client(sock: zmq.Socket, addr: str, ident: Identity | None = None,
                  server_key: bytes | None = None) -> None:
    """Make sock (before it connects to addr) a CURVE client that expects the server key
    the policy names for addr; no-op insecure."""
    ident = ident or _identity
    if ident is None:
        return
    if server_key is None:
        key = ident.trust.servers.get(addr)
        if key is None:
            raise KeyFileError(f"the trust policy names no server key for {addr}: no server of "
                               f"this topology is there, or the policy is for other ports "
                               f"(`seqex keys --data DIR --base-port N` makes it for a "
                               f"cluster started with --base-port N)")
        server_key = key.encode("ascii")
    sock.curve_secretkey = ident.secret
    sock.curve_publickey = ident.public
    sock.curve_serverkey = server_key


def recv_multipart(sock: zmq.Socket, flags: int = 0) -> tuple[str | None, list[bytes]]:
    """One message and the z85 key of the peer that sent it (None when insecure)."""
    if _identity is None:
        return None, sockets.recv_parts(sock, flags)
    frames = sockets.recv_frames(sock, flags)
    try:
        peer = frames[-1].get("User-Id")
    except zmq.ZMQError:
        peer = None
    return peer, [f.bytes for f in frames]


# -- roles ---------------------------------------------------------------------------------
def _is_operator(ident: Identity, peer: str | None) -> bool:
    return peer is not None and peer in ident.trust.operator


def operator_refusal(peer: str | None) -> str | None:
    """None if peer may send operator verbs (STOP, PROMOTE), else the reason."""
    ident = _identity
    if ident is None or _is_operator(ident, peer):
        return None
    return "not_operator"


def replicator_refusal(peer: str | None, kind: bytes, stream: str | None) -> str | None:
    """None if peer may send this message to a replicator, else the reason."""
    ident = _identity
    if ident is None:
        return None
    if kind in (b"APPEND", b"COMMIT", b"TRUNCATE", b"CLAIM"):
        p = ident.trust.peers.get(peer) if peer else None
        if p is not None and stream in p.masters:
            return None
        if kind == b"CLAIM" and _is_operator(ident, peer):
            return None
        return "not_master"
    if kind == b"STOP":
        return operator_refusal(peer)
    return None if peer is not None and ident.trust.known(peer) else "unknown_key"


def producer_refusal(peer: str | None, src: int) -> str | None:
    """None if peer may put records of source id src into a stream, else the reason."""
    ident = _identity
    if ident is None:
        return None
    if sources.is_operator(src):
        return None if _is_operator(ident, peer) else "not_operator"
    p = ident.trust.peers.get(peer) if peer else None
    return None if p is not None and src in p.sources else "source_not_registered"


def feed_refusal(peer: str | None, stream: str) -> str | None:
    """None if peer (an engine replica) may send outputs of `stream` to its mirror."""
    ident = _identity
    if ident is None:
        return None
    p = ident.trust.peers.get(peer) if peer else None
    return None if p is not None and stream in p.feeds else "not_replica"


def peer_name(peer: str | None) -> str | None:
    """The policy's name of an authenticated key (None when insecure): what alarms and logs
    name, since a name a peer writes in its own message proves nothing."""
    ident = _identity
    return ident.trust.name(peer) if ident is not None and peer is not None else None


def note_refusal(peer: str | None, reason: str, what: str = "") -> None:
    """Count a refused message; log the peer's refusals at most once a minute.

    Keys the policy knows are few; keys it does not know are as many as a stranger cares to
    make (a fresh keypair per connection costs nothing). So at most MAX_UNKNOWN_PEERS keys
    outside the policy are counted and logged each on its own; the rest share one entry,
    OTHER_KEYS, logged once a minute with the latest of them, so that refusals cannot grow
    the memory, the PING answers or the log without bound."""
    key = peer or "?"
    ident = _identity
    if key not in _logged_at and \
            not (ident is not None and peer is not None and ident.trust.known(peer)):
        if len(_unknown_peers) >= MAX_UNKNOWN_PEERS and key not in _unknown_peers:
            key = OTHER_KEYS
        else:
            _unknown_peers.add(key)
    refusals[(key, reason)] += 1
    now = time.monotonic()
    if now - _logged_at.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
        _logged_at[key] = now
        counts = {r: n for (k, r), n in sorted(refusals.items()) if k == key}
        shown = key if key != OTHER_KEYS else f"{OTHER_KEYS}, latest {peer or '?'}"
        log.warning("refused %s from peer %s (%s); refusals of this peer so far: %s",
                    what or reason, shown, ident.trust.name(peer) if ident else "?", counts)


def refusal_stats() -> dict[str, dict[str, int]]:
    """{peer key: {reason: count}} (for PING answers)."""
    out: dict[str, dict[str, int]] = {}
    for (key, reason), n in sorted(refusals.items()):
        out.setdefault(key, {})[reason] = n
    return out


def refused_body(reason: str, what: str) -> dict[str, Any]:
    return {"error": f"refused: {what}: {reason}", "reason": reason}
