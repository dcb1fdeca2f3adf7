"""Replica snapshot files: written atomically and checksummed; a damaged, truncated or foreign
file is never restored from; only the last K are kept."""
import os

from mq.replica import read_snapshot, write_snapshot


def test_round_trip_and_keep_last_k(tmp_path):
    d = str(tmp_path)
    for seq in (10, 20, 30, 40):
        write_snapshot(d, "in.ce.X", seq, b"state-%d" % seq, keep=2)
    names = sorted(os.listdir(d))
    assert names == ["in.ce.X-00000000000000000030.snap", "in.ce.X-00000000000000000040.snap"]
    assert read_snapshot(os.path.join(d, names[-1])) == (40, b"state-40")
    assert not any(n.endswith(".tmp") for n in names)


def test_damaged_truncated_or_foreign_files_are_refused(tmp_path):
    path = write_snapshot(str(tmp_path), "s", 7, b"x" * 1000, keep=3)
    data = open(path, "rb").read()
    for bad in (data[:-1], data[:20], data[:-5] + b"yyyyy", b"NOTASNAP" + data[8:], data + b"!"):
        with open(path, "wb") as f:
            f.write(bad)
        assert read_snapshot(path) is None
    assert read_snapshot(str(tmp_path / "missing.snap")) is None
