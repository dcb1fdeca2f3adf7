"""Reserved source ids: who may put a record into a stream is in the record (DESIGN.md §8).

A record's header carries its source id (u32). The ids from OPERATOR_SOURCE_MIN up are the
operator's: the sequencers take records with such an id only from the operator key
(mq/auth.py), so an engine that sees one knows, deterministically, that the operator sent it.
Engines reject operator-only commands (HALT, RESUME, MassCancel, deposits, withdrawals) from
any other source. Pure constants: state machines import this module.
"""
from __future__ import annotations

OPERATOR_SOURCE_MIN = 0xFFFF_0000    # operator sources: OPERATOR_SOURCE_MIN .. 2**32-1
OPERATOR_SOURCE = 0xFFFF_FFFE        # the one `seqex` operator tools use by default


def is_operator(source: int) -> bool:
    return OPERATOR_SOURCE_MIN <= source < 1 << 32
