"""The id map's exact slots (Order.id_slot) under a multiplier of 1: every order id of the
symbol hashes to one slot, so the whole id map is one probe run and every deletion's backward
shift moves every order after it. The compiled engine and the reference in lockstep over every
command kind, bulk entries that grow the id map past the size a restore gave it, restores at
any point, with check_invariants (which checks each live order's id_slot) after every step.

SEQEX_SLOW=1 runs more examples."""
import os

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from crossengine import codec as c
from crossengine.engine import seed_hashes
from tests.stateful.test_crossengine_lockstep import Lockstep, sides

SLOW = os.environ.get("SEQEX_SLOW") == "1"


class IdSlots(Lockstep):
    """The lockstep machine's rules (every command kind, garbage, restores, the invariants
    after every step) with a poor multiplier, a book big enough to grow the id map, and bulk
    entries, cancels and sweeps."""
    config = dict(tick_size=5, min_qty=1, max_qty=40, max_price=100_000, max_orders=20_000,
                  max_fills=4, max_account_orders=6_000)

    def __init__(self):
        seed_hashes(multiplier=1)          # restored engines take it too, until teardown
        super().__init__()
        self.bulk_ids: list[tuple[int, int]] = []
        self.next_bulk = 1000

    def teardown(self):
        seed_hashes(None)

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

TestIdSlots = IdSlots.TestCase
TestIdSlots.settings = settings(max_examples=400 if SLOW else 30, stateful_step_count=40,
                                deadline=None)
