"""JSON encoding for request bodies, results and logs, kept in one place so it can be swapped."""

from __future__ import annotations

import json
from typing import Any

loads = json.loads
JSONDecodeError = json.JSONDecodeError


def dumps(value: Any) -> str:
    """Encode compactly as UTF-8 text, keeping non-ASCII characters readable."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
