"""Any ClientMessage a gateway can forward (a client controls every byte of the root block)
is answered and never stops the shard: no exception out of apply, the compiled and the
interpreted engines agree byte for byte, the books balance and a snapshot restores the same
state (PROTOCOL.md §4.12; a stopped shard stops every replica of it)."""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_tradingengine_sessions import E8, Harness
from tradingengine.engine import TradingEngine
from tradingengine.reference import interpreted

U64 = (1 << 64) - 1
I64 = 1 << 63
u64 = st.one_of(st.sampled_from([0, 1, 2, 3, 5, U64, U64 - 1, I64, 0xFFFFFFFF, 1 << 32]),
                st.integers(0, U64))
seqno = st.one_of(st.integers(1, 40), st.sampled_from([U64, U64 - 1, 1 << 32, 1 << 33]))
clordid = st.one_of(st.integers(0, 12), st.sampled_from([U64, U64 - 1]))
price = st.one_of(st.sampled_from([-I64, I64 - 1, 0, -1, 100 * E8, 99 * E8, 101 * E8,
                                   100 * E8 + 1, 1, -100 * E8, 10**17]),
                  st.integers(-I64, I64 - 1))
qty = st.one_of(st.sampled_from([0, 1, 5, U64, I64, 1 << 32, 10**9]), u64)
secid = st.sampled_from([0, 1, 2, 3, 0xFFFFFFFF])
account = st.sampled_from([0, 1, 2, 3, 0xFFFFFFFF])
char = st.one_of(st.sampled_from([b"0", b"1", b"2", b"3", b"4", b"7", b"\0", b"\xff", b"X"]),
                 st.binary(min_size=1, max_size=1))
flags = st.integers(0, 255)

nos = st.builds(lambda *f: (100, struct.pack("<QQQqQIIcccB", *f)), seqno, u64, clordid, price,
                qty, secid, account, char, char, char, flags)
cancel = st.builds(lambda *f: (101, struct.pack("<QQQQQIcB", *f)), seqno, u64, clordid,
                   clordid, st.one_of(st.integers(0, 12), st.just(U64)), secid, char, flags)
replace = st.builds(lambda *f: (102, struct.pack("<QQQQQqQIcccB", *f)), seqno, u64, clordid,
                    clordid, st.one_of(st.integers(0, 12), st.just(U64)), price, qty, secid,
                    char, char, char, flags)
mass = st.builds(lambda *f: (103, struct.pack("<QQQIccB", *f)), seqno, u64, clordid, secid,
                 char, char, flags)
unknown = st.builds(lambda t, s: (t, struct.pack("<Q", s)), st.integers(104, 199), seqno)
message = st.tuples(st.sampled_from([(1, 1), (2, 2)]), st.one_of(nos, cancel, replace, mass,
                                                                  unknown),
                    st.sampled_from([0, 0, 0, 1, 2]))


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(message, min_size=1, max_size=25))
def test_any_client_message_is_answered_and_the_shard_goes_on(msgs):
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 1)
    h.logon(2, 2)
    for (user, sid), (template, block), gflags in msgs:
        h.send(user, sid, template, block, gflags)
    h.logon(1, 1, conn=8)          # SessionState of every session still encodes
    te = h.v.te
    te.check_invariants()
    assert TradingEngine.restore(te.snapshot()).state_hash() == te.state_hash()
    assert h.v.shadows[0].state_hash() == te.state_hash()
