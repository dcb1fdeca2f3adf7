"""A small Python API to a running cluster (until the gateway exists).

    from deploy.api import Cluster
    cluster = Cluster("seqex-data")            # the data directory of `seqex up`
    seq = cluster.submit("BTCUSDT", "buy", price=100, qty=5, account=1)
    cluster.close()

Each Cluster object is one producer source (give each concurrent client its own `source`);
submit() returns once the order is committed to in.ce.SYMBOL, with the seq it got.
"""
from __future__ import annotations

import os
import time

from crossengine import codec
from deploy.supervisor import read_state
from mq import auth
from mq.producer import Producer
from mq.sources import OPERATOR_SOURCE_MIN


class Cluster:
    def __init__(self, data_dir: str = "seqex-data", source: int | None = None):
        self.topo, _pid = read_state(data_dir)
        # With CURVE on, only the operator writes in.ce directly (mq/auth.py): take a source
        # id of the operator's range, one per process.
        self.source = source or (900_000 + os.getpid() % 100_000 if auth.insecure()
                                 else OPERATOR_SOURCE_MIN + os.getpid() % 0xFFFE)
        self.producers: dict[str, Producer] = {}

    def _producer(self, symbol: str) -> Producer:
        if symbol not in self.topo.symbols:
            raise ValueError(f"unknown symbol {symbol}; the topology has {sorted(self.topo.symbols)}")
        prod = self.producers.get(symbol)
        if prod is None:
            prod = Producer(self.source, self.topo.symbols[symbol]["producers"])
            prod.connect(10)
            self.producers[symbol] = prod
        return prod

    def submit(self, symbol: str, side: str, qty: int, price: int = 0, account: int = 1,
               market: bool = False, tif: str = "gtc", client_order_id: int | None = None,
               timeout_s: float = 10.0) -> int:
        """One NewOrder; returns the seq it was sequenced at."""
        payload = codec.new_order(
            client_order_id or time.time_ns() % 10**12, {"buy": codec.BUY, "sell": codec.SELL}[side],
            0 if market else price, qty, account, codec.MARKET if market else codec.LIMIT,
            {"gtc": codec.GTC, "ioc": codec.IOC, "fok": codec.FOK}[tif])
        return self.submit_commands(symbol, [(codec.NEW_ORDER, payload)], timeout_s)[0]

    def submit_commands(self, symbol: str, commands: list[tuple[int, bytes]],
                        timeout_s: float = 10.0) -> list[int]:
        """Any CrossEngine commands (kind, payload); returns their seqs, in order."""
        prod = self._producer(symbol)
        first, last = prod.submit_many(commands)
        seqs: dict[int, int] = {}
        for ss_first, ss_last, seq in prod.flush(timeout_s):
            for k in range(ss_last - ss_first + 1):
                seqs[ss_first + k] = seq + k if seq is not None else -1
        return [seqs.get(ss, -1) for ss in range(first, last + 1)]

    def close(self) -> None:
        for prod in self.producers.values():
            prod.close()
