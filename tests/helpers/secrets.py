"""Planted credentials and the scanner that finds them in any blob, also encoded (JSON, base64)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

KEY_ID = "AKIATOPOZARRLEAKTEST"
SECRET = "SUPERSECRET-xyz-topozarr-0123456789abcdef"
NEEDLES = (SECRET, SECRET[:16], KEY_ID)


# -- the scanner ----------------------------------------------------------------------------------

def strings_in(doc) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield str(k)
            yield from strings_in(v)
    elif isinstance(doc, (list, tuple)):
        for v in doc:
            yield from strings_in(v)


def views(blob: bytes | str) -> Iterator[bytes]:
    """The blob, and what it decodes to: JSON strings, base64 payloads (e.g. pickled results)."""
    data = blob.encode() if isinstance(blob, str) else blob
    yield data
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return
    for s in strings_in(doc):
        yield s.encode()
        if len(s) >= 16:
            try:
                yield base64.b64decode(s, validate=True)
            except ValueError:
                pass


def leaks(blob: bytes | str) -> list[str]:
    found = []
    for view in views(blob):
        found += [n for n in NEEDLES if n.encode() in view]
    return sorted(set(found))
