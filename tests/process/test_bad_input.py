"""Bad input from the network never kills a log process: a live replicator and sequencer are
sent random parts, undecodable bodies, fields of the wrong type and malformed frames; each
answers ERROR (or ignores what it cannot answer), still answers PING, and the log still
sequences, replicates and replays records correctly afterwards."""
import random

import pytest
import zmq

from deploy.local import LogCluster
from mq import wire
from mq.control import ping, replay, wait_until
from mq.producer import Producer
from mq.record import decode, encode, pack

SEED = 99


def garbage_messages(rng: random.Random) -> list[list[bytes]]:
    good_frame = encode([(1, 1, 1, 1, 1, 16, b"x")])
    msgs = [[b""], [wire.APPEND], [wire.APPEND, b"\xc1"], [wire.APPEND, wire.pack([1, 2])],
            [wire.APPEND, wire.pack({"stream": 5, "epoch": "x"}), good_frame],
            [wire.APPEND, wire.pack({"stream": "s", "epoch": 1}), good_frame[:-1]],
            [wire.APPEND, wire.pack({"stream": "", "epoch": 1}), good_frame],
            [wire.REPLAY, wire.pack({"stream": "s", "from": "a"})],
            [wire.REPLAY, wire.pack({"stream": "s", "from": 1, "to": "z", "max_bytes": "q"})],
            [wire.STATE, wire.pack({})], [wire.HELLO, wire.pack({"src": None})],
            [wire.DATA, b"\x80", b"\x00" * 37], [wire.DATA, b"\x80", pack(3, 1, 1, [b"a"])[:-1]],
            [wire.DATA, b"\x80"], [b"NOPE", b"\x80"], [wire.PING, b"\xff" * 20],
            [wire.APPEND, wire.pack({"stream": "s", "epoch": 1}), b"\xff" * (1 << 16)]]
    for _ in range(200):
        msgs.append([rng.randbytes(rng.randint(0, 12)) for _ in range(rng.randint(1, 4))])
    return msgs


@pytest.mark.timeout(300)
def test_log_processes_survive_garbage(tmp_path):
    rng = random.Random(SEED)
    with LogCluster(str(tmp_path), replicators=1, policy="first") as cluster:
        cluster.start()
        ctx = zmq.Context.instance()
        for addr in (cluster.rep_addrs[0], cluster.prod_addr):
            sock = ctx.socket(zmq.DEALER)
            sock.connect(addr)
            for msg in garbage_messages(rng):
                sock.send_multipart(msg)
            sock.close(linger=10_000)  # deliver everything queued before closing
            # The garbage reaches the handlers and is refused there, and the server answers
            # (a ping on another connection may overtake the garbage: wait for both).
            wait_until(lambda addr=addr: (lambda st: st and st.get("errors", 0)
                                          + st.get("bad_batches", 0) > 0)(ping(addr)),
                       30, f"{addr} to refuse the garbage and keep answering")
        prod = Producer(1, cluster.prod_addr)
        prod.connect()
        prod.submit(16, [b"r%d" % i for i in range(100)])
        prod.flush()
        prod.close()
        def replayed():
            recs = [r for f in replay(cluster.rep_addrs[0], cluster.stream) for r in decode(f)]
            return [r[6] for r in recs if r[2] == 1]
        # replay serves committed records; the replicator learns the commit point shortly
        wait_until(lambda: len(replayed()) >= 100, 30, "the records to be replayable")
        assert replayed() == [b"r%d" % i for i in range(100)]
        for proc in cluster.replicators + [cluster.sequencer]:
            assert proc.alive, proc.log()[-2000:]
