"""LiqEngine: liquidation, the insurance fund and auto-deleveraging (DESIGN.md §4)."""
