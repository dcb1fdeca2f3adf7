"""The gateway: seqex's binary client protocol (PROTOCOL.md) over TCP, in front of the
TradingEngines (docs/order-path.md §4, docs/gateway.md).

wire      the protocol's layouts, framing and codecs (shared with the client SDK)
accounts  the accounts file: users, scrypt hashes, accounts, throttles
server    the asyncio order-entry server against a Core
mq_core   the Core over mq/ streams (in.te.N producers, out.te.N subscribers)
"""
