"""The engines the `seqex` command line can run, by name (the registry lives here, in deploy/,
because deploy/ knows every package; mq/ runs any engine and imports none).

Each entry builds ``(engine, restore)`` from the engine's JSON configuration: a fresh state
machine, and the function that rebuilds one from ``engine.snapshot()`` bytes. An engine
package is imported only when its entry is used.
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

Made = tuple[Any, Callable[[bytes], Any]]


def _crossengine(config: dict) -> Made:
    from crossengine.engine import CrossEngine, seed_hashes
    # The id tables' multiplier from a secret of this process: client order ids are the
    # client's choice, and against a known multiplier they can be made to share one slot.
    seed_hashes(int.from_bytes(os.urandom(8), "little"))
    try:
        return CrossEngine(**config), CrossEngine.restore
    except TypeError as exc:      # an unknown key: a deployment mismatch, in one line
        raise ValueError(f"crossengine configuration: unknown key ({exc})") from None


TE_KEYS = frozenset({"specs", "shard", "n_shards", "ce_sources", "oracle_sources",
                     "gateway_sources", "liq_sources", "self_trade"})


LIQ_KEYS = frozenset({"specs", "n_shards", "te_sources", "ce_sources", "oracle_sources",
                      "close_out_window_ns", "indicator_interval_ns"})


def _known_keys(engine: str, config: dict, known: frozenset) -> None:
    """A key the engine would not see is a deployment mismatch: refused, never dropped."""
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{engine} configuration: unknown key(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")


def _tradingengine(config: dict) -> Made:
    from tradingengine.engine import TradingEngine, spec_from_dict
    _known_keys("tradingengine", config, TE_KEYS)
    specs = [spec_from_dict(s) for s in config.get("specs", [])]
    engine = TradingEngine(specs, config.get("shard", 0), config.get("n_shards", 1),
                           ce_sources=config.get("ce_sources"),
                           oracle_sources=config.get("oracle_sources"),
                           gateway_sources=config.get("gateway_sources"),
                           liq_sources=config.get("liq_sources"),
                           self_trade=config.get("self_trade", 0))
    return engine, TradingEngine.restore


def _liqengine(config: dict) -> Made:
    from liqengine.engine import LiqEngine, LiqSpec
    _known_keys("liqengine", config, LIQ_KEYS)
    specs = [LiqSpec(s["symbol"], s["value"], s.get("max_price", 1_000_000_000),
                     s.get("max_qty", 1_000_000_000), s.get("min_qty", 1),
                     s.get("band_ppm", 0))
             for s in config.get("specs", [])]
    windows = {k: config[k] for k in ("close_out_window_ns", "indicator_interval_ns")
               if k in config}
    engine = LiqEngine(specs, config.get("n_shards", 1), te_sources=config.get("te_sources"),
                       ce_sources=config.get("ce_sources"),
                       oracle_sources=config.get("oracle_sources"), **windows)
    return engine, lambda data: LiqEngine.restore(data, specs)


ENGINES: dict[str, Callable[[dict], Made]] = {"crossengine": _crossengine,
                                               "tradingengine": _tradingengine,
                                               "liqengine": _liqengine}


def make(name: str, config: dict | None = None) -> Made:
    """(engine, restore) for the engine called name; ValueError names the known ones."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r} (known: {', '.join(sorted(ENGINES))})")
    return ENGINES[name](config or {})


def replica_main(a: argparse.Namespace) -> None:
    """`seqex replica`: build the named engine, then run the engine-agnostic replica host."""
    from mq.replica import main
    main(a, make(a.engine, json.loads(a.engine_config)))
