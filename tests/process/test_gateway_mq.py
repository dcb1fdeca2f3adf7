"""MqCore over a real log cluster on 127.0.0.1: records sent into a stream come back in order
through the subscriber (here the cluster's own stream stands in for out.te.0, an echo), with
their seqs and times, and depth() counts exactly the records sent and not yet seen; a second
MqCore of the same gateway index (a restart) counts only its own records."""
from __future__ import annotations

import asyncio

from deploy.local import LogCluster
from gateway.mq_core import MqCore, gateway_source


def test_mq_core_echo(tmp_path):
    with LogCluster(str(tmp_path), stream="in.te.0", replicators=1, tick_ms=20) as cluster:
        cluster.start()
        shard = {"in": cluster.prod_addr, "pub": cluster.pub_addr,
                 "replicators": cluster.rep_addrs, "out_stream": "in.te.0"}

        async def run(n, tag):
            core = MqCore(3, [shard])
            got = []
            core.subscribe(lambda s, seq, ts, p: got.append((s, seq, ts, p)))
            await core.start()
            assert core.source == gateway_source(3) == 0x7200_0003
            for i in range(n):
                await core.send(0, 82, tag + i.to_bytes(4, "little"))
            assert core.depth(0) > 0 or any(p.startswith(tag) for *_x, p in got)
            for _ in range(3000):
                if core.depth(0) == 0:
                    break
                await asyncio.sleep(0.01)
            assert core.depth(0) == 0
            await core.close()
            return got

        got = asyncio.run(asyncio.wait_for(run(200, b"A"), 60))
        mine = [p for _s, _seq, _ts, p in got if p[:1] == b"A"]
        assert mine == [b"A" + i.to_bytes(4, "little") for i in range(200)]
        seqs = [seq for _s, seq, _ts, _p in got]
        assert seqs == list(range(1, len(seqs) + 1))  # every record from seq 1, in order
        # a restarted gateway replays the whole stream but counts only its own new records
        got2 = asyncio.run(asyncio.wait_for(run(50, b"B"), 60))
        assert [p for *_x, p in got2 if p[:1] == b"A"] == mine
        assert len([p for *_x, p in got2 if p[:1] == b"B"]) == 50
