"""A client written from PROTOCOL.md alone: blocking sockets, hand-written structs.

It shares no code with gateway/ on purpose: the gateway must interoperate with it byte for
byte, as with any client a trading firm writes from the page. Tests use it to drive a gateway
(in-process or a real process) and to check what comes back.
"""
from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

PREFIX = struct.Struct("<HHHHHH")
ENCODING = 0xEB50
NULL_PRICE = -(1 << 63)
NULL_ID = (1 << 64) - 1

BLOCKS = {
    1: struct.Struct("<QQQIHBB16s32s"),
    2: struct.Struct("<QQQIIHBBI"),
    3: struct.Struct("<QB32s"),
    4: struct.Struct("<B32s"),
    5: struct.Struct("<QQQ"),
    6: struct.Struct("<Q"),
    7: struct.Struct("<QI"),
    8: struct.Struct("<QI"),
    9: struct.Struct("<QIB"),
    10: struct.Struct("<QQI"),
    100: struct.Struct("<QQQqQIIcccB"),
    101: struct.Struct("<QQQQQIcB"),
    102: struct.Struct("<QQQQQqQIcccB"),
    103: struct.Struct("<QQQIccB"),
    200: struct.Struct("<QQQQQQqQqQQQIIcccccBBB"),
    201: struct.Struct("<QQQQQIccBB"),
    202: struct.Struct("<QQQIIccBB"),
    203: struct.Struct("<QQQQHBB32s"),
}
SIZES = {1: 80, 2: 40, 3: 41, 4: 33, 5: 24, 6: 8, 7: 12, 8: 12, 9: 13, 10: 20, 100: 52,
         101: 46, 102: 64, 103: 31, 200: 112, 201: 48, 202: 36, 203: 68}
assert all(BLOCKS[t].size == n for t, n in SIZES.items())

ER_FIELDS = ("seq", "transact_time", "clordid", "orig_clordid", "order_id", "exec_id", "price",
             "order_qty", "last_px", "last_qty", "leaves_qty", "cum_qty", "security_id",
             "account", "exec_type", "ord_status", "side", "ord_type", "tif", "reason",
             "liquidity", "flags")


def frame(template: int, *fields) -> bytes:
    block = BLOCKS[template].pack(*fields)
    return PREFIX.pack(12 + len(block), ENCODING, len(block), template, 1, 1) + block


@dataclass
class Msg:
    template: int
    fields: tuple
    raw: bytes

    def named(self) -> dict:
        if self.template == 200:
            return dict(zip(ER_FIELDS, self.fields, strict=True))
        return {"fields": self.fields}


class ProtoClient:
    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout

    def send(self, template: int, *fields) -> None:
        self.sock.sendall(frame(template, *fields))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def logon(self, user: str, password: str, session: int, next_expected: int = 0,
              next_seq: int = 1, hb_ms: int = 1000, cod: int = 0, cod_ms: int = 0) -> Msg:
        self.send(1, session, next_expected, next_seq, hb_ms, cod_ms, cod, 0,
                  user.encode(), password.encode())
        return self.recv(skip=(5, 6))

    def recv(self, skip: tuple[int, ...] = (5,), timeout: float | None = None) -> Msg:
        """The next message (Heartbeats skipped; TestRequests answered and skipped)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._next(deadline)
            if msg.template == 6:
                self.send(5, msg.fields[0], 0, 0)
            if msg.template in skip:
                continue
            return msg

    def _next(self, deadline: float) -> Msg:
        while True:
            if len(self.buf) >= 12:
                length, enc, block, template, schema, _v = PREFIX.unpack_from(self.buf)
                assert enc == ENCODING and schema == 1, self.buf[:12].hex()
                if len(self.buf) >= length:
                    raw, self.buf = self.buf[:length], self.buf[length:]
                    st = BLOCKS.get(template)
                    fields = st.unpack_from(raw, 12) if st and block >= st.size else ()
                    return Msg(template, fields, raw)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from the gateway")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the gateway closed the connection")
            self.buf += chunk

    def until(self, pred, timeout: float | None = None) -> list[Msg]:
        """Messages up to and including the first for which pred is true."""
        got = []
        while True:
            msg = self.recv(timeout=timeout)
            got.append(msg)
            if pred(msg):
                return got

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def nos(seq: int, clordid: int, price_mantissa: int, qty: int, security: int, side: bytes,
        ord_type: bytes = b"2", tif: bytes = b"1", account: int = 0, flags: int = 0) -> tuple:
    return (100, seq, time.time_ns(), clordid, price_mantissa, qty, security, account, side,
            ord_type, tif, flags)
