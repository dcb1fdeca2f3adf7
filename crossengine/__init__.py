"""CrossEngine: one order book per symbol, price-time priority (DESIGN.md §4)."""
