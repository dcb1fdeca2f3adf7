"""The accounts file: who may log on to the gateway, with which password, trading which accounts.

One JSON file, mode 0600, written atomically (temporary file, fsync, rename, fsync of the
directory), so a crash leaves either the old or the new file:

    {"users": {"NAME": {"user": u32, "salt": hex, "scrypt": hex, "n": 16384, "r": 8, "p": 1,
                        "accounts": [u32, ...], "default_account": u32,
                        "max_msgs_per_sec": int}}}

The hash is `hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=32)`. `load` validates
everything and refuses the file with one line naming the first problem (`AccountsError`): user
ids unique, names and passwords that fit the Logon's char[16] / char[32], at most 64 accounts,
the default among them, no account id from `RESERVED_ACCOUNT_MIN` up (the LiqEngine's LIQ
account and the range kept for system accounts, docs/liqengine.md §1), and, given `n_shards`
(at most 63: route bit 63 is the LiqEngine's), all of a user's accounts in one shard
(`account % n_shards` equal), because a user's sessions live in that shard
(docs/order-path.md §3).

`Accounts.verify` compares in constant time and runs scrypt for unknown names too, so the time
a Logon takes does not tell whether a name exists. It is slow on purpose (tens of ms): callers
on an event loop run it in a thread.

`VerifiedCache` remembers, in memory only, the passwords scrypt has accepted, as a keyed fast
hash (HMAC-SHA256 under a random key of the process), so a user who logged on before is
checked again in microseconds without scrypt: a flood of wrong passwords that fills the
gateway's scrypt queue does not lock that user out (docs/security.md, "Client logon").
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass

SCRYPT_N = 16384
RESERVED_ACCOUNT_MIN = 0xFFFF_0000   # account ids from here up are the system's (LIQ's)
MAX_SHARDS = 63
SCRYPT_R = 8
SCRYPT_P = 1
DKLEN = 32
SALT_BYTES = 16
DEFAULT_MAX_MSGS_PER_SEC = 1000
MAX_ACCOUNTS = 64  # SessionLogon carries at most 64 (docs/order-path.md §3)
USERNAME_BYTES = 16  # Logon.Username char[16]
PASSWORD_BYTES = 32  # Logon.Password char[32]
U32_MAX = (1 << 32) - 1
_SCRYPT_MAXMEM = 256 * 1024 * 1024


class AccountsError(ValueError):
    """The accounts file, or a change to it, is refused; the message is one line."""


@dataclass(frozen=True)
class User:
    name: str
    user: int  # u32 user id: the TradingEngine's session key is (user, session_id)
    salt: bytes
    scrypt: bytes
    n: int
    r: int
    p: int
    accounts: tuple[int, ...]
    default_account: int
    max_msgs_per_sec: int

    def to_json(self) -> dict:
        return {"user": self.user, "salt": self.salt.hex(), "scrypt": self.scrypt.hex(),
                "n": self.n, "r": self.r, "p": self.p, "accounts": list(self.accounts),
                "default_account": self.default_account,
                "max_msgs_per_sec": self.max_msgs_per_sec}


def _hash(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=DKLEN,
                          maxmem=_SCRYPT_MAXMEM)


def _as_bytes(password) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else bytes(password)


_DUMMY_SALT = secrets.token_bytes(SALT_BYTES)
_DUMMY_DIGEST = secrets.token_bytes(DKLEN)


class Accounts:
    """The loaded, validated file: users by name and by id."""

    def __init__(self, users: dict[str, User]):
        self.users = dict(users)
        self.by_id = {u.user: u for u in users.values()}

    def user(self, name: str) -> User | None:
        return self.users.get(name)

    def verify(self, name: str, password) -> User | None:
        """The user if `password` is theirs, else None. Runs scrypt whether or not the name
        exists and compares in constant time."""
        pw = _as_bytes(password)
        u = self.users.get(name)
        if u is None:
            # Same work as a real check with the default parameters, then a refusal.
            hmac.compare_digest(_hash(pw, _DUMMY_SALT, SCRYPT_N, SCRYPT_R, SCRYPT_P),
                                _DUMMY_DIGEST)
            return None
        ok = hmac.compare_digest(_hash(pw, u.salt, u.n, u.r, u.p), u.scrypt)
        return u if ok else None

    def to_json(self) -> dict:
        return {"users": {name: u.to_json() for name, u in sorted(self.users.items())}}


class VerifiedCache:
    """The (user, password) pairs scrypt accepted, as HMAC-SHA256(key, name NUL password) under
    a key drawn per instance (never stored, never sent). One entry per user, bound to the
    user's stored hash: an entry answers only while the accounts hold the same salt, scrypt
    hash and parameters it was verified against, and `retain` drops the others when the file
    is reloaded. At most one entry per user of the accounts file.

    `tag` is one HMAC (microseconds); `lookup` a dict lookup and a constant-time comparison
    (against a dummy when the name has no entry, so the shape of the work does not depend on
    it). A miss means nothing: the caller runs scrypt as without the cache."""

    def __init__(self):
        self._key = secrets.token_bytes(32)
        self._dummy = secrets.token_bytes(32)
        self._entries: dict[str, tuple[tuple, bytes]] = {}  # name -> (hash identity, tag)

    @staticmethod
    def _identity(u: User) -> tuple:
        return (u.salt, u.scrypt, u.n, u.r, u.p)

    def tag(self, name: str, password) -> bytes:
        msg = name.encode("utf-8", "replace") + b"\0" + _as_bytes(password)
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def lookup(self, accounts: Accounts, name: str, tag: bytes) -> User | None:
        """The user if `tag` is that of a password scrypt accepted for the user's current hash."""
        entry = self._entries.get(name)
        u = accounts.users.get(name)
        if entry is None or u is None or entry[0] != self._identity(u):
            hmac.compare_digest(tag, self._dummy)
            return None
        return u if hmac.compare_digest(tag, entry[1]) else None

    def remember(self, u: User, tag: bytes) -> None:
        """scrypt accepted this tag's password for `u` (as it is now in the accounts)."""
        self._entries[u.name] = (self._identity(u), tag)

    def retain(self, accounts: Accounts) -> int:
        """Drop the entries of users gone from `accounts` or whose hash changed; how many."""
        gone = [name for name, (ident, _t) in self._entries.items()
                if name not in accounts.users
                or self._identity(accounts.users[name]) != ident]
        for name in gone:
            del self._entries[name]
        return len(gone)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def _is_u32(v) -> bool:
    return type(v) is int and 0 <= v <= U32_MAX


