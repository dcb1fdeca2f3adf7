"""The TradingEngine's formulas against worked examples (docs/tradingengine.md has the same
numbers, step by step): Phemex's isolated USDT long, BitMEX's long at 100, order cost, tiers,
PnL, fees rounded against the trader, funding."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradingengine.margin import (
    ContractSpec,
    Tier,
    bankruptcy_close_fee,
    bankruptcy_price,
    cost_removed,
    div_ceil,
    div_floor,
    div_nearest,
    fee,
    funding_payment,
    funding_rate,
    initial_margin,
    liquidation_price,
    maintenance,
    order_cost,
    position_margin,
    unrealised,
)

HOUR = 3600 * 10**9
USDT = 10**8          # minor units: 1e-8 USDT


def phemex_spec() -> ContractSpec:
    # price tick 0.00001 USDT, lot = 1 contract of size 1: one tick times one lot is 0.00001 USDT
    # = 1,000 minor units. MMR 1%, taker 0.06%, maker 0.01%.
    return ContractSpec(1, 1_000, 5_000, (Tier(10**18, 10_000, 0, 5_000),), 100, 600, 8 * HOUR,
                        100_000)


def bitmex_spec() -> ContractSpec:
    # price tick 0.01, one lot of 1: one tick times one lot is 0.01 USDT = 1e6 minor units.
    # 1% initial margin is 100x leverage, 0.5% maintenance, no fees in this example.
    return ContractSpec(1, 10**6, 10_000, (Tier(10**18, 5_000, 0, 10_000),), 0, 0, 8 * HOUR,
                        100_000, max_qty=1_000, max_price=10**6)


def test_phemex_isolated_long_liquidates_at_0_32323():
    """Size 500 at 0.4 (40,000 ticks), 5x, MMR 1%, taker 0.06%: margin is IM 40 USDT plus the
    fee to close at the bankruptcy price 0.32 (0.096 USDT); liquidation at 0.32323."""
    s = phemex_spec()
    size, cost = 500, 500 * 40_000 * 1_000
    assert cost == 200 * USDT
    margin = position_margin(size, cost, s, 500)
    assert margin == 40 * USDT + 9_600_000        # 40.096 USDT
    assert liquidation_price(size, cost, margin, s) == 32_323
    assert bankruptcy_price(size, cost, margin, s) == 32_000
    assert bankruptcy_price(size, cost, margin, s, for_handoff=True) == 32_000


def test_phemex_trigger_is_exact_in_money():
    """The published price is a rounding of the exact boundary 0.3232343...: a mark of 0.32323
    is at or below maintenance, 0.32324 is not."""
    s = phemex_spec()
    size, cost = 500, 500 * 40_000 * 1_000
    margin = position_margin(size, cost, s, 500)
    for mark, liquidated in ((32_324, False), (32_323, True)):
        equity = margin + unrealised(size, cost, mark, s.value)
        assert (equity <= maintenance(size, mark, s)) is liquidated


def test_bitmex_long_at_100_liquidates_at_99_50_bankrupt_at_99():
    s = bitmex_spec()
    size, cost = 1, 10_000 * 10**6                    # one lot at 100.00
    margin = position_margin(size, cost, s, 10_000)   # 1% of 100 = 1 USDT
    assert margin == 1 * USDT
    assert liquidation_price(size, cost, margin, s) == 9_950
    assert bankruptcy_price(size, cost, margin, s) == 9_900


def test_short_mirror_of_phemex_example():
    """A 5x isolated short of 500 at 0.4: bankruptcy 0.48 less the fee, liquidation below it."""
    s = phemex_spec()
    size, cost = -500, -500 * 40_000 * 1_000
    margin = position_margin(size, cost, s, 500)
    # IM 40 + fee to close at 0.48: 500 * 0.48 * 0.0006 = 0.144
    assert margin == 40 * USDT + 14_400_000
    assert bankruptcy_price(size, cost, margin, s) == 48_000
    liq = liquidation_price(size, cost, margin, s)
    # (40.144 + 200) / (500 * 1.0106) = 0.475250...
    assert liq == 47_525
    # the exact boundary is 0.4752504..., so the first tick that liquidates is 0.47526
    for mark, liquidated in ((47_525, False), (47_526, True)):
        equity = margin + unrealised(size, cost, mark, s.value)
        assert (equity <= maintenance(size, mark, s)) is liquidated


def test_order_cost_buy_above_mark_pays_the_difference():
    """Buy 10 at 41,000 with mark 40,000, 5x: IM 41*... plus 10*(1,000)*1,000 premium plus the
    taker fee to open and the fee to close at bankruptcy."""
    s = phemex_spec()
    notional = 10 * 41_000 * 1_000
    im = notional // 5
    premium = 10 * 1_000 * 1_000
    open_fee = div_ceil(notional * 600, 10**6)
    close_fee = div_ceil(notional * 4 * 600, 5 * 10**6)   # at 41,000 * (1 - 1/5)
    assert order_cost(10, 41_000, True, 40_000, s, 500) == im + premium + open_fee + close_fee
    # a sell above mark pays no premium, a sell below does
    assert order_cost(10, 41_000, False, 40_000, s, 500) < order_cost(10, 39_000, False, 40_000,
                                                                       s, 500) + premium
    assert order_cost(0, 41_000, True, 40_000, s, 500) == 0


def test_tiers_and_maintenance_amount_make_requirement_continuous():
    s = ContractSpec(1, 1, 5_000, (Tier(10**6, 10_000, 0, 5_000), Tier(10**8, 20_000, 10**4, 2_500)),
                     0, 0, HOUR, 100_000)
    # at the edge of tier 1 (value 1e6): 1% of 1e6 = 1e4; tier 2 would give 2% - 1e4 = 1e4
    assert maintenance(1, 10**6, s) == 10**4
    assert maintenance(1, 10**6 + 100, s) == div_ceil((10**6 + 100) * 20_000, 10**6) - 10**4
    assert s.tier(10**8 + 1) is None


def test_fees_round_against_the_trader():
    assert fee(1_000_001, 600) == 601          # 600.0006 charged as 601
    assert fee(1_000_001, -100) == -100        # a rebate of 100.0001 paid as 100
    assert initial_margin(1_000_001, 500) == 200_001


def test_cost_removed_is_exact_and_leaves_with_the_last_lot():
    size, cost = 3, 1_000
    parts = [cost_removed(size, cost, 1), cost_removed(size - 1, cost - 333, 1)]
    assert parts == [333, 333]
    assert cost_removed(1, cost - 666, 1) == 334
    assert cost_removed(-3, -1_000, 1) == -333


@given(st.integers(-10**12, 10**12), st.integers(1, 10**9))
def test_division_helpers(a, b):
    assert div_floor(a, b) * b <= a < (div_floor(a, b) + 1) * b
    assert (div_ceil(a, b) - 1) * b < a <= div_ceil(a, b) * b
    n = div_nearest(a, b, True)
    assert abs(n * b - a) * 2 <= b


def test_funding_rate_clamps_interest_minus_premium():
    assert funding_rate(0, 100, 7_500) == 100              # I - P within 0.05%: F = I
    assert funding_rate(2_000, 100, 7_500) == 1_500        # I - P = -0.19% clamped to -0.05%
    assert funding_rate(-2_000, 100, 7_500) == -1_500
    assert funding_rate(100_000, 100, 7_500) == 7_500      # capped


@given(st.integers(-10**6, 10**6), st.integers(1, 10**6), st.integers(-5_000, 5_000))
def test_funding_payment_rounds_against_the_trader(size, mark, rate):
    exact_num = size * mark * 7 * rate
    pay = funding_payment(size, mark, 7, rate)
    assert pay * 10**6 >= exact_num                        # payers pay at least the exact amount
    assert (pay - 1) * 10**6 < exact_num                   # ... and less than one unit more


def test_spec_refuses_nonsense():
    with pytest.raises(ValueError):
        ContractSpec(1, 1, 10_000, (Tier(10**6, 10_000, 0, 10_000),), 0, 0, HOUR, 100_000)
    with pytest.raises(ValueError):      # a maker rebate above the taker fee drains the pool
        ContractSpec(1, 1, 5_000, (Tier(10**6, 10_000, 0, 5_000),), -700, 600, HOUR, 100_000)
    with pytest.raises(ValueError):
        ContractSpec(1, 10**9, 5_000, (Tier(10**6, 10_000, 0, 5_000),), 0, 0, HOUR, 100_000)


@given(st.integers(1, 10**6), st.integers(1, 10**9), st.booleans(), st.integers(1, 10**9),
       st.integers(100, 10_000), st.integers(0, 10_000))
def test_order_cost_is_the_sum_of_its_terms(qty, price, buy, mark, lev, taker):
    """order_cost() writes its terms out for speed; it must equal the functions it inlines."""
    s = ContractSpec(1, 3, 10_000, (Tier(10**18, 500, 0, 10_000),), 0, taker, HOUR, 100_000,
                     max_qty=10**6, max_price=10**9)
    notional = qty * price * 3
    premium = (price - mark if buy else mark - price) * qty * 3
    expected = (initial_margin(notional, lev) + max(0, premium) + fee(notional, taker)
                + bankruptcy_close_fee(qty, price, buy, 3, lev, taker))
    assert order_cost(qty, price, buy, mark, s, lev) == expected
