"""`seqex gateway` as a process on 127.0.0.1, over a real log cluster. No TradingEngine runs
here: the shard's output stream is its input stream itself (an echo), which is enough for the
gateway to see its GatewayStart applied and start listening. Then: a wrong password gets
LogonReject(1) at once; a right one reaches the log as a SessionLogon record and, with no
engine to answer, LogonReject(6); SIGTERM ends the process with status 0."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from deploy.local import LogCluster
from deploy.procs import free_port
from gateway import accounts, wire
from mq.control import replay, wait_until
from mq.record import decode


def recv_frame(sock):
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    length = struct.unpack_from("<H", head)[0]
    body = b""
    while len(body) < length - 4:
        chunk = sock.recv(length - 4 - len(body))
        if not chunk:
            return None
        body += chunk
    frame, _ = wire.read_frame(head + body, 0)
    return frame.template_id, wire.decode(frame)


def logon(port, password):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(wire.encode(wire.LOGON, 5, 0, 1, 1000, 0, 0, 0, b"alice", password))
    return s


def refused_while_sending(port: int):
    """An asyncio client: a Logon with a wrong password, then up to 1.5 s of Heartbeats without
    reading, then what it reads. The gateway half-closes after its LogonReject and drops the
    input; closed with input unread, its socket answered the Heartbeats with a reset, the
    client's transport failed on its next write and the LogonReject it held was lost."""
    async def client():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(wire.encode(wire.LOGON, 5, 0, 1, 1000, 0, 0, 0, b"alice", b"wrong"))
        try:
            for i in range(150):
                w.write(wire.encode(wire.HEARTBEAT, 0, 2 + i, 1) * 4)
                await w.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            pass
        try:
            head = await asyncio.wait_for(r.readexactly(4), 30)
            body = await asyncio.wait_for(
                r.readexactly(struct.unpack_from("<H", head)[0] - 4), 30)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            return repr(exc)
        finally:
            w.close()
        frame, _ = wire.read_frame(head + body, 0)
        return frame.template_id, wire.decode(frame).Reason
    return asyncio.run(client())


def start_gateway(cluster: LogCluster, accounts_path, port: int, out_stream: str):
    """Gateway 2 on the cluster's stream in.te.0, reading out_stream for its answers."""
    config = {"index": 2, "listen": f"127.0.0.1:{port}", "accounts": str(accounts_path),
              "shards": [{"in": cluster.prod_addr, "pub": cluster.pub_addr,
                          "replicators": cluster.rep_addrs, "out_stream": out_stream}],
              "heartbeat_ms": 1000, "core_timeout_s": 1}
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", "--insecure", "gateway",
                             "--config", json.dumps(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_gateway_process(tmp_path):
    path = tmp_path / "accounts.json"
    accounts.add_user(path, "alice", "pw", [3], n=1024)
    with LogCluster(str(tmp_path / "log"), stream="in.te.0", replicators=1,
                    tick_ms=20) as cluster:
        cluster.start()
        port = free_port()
        proc = start_gateway(cluster, path, port, "in.te.0")
        try:
            deadline = time.monotonic() + 60
            while True:
                line = proc.stdout.readline()
                assert line, "the gateway exited before listening"
                if "listening on" in line:
                    break
                assert time.monotonic() < deadline
            s = logon(port, b"wrong")
            tid, m = recv_frame(s)
            assert (tid, m.Reason) == (wire.LOGON_REJECT, wire.LOGON_REJECT_BAD_CREDENTIALS)
            s.close()
            # six such clients at once, each still sending after its refusal
            with ThreadPoolExecutor(6) as pool:
                got = list(pool.map(refused_while_sending, [port] * 6))
            assert got == [(wire.LOGON_REJECT, wire.LOGON_REJECT_BAD_CREDENTIALS)] * 6, got
            s = logon(port, b"pw")
            tid, m = recv_frame(s)  # core_timeout_s: nothing answers SessionLogon
            assert (tid, m.Reason) == (wire.LOGON_REJECT, wire.LOGON_REJECT_NOT_OPEN)
            s.close()
            src = 0x7200_0002

            def kinds():
                return [(r[2], r[5]) for frame in replay(cluster.rep_addrs[0], "in.te.0", 1)
                        for r in decode(frame) if r[5] != 1]
            # the LogonReject goes out after core_timeout_s whether or not the SessionLogon is
            # committed yet: a replay serves committed records only
            wait_until(lambda: kinds()[:2] == [(src, 82), (src, 80)], 30,
                       f"GatewayStart and SessionLogon in the log (so far {kinds()[:4]})")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def test_gateway_stopped_while_starting_exits(tmp_path):
    """No engine applies its GatewayStart (nothing writes the output stream it reads), so the
    gateway never listens; SIGTERM still ends it, with status 0, not after a SIGKILL."""
    path = tmp_path / "accounts.json"
    accounts.add_user(path, "alice", "pw", [3], n=1024)
    with LogCluster(str(tmp_path / "log"), stream="in.te.0", replicators=1,
                    tick_ms=20) as cluster:
        cluster.start()
        proc = start_gateway(cluster, path, free_port(), "out.te.0")
        try:
            # its GatewayStart is in the log: the gateway is past connecting, waiting to start
            wait_until(lambda: proc.poll() is not None or [
                r for frame in replay(cluster.rep_addrs[0], "in.te.0", 1)
                for r in decode(frame) if r[2] == 0x7200_0002], 120, "GatewayStart in the log")
            assert proc.poll() is None, proc.stdout.read()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
            assert "listening on" not in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


ROUNDS = 8


def test_gateway_stops_on_sigterm_while_records_pour_in(tmp_path):
    """SIGTERM while a stream of records reaches the gateway's socket loop, ROUNDS times: each
    gateway exits with status 0 in bounded time. (On Python 3.11 asyncio.wait_for lost the
    loop's cancellation when SIGTERM came in the turn a record woke it, and the gateway
    waited for its loop for ever; gateway/aio.py.)"""
    path = tmp_path / "accounts.json"
    accounts.add_user(path, "alice", "pw", [3], n=1024)
    with LogCluster(str(tmp_path / "log"), stream="in.te.0", replicators=1,
                    tick_ms=20) as cluster:
        cluster.start()
        load = cluster.group.spawn("load", [
            "produce", "--sequencer", cluster.prod_addr, "--source", "9", "--count", "2000000",
            "--rate", "20000", "--batch", "1"])
        config = {"accounts": str(path),
                  "shards": [{"in": cluster.prod_addr, "pub": cluster.pub_addr,
                              "replicators": cluster.rep_addrs, "out_stream": "in.te.0"}],
                  "heartbeat_ms": 1000, "core_timeout_s": 1}
        for i in range(ROUNDS):
            gw = cluster.group.spawn(f"gateway{i}", [
                "--insecure", "gateway", "--config",
                json.dumps({**config, "index": 10 + i, "listen": f"127.0.0.1:{free_port()}"})])
            wait_until(lambda gw=gw: not gw.alive or "listening on" in gw.log(), 120,
                       f"gateway {i} listening")
            assert gw.alive, gw.log()
            assert load.alive, load.log()        # records are arriving as the signal comes
            gw.popen.send_signal(signal.SIGTERM)
            try:
                assert gw.popen.wait(30) == 0, gw.log()
            except subprocess.TimeoutExpired:
                raise AssertionError(f"gateway {i} still running 30 s after SIGTERM") from None
