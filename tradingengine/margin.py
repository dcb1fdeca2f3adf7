# cython: wraparound=True, boundscheck=True, annotation_typing=False
# (compiled by setup.py with margin.pxd; the formulas index tiers[-1], so negative indexes
# must work, and the annotations are documentation: the arguments are Python ints)
"""Margin, fee, PnL and liquidation formulas of linear (USDT-margined) perpetuals, in integers.

Units (DESIGN.md §5): prices are integer ticks, quantities integer lots, money integer minor
units of the settlement currency, rates parts per million (ppm), leverage in hundredths
(``leverage_x100``: 500 is 5x, 10_000 is 100x). ``value`` is the contract spec's value of one
tick times one lot in minor units, so ``price * qty * value`` is an exact amount of money.

Every function is pure and every rounding says whom it favours: the trader pays margin and fees
rounded up and receives rebates rounded down; published liquidation and bankruptcy prices are
display values (the trigger itself compares money exactly, see docs/tradingengine.md). Signed
positions: ``size`` > 0 long, < 0 short; ``cost`` is the signed entry value (size * entry price
* value, summed over the fills that opened it), so unrealised PnL at mark is
``size * mark * value - cost`` for both sides.
"""
from __future__ import annotations

from dataclasses import dataclass

PPM = 1_000_000
X100 = 100
FUNDING_CLAMP_PPM = 500   # the 0.05% of F = P + clamp(I - P, -0.05%, +0.05%)


def div_floor(a: int, b: int) -> int:
    """a / b rounded towards minus infinity (b > 0)."""
    return a // b


