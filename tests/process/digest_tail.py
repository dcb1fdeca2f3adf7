"""A subscriber for the process tests that checks what it is given and keeps the bytes' digest.

    python -m tests.process.digest_tail STREAM PUB OUT REPLICATOR...

It follows STREAM from seq 1 (mq.subscriber.Subscriber: live feed from PUB, gaps and the
start replayed from the replicators) and appends one line per record to OUT:
``seq source source_seq epoch digest``, where digest is a BLAKE2b of the whole record as
decoded (seq, ts, source, source_seq, epoch, kind, payload, route). It exits with status 3 as
soon as a delivered record does not continue the stream (a gap or a repeat), so a test sees
contiguity from this side too; SIGTERM ends it cleanly.
"""
from __future__ import annotations

import hashlib
import signal
import sys


def record_digest(rec: tuple) -> str:
    return hashlib.blake2b(repr(tuple(rec)).encode(), digest_size=12).hexdigest()


def main(argv: list[str]) -> int:
    from mq.record import decode
    from mq.subscriber import Subscriber
    stream, pub, out_path, *reps = argv
    sub = Subscriber(stream, pub, reps, 1)
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    want = 1
    with open(out_path, "a") as out:
        while running[0]:
            for first, last, frame in sub.poll(200):
                recs = decode(frame)
                seqs = [r[0] for r in recs]
                if first != want or seqs != list(range(first, last + 1)):
                    print(f"not contiguous: wanted {want}, got {first}..{last} "
                          f"({seqs[:3]}...)", flush=True)
                    return 3
                out.write("".join(f"{r[0]} {r[2]} {r[3]} {r[4]} {record_digest(r)}\n"
                                  for r in recs))
                out.flush()
                want = last + 1
    sub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