def _check_name(name) -> None:
    if not isinstance(name, str) or not name:
        raise AccountsError(f"user name {name!r} must be a non-empty string")
    raw = name.encode("utf-8")
    if len(raw) > USERNAME_BYTES or b"\0" in raw:
        raise AccountsError(f"user name {name!r} must be 1..16 bytes without NUL (Logon char[16])")


def _user_from_json(name, d, n_shards: int | None) -> User:
    _check_name(name)
    where = f"user {name!r}"
    if not isinstance(d, dict):
        raise AccountsError(f"{where}: must be an object")
    missing = [k for k in ("user", "salt", "scrypt", "n", "r", "p", "accounts",
                           "default_account", "max_msgs_per_sec") if k not in d]
    if missing:
        raise AccountsError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(d) - {"user", "salt", "scrypt", "n", "r", "p", "accounts",
                               "default_account", "max_msgs_per_sec"})
    if unknown:
        raise AccountsError(f"{where}: unknown key {unknown[0]!r}")
    if not _is_u32(d["user"]):
        raise AccountsError(f"{where}: user id must be a u32, got {d['user']!r}")
    try:
        salt = bytes.fromhex(d["salt"])
        digest = bytes.fromhex(d["scrypt"])
    except (TypeError, ValueError):
        raise AccountsError(f"{where}: salt and scrypt must be hex strings") from None
    if len(salt) < 8:
        raise AccountsError(f"{where}: salt must be at least 8 bytes")
    if len(digest) != DKLEN:
        raise AccountsError(f"{where}: scrypt must be {DKLEN} bytes, got {len(digest)}")
    n, r, p = d["n"], d["r"], d["p"]
    if type(n) is not int or n < 2 or n & (n - 1) or n > 1 << 20:
        raise AccountsError(f"{where}: n must be a power of 2 up to 2^20, got {n!r}")
    if type(r) is not int or not 1 <= r <= 32 or type(p) is not int or not 1 <= p <= 16:
        raise AccountsError(f"{where}: r must be 1..32 and p 1..16")
    if 128 * r * n > _SCRYPT_MAXMEM // 2:
        raise AccountsError(f"{where}: n*r needs more memory than the gateway allows")
    accounts = d["accounts"]
    if not isinstance(accounts, list) or not accounts or len(accounts) > MAX_ACCOUNTS:
        raise AccountsError(f"{where}: accounts must be a list of 1..{MAX_ACCOUNTS} u32")
    if not all(_is_u32(a) for a in accounts):
        raise AccountsError(f"{where}: accounts must be u32, got {accounts!r}")
    if len(set(accounts)) != len(accounts):
        raise AccountsError(f"{where}: an account is listed twice")
    if 0 in accounts:
        raise AccountsError(f"{where}: account 0 cannot be a user's: on the wire it means the "
                            f"session's default account (PROTOCOL.md NewOrderSingle.Account)")
    reserved = [a for a in accounts if a >= RESERVED_ACCOUNT_MIN]
    if reserved:
        raise AccountsError(f"{where}: account {reserved[0]} is reserved (ids from "
                            f"{RESERVED_ACCOUNT_MIN:#x} up belong to the system, not to users)")
    if n_shards is not None and len({a % n_shards for a in accounts}) > 1:
        shards = sorted({a % n_shards for a in accounts})
        raise AccountsError(f"{where}: accounts {accounts} span shards {shards} of {n_shards}; "
                            f"all of a user's accounts must be in one shard")
    default = d["default_account"]
    if default not in accounts or not _is_u32(default):
        raise AccountsError(f"{where}: default_account {default!r} is not one of its accounts")
    mps = d["max_msgs_per_sec"]
    if type(mps) is not int or not 1 <= mps <= U32_MAX:
        raise AccountsError(f"{where}: max_msgs_per_sec must be a positive integer")
    return User(name, d["user"], salt, digest, n, r, p, tuple(accounts), default, mps)