def div_ceil(a: int, b: int) -> int:
    """a / b rounded towards plus infinity (b > 0)."""
    return -((-a) // b)


def div_nearest(a: int, b: int, up_on_tie: bool) -> int:
    """a / b rounded to the nearest integer (b > 0); an exact half goes up or down as asked."""
    q, r = divmod(a, b)
    twice = 2 * r
    if twice > b or (twice == b and up_on_tie):
        return q + 1
    return q


@dataclass(frozen=True, slots=True)
class Tier:
    """One risk-limit tier: positions valued up to ``limit`` minor units keep maintenance
    margin ``value * mmr_ppm / 1e6 - mm_amount`` and may use at most ``max_leverage_x100``.
    ``mm_amount`` makes the requirement continuous across tiers (the same figure at a tier's
    edge whichever rate is used)."""
    limit: int
    mmr_ppm: int
    mm_amount: int
    max_leverage_x100: int


@dataclass(frozen=True, slots=True)
class ContractSpec:
    """A linear perpetual. ``tick`` and ``lot`` are the display size of one price tick and one
    lot in the quote / base asset, kept as integers scaled by 1e8 for the protocol layer; the
    engine itself only uses the integer fields below."""
    symbol: int                 # SecurityID, 1 .. 2**32-1
    value: int                  # minor units per tick per lot (>= 1)
    max_leverage_x100: int      # the highest leverage any tier allows
    tiers: tuple[Tier, ...]     # ascending limits; a position above the last is refused
    maker_fee_ppm: int          # may be negative (a rebate)
    taker_fee_ppm: int          # >= 0 and >= -maker_fee_ppm, so a trade never drains the pool
    funding_interval_ns: int    # funding fires at every multiple of this in sequenced time
    band_ppm: int               # limit prices within mark * (1 -/+ band); market orders at the edge
    funding_cap_ppm: int = 7_500  # |F| never exceeds this
    max_qty: int = 1_000_000    # lots per order
    max_price: int = 1_000_000_000  # ticks
    tick: int = 1               # display: price units per tick, * 1e8
    lot: int = 1                # display: base units per lot, * 1e8

    def __post_init__(self) -> None:
        if not 0 < self.symbol < 1 << 32 or self.value < 1 or not self.tiers:
            raise ValueError(f"contract spec {self.symbol}: bad symbol, value or tiers")
        if not 100 <= self.max_leverage_x100 <= 1_000_000:
            raise ValueError(f"contract spec {self.symbol}: max leverage out of 1x .. 10000x")
        if self.taker_fee_ppm < 0 or self.taker_fee_ppm + self.maker_fee_ppm < 0:
            raise ValueError(f"contract spec {self.symbol}: fees would let trades drain the pool")
        if self.funding_interval_ns <= 0 or not 0 < self.band_ppm < PPM:
            raise ValueError(f"contract spec {self.symbol}: bad funding interval or band")
        if self.max_qty < 1 or self.max_price < 1 \
                or self.max_qty * self.max_price * self.value >= 1 << 62 \
                or self.tiers[-1].limit >= 1 << 62:
            raise ValueError(f"contract spec {self.symbol}: an order's or a position's value "
                             "could leave int64")
        last = 0
        for t in self.tiers:
            if t.limit <= last or not 0 < t.mmr_ppm < PPM or t.mm_amount < 0 \
                    or not 100 <= t.max_leverage_x100 <= self.max_leverage_x100:
                raise ValueError(f"contract spec {self.symbol}: tiers must ascend with sane rates")
            if PPM * X100 // t.max_leverage_x100 <= t.mmr_ppm:
                raise ValueError(f"contract spec {self.symbol}: a tier's initial margin must "
                                 "exceed its maintenance rate")
            last = t.limit

    def tier(self, position_value: int) -> Tier | None:
        """The tier of a position worth ``position_value`` (>= 0), None above the last."""
        for t in self.tiers:
            if position_value <= t.limit:
                return t
        return None


# -- order cost and initial margin --------------------------------------------------------------

def initial_margin(notional: int, leverage_x100: int) -> int:
    """notional / leverage, rounded up (against the trader)."""
    return div_ceil(notional * X100, leverage_x100)


def fee(notional: int, fee_ppm: int) -> int:
    """The fee on a notional; positive is paid by the trader. Rounded up, so a charge is never
    short and a rebate (negative) is never generous: against the trader both ways."""
    return div_ceil(notional * fee_ppm, PPM)


def bankruptcy_close_fee(qty: int, price: int, buy: bool, value: int, leverage_x100: int,
                         taker_ppm: int) -> int:
    """The taker fee of closing ``qty`` opened at ``price`` at its bankruptcy price
    price * (1 -/+ 1/leverage): Phemex's fee-to-close that an order cost and a position's margin
    reserve, so that liquidation prices are fee-inclusive. Rounded up."""
    lev_term = leverage_x100 - X100 if buy else leverage_x100 + X100
    return div_ceil(qty * price * value * lev_term * taker_ppm, leverage_x100 * PPM)


def order_cost(qty: int, price: int, buy: bool, mark: int, spec: ContractSpec,
               leverage_x100: int) -> int:
    """What an order that opens ``qty`` lots reserves: initial margin, plus the premium of a buy
    above mark or a sell below it (the loss it takes at once), plus the taker fee to open, plus
    the fee to close at bankruptcy (Phemex). Reducing quantity costs nothing; the caller passes
    only the opening part."""
    if qty <= 0:
        return 0
    # the sum of initial_margin(), the premium, fee() and bankruptcy_close_fee(), written out:
    # this is the pre-trade check's hot path (each term rounded up, as those functions do)
    notional = qty * price * spec.value
    premium = (price - mark if buy else mark - price) * qty * spec.value
    taker = spec.taker_fee_ppm
    lev_term = leverage_x100 - X100 if buy else leverage_x100 + X100
    return (-((-notional * X100) // leverage_x100) + (premium if premium > 0 else 0)
            - ((-notional * taker) // PPM)
            - ((-notional * lev_term * taker) // (leverage_x100 * PPM)))


def position_margin(size: int, cost: int, spec: ContractSpec, leverage_x100: int) -> int:
    """The margin a position of ``size`` with entry value ``cost`` holds at ``leverage``:
    initial margin on its entry value plus the fee to close at its bankruptcy price."""
    if size == 0:
        return 0
    entry_value = abs(cost)
    lev_term = leverage_x100 - X100 if size > 0 else leverage_x100 + X100
    return (initial_margin(entry_value, leverage_x100)
            + div_ceil(entry_value * lev_term * spec.taker_fee_ppm, leverage_x100 * PPM))


# -- PnL ----------------------------------------------------------------------------------------

def unrealised(size: int, cost: int, mark: int, value: int) -> int:
    """Unrealised PnL at mark, exact."""
    return size * mark * value - cost


def cost_removed(size: int, cost: int, qty: int) -> int:
    """The part of ``cost`` that leaves a position of ``size`` when ``qty`` lots (<= |size|) of
    it close: proportional, rounded towards zero, so the rest keeps the rounding remainder and
    all of it leaves with the last lot. Exact overall: realised + remaining cost = cost."""
    if qty == abs(size):
        return cost
    part = abs(cost) * qty // abs(size)
    return part if cost >= 0 else -part


# -- maintenance, liquidation and bankruptcy ----------------------------------------------------

def maintenance(size: int, mark: int, spec: ContractSpec) -> int:
    """Maintenance margin at mark, fee-inclusive: the tier's rate on the position value minus
    its maintenance amount, plus the taker fee of closing at mark. Rounded up. A position above
    the last tier is held to the last tier's rate."""
    position_value = abs(size) * mark * spec.value
    t = spec.tier(position_value) or spec.tiers[-1]
    return (max(0, div_ceil(position_value * t.mmr_ppm, PPM) - t.mm_amount)
            + fee(position_value, spec.taker_fee_ppm))


def _boundary(size: int, cost: int, equity_base: int, value: int, rate_ppm: int,
              amount: int) -> tuple[int, int]:
    """The exact price p at which equity_base + size*p*value - cost equals
    |size|*p*value*rate - amount, as a fraction (num, den) with den > 0."""
    if size > 0:
        return (cost - equity_base - amount) * PPM, size * value * (PPM - rate_ppm)
    return (equity_base - cost + amount) * PPM, -size * value * (PPM + rate_ppm)


def liquidation_price(size: int, cost: int, equity_base: int, spec: ContractSpec) -> int:
    """The mark price at which the position's equity (``equity_base`` + unrealised PnL) meets
    fee-inclusive maintenance, rounded to the nearest tick (a half goes towards the entry,
    i.e. earlier). Display only: the engine compares money at every mark. The tier is the one
    of the position valued at that price. 0 when the position cannot be liquidated by the
    mark alone (a long whose equity covers a fall to zero)."""
    if size == 0:
        return 0
    price = 0
    for t in spec.tiers:
        num, den = _boundary(size, cost, equity_base, spec.value,
                             t.mmr_ppm + spec.taker_fee_ppm, t.mm_amount)
        price = div_nearest(num, den, up_on_tie=size > 0) if num > 0 else 0
        if abs(size) * price * spec.value <= t.limit:
            break
    return price


def bankruptcy_price(size: int, cost: int, equity_base: int, spec: ContractSpec,
                     for_handoff: bool = False) -> int:
    """The price at which the position's equity pays exactly the fee of closing there (equity
    after that fee is zero). Published rounded to the nearest tick; for the handoff it is
    rounded against the trader (a long up, a short down) and never below one tick."""
    if size == 0:
        return 0
    num, den = _boundary(size, cost, equity_base, spec.value, spec.taker_fee_ppm, 0)
    if for_handoff:
        price = div_ceil(num, den) if size > 0 else div_floor(num, den)
        return min(max(price, 1), spec.max_price)
    return max(div_nearest(num, den, up_on_tie=size > 0), 0)


# -- funding ------------------------------------------------------------------------------------

def funding_rate(premium_ppm: int, interest_ppm: int, cap_ppm: int) -> int:
    """F = P + clamp(I - P, -0.05%, +0.05%), capped at +/- cap. Positive: longs pay shorts."""
    f = premium_ppm + min(max(interest_ppm - premium_ppm, -FUNDING_CLAMP_PPM), FUNDING_CLAMP_PPM)
    return min(max(f, -cap_ppm), cap_ppm)


def funding_payment(size: int, mark: int, value: int, rate_ppm: int,
                    toward_zero: bool = False) -> int:
    """What a position pays (> 0) or receives (< 0) at rate F: size * mark * value * F / 1e6,
    rounded against the trader (a payer pays the ceiling, a receiver gets the floor), so the
    residue is never negative; it goes to the dust account. ``toward_zero``: a clearing
    account's, the mirror of other shards' accounts, rounded toward zero whichever way it
    goes, so that the shards' clearing accounts sum to zero (rounded as a client's, a payer's
    ceiling in one shard against a receiver's floor in the other, they drifted by a unit an
    interval)."""
    exact = size * mark * value * rate_ppm
    if toward_zero:
        return exact // PPM if exact >= 0 else -(-exact // PPM)
    return div_ceil(exact, PPM)
