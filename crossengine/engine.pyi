"""Type stub of the compiled CrossEngine (crossengine/engine.pyx)."""
from collections.abc import Iterable
from typing import final

TE_EVENT_SIZES: dict[int, int]          # the TradingEngine's event sizes, as this engine walks them
TE_SESSION_BLOCK_SIZES: dict[int, int]  # SessionMessage block size by templateId
LIQ_EVENT_SIZES: dict[int, int]         # the LiqEngine's event sizes, as this engine walks them

@final
class CrossEngine:
    symbol_id: int
    tick_size: int
    min_qty: int
    max_qty: int
    max_price: int
    max_orders: int
    max_fills: int
    max_account_orders: int
    n_shards: int
    @property
    def te_sources(self) -> list[int]: ...
    @property
    def liq_sources(self) -> list[int]: ...

    def __init__(self, symbol_id: int = 1, tick_size: int = 1, min_qty: int = 1,
                 max_qty: int = 1_000_000_000, max_price: int = 1 << 62,
                 max_orders: int = 10_000_000, capacity: int = 1 << 16,
                 level_capacity: int = 1 << 12, max_fills: int = 1_000,
                 max_account_orders: int = 10_000, te_sources: Iterable[int] = (),
                 n_shards: int = 1, liq_sources: Iterable[int] = ()) -> None: ...
    def apply(self, seq: int, ts_ns: int, kind: int, payload: bytes,
              source: int = ...) -> bytes: ...
    def apply_frame(self, frame: bytes) -> bytes: ...
    def __len__(self) -> int: ...
    def book(self, depth: int = 0) -> dict[str, list[tuple[int, int, int]]]: ...
    def snapshot(self) -> bytes: ...
    @classmethod
    def restore(cls, data: bytes, check: bool = False) -> CrossEngine: ...
    def state_hash(self) -> bytes: ...
    def check_invariants(self) -> None: ...
    def index_stats(self) -> dict[str, tuple[int, ...] | int]: ...
