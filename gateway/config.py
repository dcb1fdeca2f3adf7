"""The `--config` argument of the gateway's processes: a JSON object, or the path of a file
holding one. ValueError names what is wrong in one line."""
from __future__ import annotations

import json


def json_object(text: str, what: str) -> dict:
    """The JSON object ``text`` holds, or the one in the file it names."""
    src = text
    if not text.lstrip().startswith(("{", "[")):
        try:
            with open(text, encoding="utf-8") as f:
                src = f.read()
        except OSError as exc:
            raise ValueError(f"{what} {text}: {exc.strerror}") from None
    try:
        doc = json.loads(src)
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{what} must be a JSON object")
    return doc
