"""Control messages of the log: one ZeroMQ multipart message each.

Layout: ``[kind, body]`` or ``[kind, body, records]`` where ``kind`` is one of the byte
strings below, ``body`` a msgpack map with short string keys, and ``records`` a frame of
the record codec (mq._frame). ROUTER sockets see the peer identity in front.

Contract: ``unpack`` never raises anything but WireError on bytes from the network, and
bounds what it allocates; a peer that sends garbage gets an ERROR reply or is ignored.
"""
from __future__ import annotations

from typing import Any

import msgpack

# producer <-> sequencer
HELLO = b"HELLO"        # producer: {src, from?}             -> WELCOME
WELCOME = b"WELCOME"    # sequencer: {src, next, durable, epoch, runs?}: next source_seq it
                        # expects, and the first one not yet committed (all below are in the
                        # log); with HELLO.from (the producer's first unacknowledged number),
                        # runs [[ss_first, ss_last, seq_first]] name the seqs of from..durable-1
                        # that the master remembers
DATA = b"DATA"          # producer: {} + records (one source, contiguous source_seq)
ACK = b"ACK"            # sequencer: {src, next, runs: [[ss_first, ss_last, seq_first]]}: every
                        # source_seq below next is committed; runs name the seqs it knows
REFUSE = b"REFUSE"      # sequencer: {src, next, busy?}      resend from next; busy: true when
                        # the stream's uncommitted bound is reached (backpressure): nothing of
                        # the batch was sequenced or acknowledged, resend it later
# master <-> replicator
STATE = b"STATE"        # master: {stream} -> {stream, last, epoch, ts, commit, last_epoch,
                        #   history: [[epoch, first seq]], sources: [[src, ss, seq]], ok}
CLAIM = b"CLAIM"        # master: {stream, epoch, claimant} -> STATE with claimant and ok:
                        # false if a higher epoch was seen, or this one was granted to
                        # another claimant; from then on the replicator refuses lower epochs
APPEND = b"APPEND"      # master: {stream, epoch, first, last, commit} + records
TRUNCATE = b"TRUNCATE"  # master: {stream, epoch, after} -> APPENDED
COMMIT = b"COMMIT"      # master: {stream, epoch, commit}: the commit point moved (no answer)
APPENDED = b"APPENDED"  # replicator: {stream, last, epoch, ok, reason?, seq?}
# anyone <-> replicator
REPLAY = b"REPLAY"      # {stream, from, to, max_bytes, req, uncommitted?} -> RECORDS; only
                        # committed records unless uncommitted (masters, peer catch-up)
RECORDS = b"RECORDS"    # {stream, from, last, commit, req} + records (possibly empty)
DIGEST = b"DIGEST"      # {stream, from, to} -> {stream, from, to, digest}: committed range only
# anyone <-> any server
PING = b"PING"          # {} -> PONG {role, ...stats}
PONG = b"PONG"
STOP = b"STOP"          # {} -> PONG, then the process exits cleanly
HASH = b"HASH"          # replica: {} -> PONG {seq, hash}: the engine's state hash at seq
PROMOTE = b"PROMOTE"    # replica: {} -> PONG {role, resent_from}: a warm replica becomes hot
QUERY = b"QUERY"        # replica, operator: {accounts} -> PONG {seq, catching_up, accounts}:
                        # the engine's live figures of those accounts (a TradingEngine's
                        # view_accounts); catching_up: the replica is still replaying the log
ERROR = b"ERROR"        # {error, reason?, src?}: reason "source_clash" when another live
                        # producer connection holds the source id

MAX_BODY = 1 << 20      # a control body is small; anything larger is an attack or a bug


class WireError(ValueError):
    """A control message that cannot be parsed."""


def pack(body: dict[str, Any]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def unpack(data: bytes | memoryview) -> dict[str, Any]:
    if len(data) > MAX_BODY:
        raise WireError(f"control body of {len(data)} bytes exceeds {MAX_BODY}")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise WireError(f"undecodable control body: {exc}") from None
    if not isinstance(body, dict):
        raise WireError("control body is not a map")
    return body


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """body[name], checked for presence and type (bool is not accepted as int)."""
    value = body.get(name)
    if value is None or not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise WireError(f"field {name!r} missing or not {kind}")
    return value
