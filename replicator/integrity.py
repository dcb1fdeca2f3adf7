"""Damage to a replicator's LMDB file: detect it, quarantine the file, never serve from it.

Two kinds of damage, two remedies:

* A damaged frame (its bytes changed, LMDB's own pages intact) fails its CRC on every read, and
  the replicator repairs that range from its peers (replicator/peers.py). The file is kept.
* Damage to LMDB's own pages (branch, leaf or meta pages) makes LMDB raise MDB_CORRUPTED,
  MDB_PAGE_NOTFOUND, MDB_PANIC or MDB_INVALID, or read garbage, or even crash the reader.
  Nothing in such a file can be trusted. The file is renamed ``data.mdb.corrupt-<UTC time>``
  (kept for the operator), the replicator starts empty and rebuilds every stream from its peers
  by the normal catch-up.

At start, ``check`` walks every database of the file in a child process (``python -m
replicator.integrity DIR``), so that a reader that crashes on a damaged page is a verdict and
not a crash loop. While serving, an LMDB error of the corruption kind does the same
quarantine at once (``CORRUPTION_ERRORS``).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import zlib

import lmdb

CORRUPTION_ERRORS = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError,
                     lmdb.InvalidError, lmdb.BadRslotError, lmdb.VersionMismatchError,
                     lmdb.IncompatibleError)
OK, CORRUPT, DAMAGED_FRAMES = 0, 3, 4
CHECK_TIMEOUT_S = 600.0


def walk(path: str) -> tuple[int, str]:
    """Read every key and value of every database in the file at `path` (a directory).
    Returns (OK, "") or (DAMAGED_FRAMES, detail) for frames failing their CRC only; raises an
    lmdb error when LMDB's own structure is damaged."""
    if not os.path.exists(os.path.join(path, "data.mdb")):
        return OK, ""
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=1 << 14, subdir=True)
    damaged = []
    try:
        with env.begin(buffers=True) as txn:
            names = [bytes(k) for k, _ in txn.cursor()]
            for name in names:
                if not name.startswith((b"log:", b"meta:")):
                    raise lmdb.CorruptedError(f"unexpected key {name[:40]!r} in the main database")
                db = env.open_db(name, txn=txn, create=False)
                is_log = name.startswith(b"log:")
                for key, value in txn.cursor(db=db):
                    if is_log:
                        if len(key) != 8 or len(value) < 4:
                            raise lmdb.CorruptedError(f"{name!r}: a malformed entry")
                        if zlib.crc32(value[4:]) != int.from_bytes(value[:4], "little"):
                            damaged.append(f"{name[4:].decode(errors='replace')}@"
                                           f"{int.from_bytes(key, 'big')}")
                    elif len(key) > 16:
                        raise lmdb.CorruptedError(f"{name!r}: a malformed meta key")
    finally:
        env.close()
    if damaged:
        return DAMAGED_FRAMES, ", ".join(damaged[:10]) + (" ..." if len(damaged) > 10 else "")
    return OK, ""


def check(path: str, timeout_s: float = CHECK_TIMEOUT_S) -> tuple[bool, str]:
    """Walk the file in a child process. (True, detail) when the file may be used (detail
    names damaged frames, which peers repair); (False, why) when it must be quarantined."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
    try:
        done = subprocess.run([sys.executable, "-m", "replicator.integrity", path],
                              capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        # A very large file on a slow disk: it is used, and any damage is found on reads.
        return True, f"the integrity check did not finish in {timeout_s:.0f} s"
    out = (done.stdout + done.stderr).strip().splitlines()
    detail = out[-1] if out else ""
    if done.returncode == OK:
        return True, ""
    if done.returncode == DAMAGED_FRAMES:
        return True, detail
    if done.returncode == CORRUPT:
        return False, detail
    if done.returncode < 0:
        return False, f"the integrity check died of signal {-done.returncode}"
    # The check itself could not run (an import error, say): that says nothing of the file,
    # which is used; damage is still found on reads.
    logging.getLogger("seqex.replicator").warning(
        "the integrity check of %s could not run (code %d: %s); starting without it", path,
        done.returncode, detail)
    return True, ""


def quarantine(path: str) -> str:
    """Move the damaged file aside (kept for the operator) and drop its lock file; returns
    the new name. The directory is then empty of LMDB files, and a store opens empty."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = os.path.join(path, f"data.mdb.corrupt-{stamp}")
    n = 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(path, f"data.mdb.corrupt-{stamp}-{n}")
    os.rename(os.path.join(path, "data.mdb"), target)
    try:
        os.unlink(os.path.join(path, "lock.mdb"))
    except FileNotFoundError:
        pass
    return target


def main(argv: list[str]) -> int:
    try:
        code, detail = walk(argv[0])
    except Exception as exc:  # an lmdb error, or garbage read where LMDB trusted a page
        print(f"{type(exc).__name__}: {exc}", flush=True)
        return CORRUPT
    if detail:
        print(f"frames failing their CRC: {detail}", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
