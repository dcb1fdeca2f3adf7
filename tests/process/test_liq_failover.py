"""SIGKILL of the hot LiqEngine during a cascade, on a real cluster (127.0.0.1).

A small topology (1 replicator, BTCUSDT, 2 TradingEngine shards, the LiqEngine with one hot
and one warm replica, no mark source: the operator sends the marks). The operator builds
leveraged longs on both shards against two market makers, who bid a thin ladder under the
market; a mark crash goes into every in.te.N and in.liq; once the first handoff is in in.liq,
liq.hot0 is killed with SIGKILL. While the insurance fund holds close-outs that the book
cannot take (an ADL cancels the makers' bids), the makers bid again at the crashed mark. Then:
out.liq catches up with in.liq, and every one of its records equals, payload and route byte for byte,
what a fresh LiqEngine rebuilt from in.liq writes; and `seqex audit` is balanced with no
clearing difference once the cluster is at rest.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from deploy.procs import Group, free_port_block
from liqengine.engine import HOLD
from mq.control import replay, wait_until
from mq.producer import Producer
from mq.record import decode
from tests.process.test_cli import seqex, write
from tradingengine import codec as tc

TOPOLOGY = """
[cluster]
base_port = 7100

[[replicator]]
name = "replicator0"

[[symbol]]
name = "BTCUSDT"
symbol_id = 1
tick_size = "0.5"
lot_size = "0.001"
in_policy = "first"
hot = 1
warm = 0
mark_start = "50000"

