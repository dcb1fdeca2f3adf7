"""Operating faults of a replicator heal by themselves or fail loudly (real processes).

1. Disk full. A replicator whose data lives on a small tmpfs that fills up logs one line
   ("disk full at PATH: N bytes free"), does not crash or restart, refuses and does not
   acknowledge writes (so the master's commit point stops under policy `all`: backpressure),
   and resumes by itself once there is room; afterwards both replicators hold the same log.
   Skipped, with the reason, where tmpfs cannot be mounted.
2. LMDB-level corruption. 64 KiB overwritten in the middle of a stopped replicator's
   data.mdb, damaging LMDB's own pages: at start the integrity check finds it, the file is
   quarantined (renamed data.mdb.corrupt-<time>), the replicator starts empty, serves nothing
   from the damaged file, and rebuilds the stream from its peer by the normal catch-up.
"""
from __future__ import annotations

import glob
import os
import random
import subprocess
import sys

import pytest

from deploy.local import LogCluster
from mq.control import ping, replay, stats, wait_until
from tests.process.test_log_processes import producer_args


def stream_last(addr: str, stream: str) -> int:
    stats = ping(addr) or {}
    return stats.get("streams", {}).get(stream, {}).get("last", -1)


class SmallDiskCluster(LogCluster):
    """Replicator 1 keeps its data on `disk`; the rest of the cluster under root."""

    def __init__(self, root: str, disk: str, **kw):
        super().__init__(root, **kw)
        self.disk = disk

    def data_dir(self, i: int) -> str:
        return os.path.join(self.disk, "replicator1") if i == 1 else super().data_dir(i)


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.mark.timeout(600)
def test_replicator_on_a_full_disk_refuses_without_crashing_and_resumes(tmp_path, tmpfs):
    tmp = str(tmp_path)
    with SmallDiskCluster(tmp, tmpfs, replicators=2, policy="all") as cluster:
        cluster.start()
        rep = cluster.replicators[1]
        pid = rep.popen.pid
        producer = cluster.group.spawn("producer1", producer_args(cluster, tmp, 1, 2_000, 0))
        assert producer.wait(120) == 0, producer.log()
        # Leave about 256 KiB: the next records fill the disk.
        ballast = os.path.join(tmpfs, "ballast")
        with open(ballast, "wb") as f:
            f.write(b"\0" * max(0, free_bytes(tmpfs) - (256 << 10)))
        producer = cluster.group.spawn("producer2", producer_args(cluster, tmp, 2, 30_000, 5_000))
        wait_until(lambda: (ping(cluster.rep_addrs[1]) or {}).get("disk_full"), 120,
                   "replicator 1 to find its disk full")
        held = stream_last(cluster.rep_addrs[1], cluster.stream)
        # It refuses and does not acknowledge: under `all` nothing more commits.
        wait_until(lambda: (ping(cluster.rep_addrs[1]) or {}).get("disk_full_refusals", 0) > 3,
                   60, "writes to be refused")
        # Once every DISK_RETRY_S one batch is tried, and may go through on a full disk (LMDB
        # reuses its file's pages): then it says so, and a later failure logs "disk full" again.
        now = stream_last(cluster.rep_addrs[1], cluster.stream)
        log = rep.log()
        resumed = log.count("writing resumed")
        if not resumed:
            assert now == held
        assert producer.alive, "every record was acknowledged while a replicator was full"
        assert rep.alive and rep.popen.pid == pid, rep.log()[-3000:]
        assert log.count("disk full at") in (resumed, resumed + 1) and \
            log.count("disk full at") >= 1, log[-3000:]
        assert "bytes free" in log and "Traceback" not in log
        os.unlink(ballast)   # room again: it resumes by itself
        assert producer.wait(300) == 0, producer.log()
        cluster.drain()
        top = stream_last(cluster.rep_addrs[0], cluster.stream)
        wait_until(lambda: stream_last(cluster.rep_addrs[1], cluster.stream) == top, 120,
                   "replicator 1 to hold everything")
        st = stats(cluster.rep_addrs[1])
        assert not st["disk_full"]
        assert "has room again" in rep.log()
        assert rep.alive and rep.popen.pid == pid
        cluster.stop()
    logs = cluster.read_logs()
    assert logs[0] == logs[1]
    assert logs[0][0] >= 32_000


def damage_lmdb_pages(path: str, seed: int) -> int:
    """Overwrite 64 KiB of data.mdb with random bytes, starting in the middle of the file and
    moving on until LMDB's own structure is hit (a child process's check says so); returns
    the offset. Damage that only hits frame bytes is the CRC repair's case, tested apart."""
    rng = random.Random(seed)
    name = os.path.join(path, "data.mdb")
    size = os.path.getsize(name)
    span = 64 << 10
    starts = list(range(size // 2 // 4096 * 4096, size - span, 4096))
    starts += list(range(2 * 4096, size // 2, 4096))
    for start in starts:
        with open(name, "r+b") as f:
            f.seek(start)
            original = f.read(span)
            f.seek(start)
            f.write(rng.randbytes(span))
        check = subprocess.run([sys.executable, "-m", "replicator.integrity", path],
                               capture_output=True)
        if check.returncode not in (0, 4):
            return start
        with open(name, "r+b") as f:
            f.seek(start)
            f.write(original)
    raise AssertionError("no 64 KiB span damages LMDB's structure")


@pytest.mark.timeout(600)
def test_corrupt_lmdb_file_is_quarantined_and_rebuilt_from_the_peer(tmp_path):
    tmp = str(tmp_path)
    with LogCluster(tmp, replicators=2, policy="first") as cluster:
        cluster.start()
        producer = cluster.group.spawn("producer1", producer_args(cluster, tmp, 1, 20_000, 0))
        assert producer.wait(120) == 0, producer.log()
        cluster.drain()
        top = stream_last(cluster.rep_addrs[1], cluster.stream)
        wait_until(lambda: stream_last(cluster.rep_addrs[0], cluster.stream) == top, 60,
                   "equal replicators")
        cluster.replicators[0].stop()
        offset = damage_lmdb_pages(cluster.data_dir(0), seed=17)
        print(f"64 KiB overwritten at offset {offset}")
        cluster.restart_replicator(0)
        wait_until(lambda: stream_last(cluster.rep_addrs[0], cluster.stream) == top, 120,
                   f"replicator 0 to rebuild {top} records from its peer")
        st = stats(cluster.rep_addrs[0])
        assert st.get("quarantined") == 1, "the damaged file was not quarantined"
        assert st["caught_up_records"] == top
        served = [b"".join(replay(addr, cluster.stream, 1, top)) for addr in cluster.rep_addrs]
        assert served[0] == served[1], "replicator 0 serves other bytes than its peer"
        log = cluster.replicators[0].log()
        assert log.count("LMDB file corrupt at") == 1, log[-3000:]
        assert "Traceback" not in log
        assert glob.glob(os.path.join(cluster.data_dir(0), "data.mdb.corrupt-*"))
        cluster.stop()
    logs = cluster.read_logs()
    assert logs[0] == logs[1]