def parse(doc, n_shards: int | None = None) -> Accounts:
    """Validate a decoded accounts document."""
    if n_shards is not None and (type(n_shards) is not int or not 1 <= n_shards <= MAX_SHARDS):
        raise AccountsError(f"n_shards must be 1..{MAX_SHARDS}, got {n_shards!r}")
    if not isinstance(doc, dict) or not isinstance(doc.get("users"), dict):
        raise AccountsError('the file must be {"users": {NAME: {...}}}')
    if set(doc) - {"users"}:
        raise AccountsError(f"unknown key {sorted(set(doc) - {'users'})[0]!r}")
    users = {}
    ids: dict[int, str] = {}
    owners: dict[int, str] = {}
    for name, d in doc["users"].items():
        u = _user_from_json(name, d, n_shards)
        if u.user in ids:
            raise AccountsError(f"user {name!r}: user id {u.user} is also {ids[u.user]!r}'s")
        ids[u.user] = name
        for a in u.accounts:
            if a in owners:
                raise AccountsError(f"user {name!r}: account {a} is also {owners[a]!r}'s "
                                    f"(an account belongs to one user)")
            owners[a] = name
        users[name] = u
    return Accounts(users)


def load(path, n_shards: int | None = None) -> Accounts:
    """Read and validate the accounts file; AccountsError names the first problem."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise AccountsError(f"accounts file {path} does not exist") from None
    except OSError as e:
        raise AccountsError(f"accounts file {path}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise AccountsError(f"accounts file {path} is not valid JSON: {e}") from None
    try:
        return parse(doc, n_shards)
    except AccountsError as e:
        raise AccountsError(f"accounts file {path}: {e}") from None


class FileWatch:
    """Tells when the accounts file has been replaced. `write` replaces it atomically (a new
    inode), and an editor's save changes its mtime or size, so any of the three changing means
    a new file to read; a file that is gone is no change (the old accounts stay)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.seen = self._id()

    def _id(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def changed(self) -> bool:
        now = self._id()
        if now is None or now == self.seen:
            return False
        self.seen = now
        return True


def write(path, accounts: Accounts) -> None:
    """Replace the file atomically with mode 0600: temp file, fsync, rename, fsync the dir."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
    data = (json.dumps(accounts.to_json(), indent=1, sort_keys=True) + "\n").encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def check_new_name(name) -> None:
    """A name a new user may take: 1..16 of letters, digits and ``. _ - @ +``, not starting
    with a dot or a dash. (A file written before may hold other names, and still loads: the
    Logon's char[16] takes any bytes but NUL.) Tools keep files under a user's name, and a
    name like ``../evil`` or ``a/b`` took them outside their directory."""
    _check_name(name)
    if not all(ch.isascii() and (ch.isalnum() or ch in "._-@+") for ch in name) \
            or name[0] in ".-":
        raise AccountsError(f"user name {name!r} may hold only letters, digits and . _ - @ + "
                            "(not starting with . or -)")


def make_user(name: str, user_id: int, password, accounts, default_account=None,
              max_msgs_per_sec: int = DEFAULT_MAX_MSGS_PER_SEC, n: int = SCRYPT_N,
              r: int = SCRYPT_R, p: int = SCRYPT_P) -> User:
    """A new User with a fresh salt (validated as `load` would)."""
    pw = _as_bytes(password)
    if not pw or len(pw) > PASSWORD_BYTES or b"\0" in pw:
        raise AccountsError("password must be 1..32 bytes without NUL (Logon char[32])")
    accounts = list(accounts)
    if default_account is None and accounts:
        default_account = accounts[0]
    salt = secrets.token_bytes(SALT_BYTES)
    d = {"user": user_id, "salt": salt.hex(), "scrypt": "", "n": n, "r": r, "p": p,
         "accounts": accounts, "default_account": default_account,
         "max_msgs_per_sec": max_msgs_per_sec}
    _user_from_json(name, dict(d, scrypt="00" * DKLEN), None)  # validate before the slow hash
    d["scrypt"] = _hash(pw, salt, n, r, p).hex()
    return _user_from_json(name, d, None)


def add_user(path, name: str, password, accounts, default_account=None,
             max_msgs_per_sec: int = DEFAULT_MAX_MSGS_PER_SEC, user_id: int | None = None,
             n_shards: int | None = None, n: int = SCRYPT_N, r: int = SCRYPT_R,
             p: int = SCRYPT_P) -> User:
    """Add (or replace, keeping its user id) `name` in the file at `path`, creating the file if
    it does not exist; the new user id is one above the highest unless given."""
    try:
        current = load(path, n_shards)
    except AccountsError:
        if os.path.exists(path):
            raise
        current = Accounts({})
    old = current.users.get(name)
    if old is None:
        check_new_name(name)
    for a in accounts:
        owner = next((n for n, u in sorted(current.users.items())
                      if n != name and a in u.accounts), None)
        if owner is not None:
            raise AccountsError(f"account {a} is {owner!r}'s (an account belongs to one user)")
    if user_id is None:
        user_id = old.user if old else max(current.by_id, default=0) + 1
    u = make_user(name, user_id, password, accounts, default_account, max_msgs_per_sec, n, r, p)
    users = dict(current.users)
    users[name] = u
    checked = parse(Accounts(users).to_json(), n_shards)  # unique ids, shards
    write(path, checked)
    return u


def remove_user(path, name: str) -> bool:
    """Remove `name` from the file (atomically); False if it was not there."""
    current = load(path)
    if name not in current.users:
        return False
    users = dict(current.users)
    del users[name]
    write(path, Accounts(users))
    return True
