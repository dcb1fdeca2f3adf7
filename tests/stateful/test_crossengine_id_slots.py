"""The id map's exact slots (Order.id_slot) under a multiplier of 1: every order id of the
symbol hashes to one slot, so the whole id map is one probe run and every deletion's backward
shift moves every order after it. The compiled engine and the reference in lockstep over every
command kind, bulk entries that grow the id map past the size a restore gave it, restores at
any point, with check_invariants (which checks each live order's id_slot) after every step.

SEQEX_SLOW=1 runs more examples."""
import os

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crossengine import codec as c
from crossengine.engine import CrossEngine, seed_hashes
from crossengine.reference import ReferenceEngine

SLOW = os.environ.get("SEQEX_SLOW") == "1"
accounts = st.integers(1, 4)
prices = st.integers(18, 22).map(lambda p: p * 5)
qtys = st.integers(1, 12)
client_ids = st.integers(1, 25)
sides = st.sampled_from([c.BUY, c.SELL])
CONFIG = dict(tick_size=5, min_qty=1, max_qty=40, max_price=100_000, max_orders=20_000,
              max_fills=4, max_account_orders=6_000)


class IdSlots(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        seed_hashes(multiplier=1)
        self.eng = CrossEngine(**CONFIG)
        self.ref = ReferenceEngine(**CONFIG)
        self.order_ids: list[int] = []
        self.bulk_ids: list[tuple[int, int]] = []
        self.next_bulk = 1000
        self.steps = 0

    def teardown(self):
        seed_hashes(None)

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

    @rule(cl=client_ids, acct=accounts, price=st.one_of(st.just(0), prices),
          qty=st.one_of(st.just(0), st.integers(1, 45)))
    def amend(self, cl, acct, price, qty):
        self.both(c.AMEND, c.amend(client_order_id=cl, account=acct, price=price, qty=qty))

    @rule(acct=st.integers(1, 6), side=st.sampled_from([0, c.BUY, c.SELL]))
    def cancel_all(self, acct, side):
        self.both(c.CANCEL_ALL, c.cancel_all(acct, side))

    @rule(kind=st.sampled_from([c.MASS_CANCEL, c.HALT, c.RESUME, c.RESUME]))
    def admin(self, kind):
        self.both(kind)

    @rule(n=st.sampled_from([50, 300, 2_100]), side=sides, acct=st.integers(5, 6),
          stp=st.integers(0, 4))
    def bulk(self, n, side, acct, stp):
        """Resting orders away from the touch: 2,100 of them grow an id map a restore sized
        for a small book (room for 1,024 more, at half load: 4,096 slots)."""
        for k in range(n):
            cl = self.next_bulk
            self.next_bulk += 1
            price = 5 * (1 + k % 15) if side == c.BUY else 5 * (40 + k % 60)
            self.both(c.NEW_ORDER, c.new_order(cl, side, price, 1 + k % 7, acct, stp=stp))
            self.bulk_ids.append((cl, acct))

    @rule(data=st.data(), n=st.sampled_from([10, 200, 1_000]))
    @precondition(lambda self: self.bulk_ids)
    def bulk_cancel(self, data, n):
        """Many cancels by client id (the id_slot path), from anywhere in the run."""
        start = data.draw(st.integers(0, len(self.bulk_ids) - 1))
        for cl, acct in self.bulk_ids[start:start + n]:
            self.both(c.CANCEL, c.cancel(client_order_id=cl, account=acct))
        del self.bulk_ids[start:start + n]

    @rule(side=sides, price=st.sampled_from([5, 75, 200, 500]), qty=st.sampled_from([40]),
          acct=st.integers(1, 6), stp=st.integers(0, 4))
    def sweep(self, side, price, qty, acct, stp):
        """A taker into the bulk levels: fills and STP cancels remove makers by id_slot."""
        self.both(c.NEW_ORDER, c.new_order(99_999, side, price, qty, acct, c.LIMIT, c.IOC,
                                           0, stp))

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


TestIdSlots = IdSlots.TestCase
TestIdSlots.settings = settings(max_examples=400 if SLOW else 30, stateful_step_count=40,
                                deadline=None)
