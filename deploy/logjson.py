"""Structured logs: one JSON object per line, with the process, its stream and the seq.

A process verb whose environment has ``SEQEX_LOG_FORMAT=json`` (systemd units set it; `seqex
up` passes it on to its children when it has it) logs through ``JsonFormatter``:

    {"ts": "2026-12-02T16:40:01.123456Z", "level": "info", "process": "sequencer.BTCUSDT",
     "role": "sequencer", "stream": "in.ce.BTCUSDT", "seq": 1234, "logger": "seqex.master",
     "msg": "in.ce.BTCUSDT: ..."}

``process`` is the topology's name (``SEQEX_PROCESS``, set by the supervisor and the units;
else the replica's ``--name`` or the ``--key``), ``stream`` the process's stream (none for a
replicator, which stores them all, nor for the gateway and the oracle, which write several).
``seq`` is the record's ``seq`` attribute when the call passes one (``log.info(..., extra=
{"seq": n})``), else the first ``seq N`` the message names, else absent. An exception adds
``exc`` (its traceback, one string). Lines that a process prints (its "ready" line) stay
plain text: readers skip lines that do not start with ``{``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time

ENV = "SEQEX_LOG_FORMAT"
_SEQ = re.compile(r"\bseqs? (\d+)")


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str, role: str, stream: str = ""):
        super().__init__()
        self.context = {"process": process, "role": role}
        if stream:
            self.context["stream"] = stream

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        us = int(record.created * 1_000_000) % 1_000_000
        out: dict = {"ts": f"{ts}.{us:06d}Z",
                     "level": record.levelname.lower(), **self.context}
        seq = getattr(record, "seq", None)
        if seq is None:
            m = _SEQ.search(msg)
            seq = int(m.group(1)) if m else None
        if seq is not None:
            out["seq"] = seq
        out["logger"] = record.name
        out["msg"] = msg
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def wanted() -> bool:
    return os.environ.get(ENV, "").strip().lower() == "json"


def setup(verb: str, args) -> bool:
    """Switch the root logger's handlers to JSON lines if SEQEX_LOG_FORMAT=json."""
    if not wanted():
        return False
    process = os.environ.get("SEQEX_PROCESS") or getattr(args, "name", None) \
        or getattr(args, "key", None) or verb
    fmt = JsonFormatter(process, verb, getattr(args, "stream", None) or "")
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    for h in root.handlers:
        h.setFormatter(fmt)
    return True
