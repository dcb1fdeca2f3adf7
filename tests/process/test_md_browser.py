"""The publisher's page in a real browser: headless Chromium (Debian's package, driven by
Playwright with executable_path) opens the page served by the publisher while a CrossEngine's
records flow into it; the book and the trades on the page equal the engine's at the seq the
page shows; the page keeps updating. A screenshot is kept as a test artifact (pytest's tmp
dir, `md_page.png`; also copied to $SEQEX_ARTIFACTS when that is set)."""
from __future__ import annotations

import asyncio
import os
import shutil
import threading
from decimal import Decimal

import pytest

from gateway.marketdata.publisher import Publisher
from tests.mdload import LocalEngine

CHROMIUM = os.environ.get("SEQEX_CHROMIUM", "/usr/bin/chromium")
T0 = 1_800_000_000 * 10 ** 9
TICK, LOT = Decimal("0.5"), Decimal("0.001")
CONF = {"feed": "127.0.0.1:0", "http": "127.0.0.1:0", "replicators": [],
        "symbols": [{"symbol": "BTCUSDT", "symbol_id": 1, "tick": "0.5", "lot": "0.001"}]}

playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="the playwright package is not installed")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)",
                allow_module_level=True)


class Venue:
    """The publisher and a CrossEngine feeding it, on an event loop in a thread."""

    def __init__(self):
        self.engine = LocalEngine(seed=7)
        self.flowing = threading.Event()
        self.flowing.set()
        self.idle = threading.Event()
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),),
                                       daemon=True)
        self.stop = None
        self.error = None

    async def _main(self):
        try:
            self.pub = Publisher(CONF)
            await self.pub.start(follow=False)
            self.stop = asyncio.Event()
            for i in range(400):     # a book and some trades before the page opens
                self.pub.apply("BTCUSDT", *self.engine.step(T0 + i * 10 ** 8))
            self.ready.set()
            i = 400
            while not self.stop.is_set():
                if self.flowing.is_set():
                    for _ in range(5):
                        i += 1
                        self.pub.apply("BTCUSDT", *self.engine.step(T0 + i * 10 ** 8))
                else:
                    self.idle.set()     # no record after this until the test says so
                await asyncio.sleep(0.01)
            await self.pub.close()
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            raise

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(30) and self.error is None, self.error
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


READ_PAGE = """() => {
  const rows = (id) => [...document.querySelectorAll(`#${id} tr`)].map(
      (r) => [r.dataset.p, r.dataset.q]);
  return {seq: Number(document.getElementById("book").dataset.seq),
          asks: rows("asks"), bids: rows("bids"),
          tradeSeq: Number(document.getElementById("trades").dataset.seq),
          trades: [...document.querySelectorAll("#tradelist tr")].map(
              (r) => [Number(r.dataset.t), r.dataset.p, r.dataset.q]),
          last: (document.getElementById("last") || {}).textContent};
}"""


def _expected(engine: LocalEngine, seq: int, newest_trade: int) -> tuple:
    """The engine's top 15 levels a side at `seq`, and its last 30 trades up to the page's
    newest (one message per trade: the page may hold a record's first trades only)."""
    book = engine.books[seq]
    asks = [[str(TICK * p), str(LOT * q)] for p, q, _n in book["asks"][:15]][::-1]
    bids = [[str(TICK * p), str(LOT * q)] for p, q, _n in book["bids"][:15]]
    trades = [t for t in engine.trades if t[1] <= newest_trade][-30:][::-1]
    return asks, bids, [[tid, str(TICK * p), str(LOT * q)] for _s, tid, p, q in trades]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_page_shows_the_engines_book_and_trades_live(tmp_path):
    with Venue() as venue, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.goto(f"http://127.0.0.1:{venue.pub.http_port}/?symbol=BTCUSDT")
            page.wait_for_function("Number(document.getElementById('book').dataset.seq) > 0 "
                                   "&& document.querySelectorAll('#tradelist tr').length > 0",
                                   timeout=120_000)
            # while orders flow: every sample is the engine's book at the seq the page shows
            checked = 0
            for _ in range(8):
                seen = page.evaluate(READ_PAGE)
                asks, bids, trades = _expected(venue.engine, seen["seq"], seen["trades"][0][0])
                assert (seen["asks"], seen["bids"]) == (asks, bids), seen["seq"]
                assert seen["trades"] == trades, seen["tradeSeq"]
                trade_seq = next(t[0] for t in venue.engine.trades if t[1] == trades[0][0])
                assert trade_seq <= seen["tradeSeq"]
                checked += 1
                # the page moves on by itself
                page.wait_for_function(
                    f"Number(document.getElementById('book').dataset.seq) > {seen['seq']}",
                    timeout=120_000)
            # stop the flow: the page settles on the engine's last seq, book and trades
            venue.flowing.clear()
            assert venue.idle.wait(120)
            last = venue.engine.seq
            books = venue.engine.books
            last_change = max(s for s in books if books[s] != books.get(s - 1))
            last_trade = venue.engine.trades[-1]
            # the last record's depth, trades and ticker messages have all arrived
            page.wait_for_function(
                f"Number(document.getElementById('book').dataset.seq) >= {last_change} && "
                f"Number(document.querySelector('#tradelist tr').dataset.t) === {last_trade[1]}"
                f" && (document.getElementById('last') || {{}}).textContent === "
                f"'{TICK * last_trade[2]}'", timeout=120_000)
            seen = page.evaluate(READ_PAGE)
            asks, bids, trades = _expected(venue.engine, last, last_trade[1])
            assert (seen["asks"], seen["bids"]) == (asks, bids)
            assert seen["trades"] == trades
            assert seen["last"] == trades[0][1]
            shot = tmp_path / "md_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000 and checked == 8
            if os.environ.get("SEQEX_ARTIFACTS"):
                os.makedirs(os.environ["SEQEX_ARTIFACTS"], exist_ok=True)
                shutil.copy(shot, os.environ["SEQEX_ARTIFACTS"])
        finally:
            browser.close()
