# The formulas as cpdef functions: callable from Python as before, and C calls from one
# another inside the compiled module (liquidation_price -> _boundary, div_nearest, ...).
# Arguments stay Python objects: money is a Python int, never bounded here
# (margin.py reads its annotations as documentation only: annotation_typing=False).

cpdef div_floor(a, b)
cpdef div_ceil(a, b)
cpdef div_nearest(a, b, up_on_tie)
cpdef initial_margin(notional, leverage_x100)
cpdef fee(notional, fee_ppm)
cpdef bankruptcy_close_fee(qty, price, buy, value, leverage_x100, taker_ppm)
cpdef order_cost(qty, price, buy, mark, spec, leverage_x100)
cpdef position_margin(size, cost, spec, leverage_x100)
cpdef unrealised(size, cost, mark, value)
cpdef cost_removed(size, cost, qty)
cpdef maintenance(size, mark, spec)
cpdef tuple _boundary(size, cost, equity_base, value, rate_ppm, amount)
cpdef liquidation_price(size, cost, equity_base, spec)
cpdef bankruptcy_price(size, cost, equity_base, spec, for_handoff=*)
cpdef funding_rate(premium_ppm, interest_ppm, cap_ppm)
cpdef funding_payment(size, mark, value, rate_ppm, toward_zero=*)
