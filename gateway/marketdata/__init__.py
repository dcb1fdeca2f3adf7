"""The market-data publisher (docs/marketdata.md): out.ce.SYM in; the binary feed of
PROTOCOL.md §6, a WebSocket JSON feed, HTTP snapshots and a live page out."""
