"""TradingEngine: accounts, risk, positions, margin and funding (DESIGN.md §4)."""
