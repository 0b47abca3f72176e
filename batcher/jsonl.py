"""JSON encoding for request bodies, results and logs, kept in one place so it can be swapped."""

from __future__ import annotations

import json
from typing import Any

loads = json.loads
JSONDecodeError = json.JSONDecodeError


def dumps(value: Any, *, ascii_only: bool = False) -> str:
    """Encode compactly, keeping non-ASCII characters readable unless `ascii_only` escapes them."""
    return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"))
