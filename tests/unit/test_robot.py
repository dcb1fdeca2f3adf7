"""The demo's trading robot (deploy/robot.py) against the scripted fake gateway of
test_gateway_client: when the gateway goes away (a restart, a failover drill) each robot user
logs on again as a new session and the robot trades on; it used to write into the dead socket
for ever (acked/s at 0, the log filling with asyncio's warnings)."""
from __future__ import annotations

import asyncio

from deploy.robot import Robot, Symbol
from tests.unit.test_gateway_client import FakeServer


async def _until(cond, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.02)


def test_the_robot_logs_on_again_when_the_gateway_goes_away():
    async def main():
        srv = FakeServer()
        port = await srv.start()
        robot = Robot("127.0.0.1", port, [("alice", "pw", [2])],
                      [Symbol("BTCUSDT", 1, 50_000_000, 100_000)], rate=200, seed=3)
        await robot.connect()
        trading = asyncio.get_running_loop().create_task(robot.run())
        try:
            await _until(lambda: robot.stats.acked >= 20)
            for w in list(srv.writers):          # the gateway goes away
                w.transport.abort()
            acked = robot.stats.acked
            await _until(lambda: robot.stats.relogons == 1 and robot.stats.acked >= acked + 20)
            assert len(srv.logons) == 2 and srv.logons[0][0] != srv.logons[1][0]  # a new session
            assert srv.logons[1][2] == 1                  # its SeqNos start again at 1
            assert any("logging on again" in e for e in robot.errors)
        finally:
            robot.running = False
            await asyncio.gather(trading, return_exceptions=True)
            await robot.close()
            await srv.stop()
    asyncio.run(main())