[trading]
shards = 2
hot = 1
warm = 0
in_policy = "first"
oracle = "off"
gateway = false
demo_accounts = false
insurance_fund = "0"
liq = true
"""

P = 100_000            # ticks: 50,000 USDT
LONGS = list(range(10, 30))
MM = (1, 2)


def _records(rep: str, stream: str) -> list:
    try:
        return [r for f in replay(rep, stream, 1, None, timeout_s=10.0) for r in decode(f)]
    except (TimeoutError, OSError):
        return []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_of_the_hot_liqengine_mid_cascade(tmp_path):
    from deploy.cli import _replica_config
    from deploy.drill import _pid_of
    from deploy.engines import make
    from deploy.supervisor import read_state
    from deploy.trading import _operator_client
    from liqengine import codec as lc
    tmp = str(tmp_path)
    data = os.path.join(tmp, "data")
    top = write(os.path.join(tmp, "t.toml"), TOPOLOGY)
    with Group(os.path.join(tmp, "logs")) as group:
        up = group.spawn("up", ["up", "--topology", top, "--data", data, "--base-port",
                                str(free_port_block(60)), "--ready-timeout", "180"])
        try:
            wait_until(lambda: "seqex is up" in up.log() or not up.alive, 400,
                       "seqex up", interval_s=0.5)
            assert up.alive, up.log()
            topo, _pid = read_state(data)
            rep = topo.replicator_addrs()[0]
            shards = topo.trading["shards"]
            liq = topo.trading["liq"]
            value = topo.symbols["BTCUSDT"]["spec"]["value"]
            with _operator_client(data) as client:
                prods = {}
                for name, addr in [*((sh["in"], sh["producers"]) for sh in shards),
                                   (liq["in"], liq["producers"])]:
                    prods[name] = Producer(client.source, addr)
                    prods[name].connect(120)

                def te(account: int, kind: int, payload: bytes) -> None:
                    prods[shards[account % 2]["in"]].submit(kind, [payload], block_s=60)

                def mark(price: int) -> None:
                    for p in prods.values():
                        p.submit(tc.MARK_PRICE, [tc.mark_price(1, price)], block_s=60)

                tid = 1
                for a in MM:
                    te(a, tc.DEPOSIT, tc.transfer(tid, a, 10**15))
                    tid += 1
                mark(P)
                coid = 100
                for i, a in enumerate(LONGS):
                    qty = 5
                    te(a, tc.DEPOSIT, tc.transfer(tid, a, qty * P * value // 50
                                                  + qty * P * value // 100))
                    tid += 1
                    te(a, tc.SET_LEVERAGE, tc.set_leverage(a, 1, 5_000))
                    coid += 1
                    te(MM[i % 2], tc.NEW_ORDER, tc.new_order(coid, MM[i % 2], 1, tc.SELL, P,
                                                             qty))
                    coid += 1
                    te(a, tc.NEW_ORDER, tc.new_order(coid, a, 1, tc.BUY, P, qty))
                for k in range(1, 11):
                    coid += 1
                    te(MM[k % 2], tc.NEW_ORDER, tc.new_order(coid, MM[k % 2], 1, tc.BUY,
                                                             P - 300 * k, 3))

                def longs_built() -> bool:
                    held = set()
                    for r in _records(rep, liq["in"]):
                        if r[2] & 0xFF00_0000 == lc.TE_SOURCE_BASE:
                            for ev in tc.decode_events(bytes(r[6])):
                                if ev[0] == tc.POSITION and ev[3] > 0:
                                    held.add(ev[1])
                    return held >= set(LONGS)
                wait_until(longs_built, 300, "the longs' positions in in.liq", interval_s=1.0)
                # the crash, then SIGKILL of the hot LiqEngine at the first handoff
                mark(P * 9 // 10)

                def handed_off() -> bool:
                    return any(ev[0] == tc.LIQUIDATION
                               for r in _records(rep, liq["in"])
                               if r[2] & 0xFF00_0000 == lc.TE_SOURCE_BASE
                               for ev in tc.decode_events(bytes(r[6])))
                wait_until(handed_off, 300, "a handoff in in.liq", interval_s=0.2)
                os.kill(_pid_of(data, "liq.hot0"), signal.SIGKILL)
                for p in prods.values():
                    p.close()
            config = _replica_config(topo, liq["in"], "liqengine")

            def rebuilt():
                eng, _restore = make("liqengine", config)
                ins = _records(rep, liq["in"])
                outs = [eng.apply_frame(f) for f in
                        replay(rep, liq["in"], 1, ins[-1][0], timeout_s=10.0)] if ins else []
                return eng, ins, [r for f in outs for r in decode(f)]

            state = {"refill_at": 0.0, "coid": coid}

            def refill() -> None:
                # The market refills at the crashed mark while the fund holds close-outs (it
                # covers their exposure at mark, docs/liqengine.md §8): an ADL of a maker
                # cancels its bids, so a held close-out may find the book empty until then.
                with _operator_client(data) as client:
                    for i, sh in enumerate(shards):
                        maker = next(m for m in MM if m % len(shards) == i)
                        prod = Producer(client.source, sh["producers"])
                        try:
                            prod.connect(120)
                            state["coid"] += 1
                            prod.submit(tc.NEW_ORDER, [tc.new_order(
                                state["coid"], maker, 1, tc.BUY, P * 9 // 10, 10)],
                                block_s=60)
                        finally:
                            prod.close()

            def at_rest() -> bool:
                # every close-out done in the rebuilt engine, and out.liq holds every record
                # that carries events (Ticks keep coming: out.liq may lag by a few idle ones)
                eng, ins, want = rebuilt()
                got = _records(rep, liq["out"])
                state.update(eng=eng, want=want, got=got, ins=len(ins))
                busy = [i for i, r in enumerate(want) if r[6]]
                if eng.closeouts and all(co.phase == HOLD for co in eng.closeouts.values()) \
                        and time.monotonic() > state["refill_at"]:
                    refill()
                    state["refill_at"] = time.monotonic() + 5.0
                return bool(ins) and not eng.closeouts and eng.next_cid > 1 \
                    and len(got) > busy[-1]
            try:
                wait_until(at_rest, 400, "out.liq caught up and every close-out done",
                           interval_s=1.0)
            finally:
                print(f"in.liq {state.get('ins')} records, out.liq {len(state.get('got', []))}, "
                      f"close-outs open {len(state['eng'].closeouts) if 'eng' in state else '?'}")
                for co in (state["eng"].closeouts.values() if "eng" in state else ()):
                    print(f"  close-out {co.cid}: account {co.account} shard {co.shard} qty "
                          f"{co.qty} side {co.side} bp {co.bp} phase {co.phase} coid {co.coid} "
                          f"order {co.order_id} deadline {co.deadline} unassigned "
                          f"{co.unassigned} in Adls {co.adl_out}")
            # out.liq was read after in.liq: it may hold a Tick's record more
            got, want = state["got"], state["want"]
            n = min(len(got), len(want))
            assert n > 0 and [(r[0], bytes(r[6]), r[7]) for r in got[:n]] == \
                [(r[0], bytes(r[6]), r[7]) for r in want[:n]]
            assert state["eng"].next_cid > 2, "fewer than two takeovers"
            # the books, rebuilt from the logs: balanced, no clearing difference at rest
            report = {}

            def balanced() -> bool:
                out = seqex("audit", "--data", data, "--json", "--every", "5", timeout=300)
                assert "Traceback" not in out.stderr, out.stderr
                report.update(json.loads(out.stdout))
                return report["ok"] and report["at_rest"]
            wait_until(balanced, 400, "a balanced audit at rest", interval_s=2.0)
            text = seqex("audit", "--data", data, timeout=300)
            assert text.returncode == 0 and "balanced" in text.stdout, text
            print(json.dumps({k: v for k, v in report.items() if k != "engines"}),
                  f"takeovers {state['eng'].next_cid - 1}, out.liq {len(got)} records")
        finally:
            if up.alive:
                seqex("down", "--data", data, timeout=120)
                up.wait(60)
