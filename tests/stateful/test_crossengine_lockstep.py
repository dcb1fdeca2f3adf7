"""The compiled CrossEngine and the reference, driven in lockstep by hypothesis over random
sequences of every command kind: equal events at every step, the book's invariants after every
step, equal state hashes, and a snapshot/restore at any point changes nothing."""
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crossengine import codec as c
from crossengine.engine import CrossEngine, set_id_ring
from crossengine.reference import ReferenceEngine

accounts = st.integers(1, 4)
prices = st.integers(18, 22).map(lambda p: p * 5)  # a few levels, so orders meet
qtys = st.integers(1, 12)
client_ids = st.integers(1, 25)
sides = st.sampled_from([c.BUY, c.SELL])
# small bounds, so that matching stops at max_fills and accounts reach their order limit often
CONFIG = dict(tick_size=5, min_qty=1, max_qty=40, max_price=1000, max_orders=60, max_fills=4,
              max_account_orders=8)


class Lockstep(RuleBasedStateMachine):
    config = CONFIG
    ring_bits = None      # the engine's default id ring

    def __init__(self):
        super().__init__()
        set_id_ring(self.ring_bits)      # restores within the run use it too
        self.eng = CrossEngine(**self.config)
        self.ref = ReferenceEngine(**self.config)
        self.order_ids: list[int] = []
        self.steps = 0

    def both(self, kind, payload=b""):
        self.steps += 1
        a = self.eng.apply(self.steps, 0, kind, payload)
        b = self.ref.apply(self.steps, 0, kind, payload)
        assert a == b, (c.decode_events(a), c.decode_events(b))
        for ev in c.decode_events(a):
            if ev[0] == c.EV_ACCEPTED:
                self.order_ids.append(ev[1])

    @rule(cl=client_ids, side=sides, price=prices, qty=qtys, acct=accounts,
          ord_type=st.sampled_from([c.LIMIT] * 5 + [c.MARKET]),
          tif=st.sampled_from([c.GTC, c.GTC, c.GTC, c.IOC, c.FOK]),
          flags=st.sampled_from([0, 0, c.FLAG_REDUCE_ONLY, c.FLAG_POST_ONLY]),
          stp=st.integers(0, 4))
    def new_order(self, cl, side, price, qty, acct, ord_type, tif, flags, stp):
        self.both(c.NEW_ORDER, c.new_order(cl, side, price, qty, acct, ord_type, tif, flags, stp))

    @rule(data=st.data(), acct=st.sampled_from([0, 1, 2, 3, 4]))
    @precondition(lambda self: self.order_ids)
    def cancel_by_id(self, data, acct):
        self.both(c.CANCEL, c.cancel(order_id=data.draw(st.sampled_from(self.order_ids)),
                                     account=acct))

    @rule(cl=client_ids, acct=accounts)
    def cancel_by_client_id(self, cl, acct):
        self.both(c.CANCEL, c.cancel(client_order_id=cl, account=acct))

    @rule(cl=client_ids, acct=accounts, price=st.one_of(st.just(0), prices, st.integers(-5, 1100)),
          qty=st.one_of(st.just(0), st.integers(1, 45)))
    def amend(self, cl, acct, price, qty):
        self.both(c.AMEND, c.amend(client_order_id=cl, account=acct, price=price, qty=qty))

    @rule(data=st.data(), price=st.one_of(st.just(0), prices), qty=st.integers(0, 20))
    @precondition(lambda self: self.order_ids)
    def amend_by_id(self, data, price, qty):
        self.both(c.AMEND, c.amend(order_id=data.draw(st.sampled_from(self.order_ids)),
                                   price=price, qty=qty))

    @rule(acct=accounts, side=st.sampled_from([0, c.BUY, c.SELL, 9]))
    def cancel_all(self, acct, side):
        self.both(c.CANCEL_ALL, c.cancel_all(acct, side))

    @rule(kind=st.sampled_from([c.MASS_CANCEL, c.HALT, c.RESUME, c.RESUME, c.KIND_TICK]))
    def admin(self, kind):
        self.both(kind)

    @rule(kind=st.integers(0, 60), payload=st.binary(max_size=40))
    def garbage(self, kind, payload):
        self.both(kind, payload)

    @rule()
    def snapshot_and_restore(self):
        snap = self.eng.snapshot()
        assert snap == self.ref.snapshot()
        self.eng = CrossEngine.restore(snap)
        self.ref = ReferenceEngine.restore(snap)

    @invariant()
    def book_is_sound_and_states_agree(self):
        self.eng.check_invariants()
        assert self.eng.state_hash() == self.ref.state_hash()


    def teardown(self):
        set_id_ring(None)


TestLockstep = Lockstep.TestCase
TestLockstep.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


class LockstepSmallRing(Lockstep):
    """An id ring of two slots: most resting orders move on to the id map while live, and
    lookups, cancels, fills and restores go through both."""
    ring_bits = 1


TestLockstepSmallRing = LockstepSmallRing.TestCase
TestLockstepSmallRing.settings = settings(max_examples=150, stateful_step_count=60,
                                          deadline=None)
