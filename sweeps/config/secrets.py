"""Passwords out of everything that is printed or logged: a storage or tracking URL can carry one.
"""

from __future__ import annotations

import re
from typing import Any

_URL_PASSWORD_RE = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*):(?P<pw>[^\s/]*)@")


_QUERY_SECRET_RE = re.compile(r"(?P<key>[?&;](?:password|passwd|pwd|token|secret|api_key|access_token)=)[^&;\s]*", re.I)


def mask_secrets(text: str) -> str:
    """Replace passwords in URLs (``scheme://user:pw@host`` and ``?password=``-style query parameters) with ``***``,
    so a resolved config or an error message can be logged."""
    text = _URL_PASSWORD_RE.sub(lambda m: f"{m.group('head')}:***@", text)
    return _QUERY_SECRET_RE.sub(lambda m: f"{m.group('key')}***", text)


def _mask_tree(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _mask_tree(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_mask_tree(v) for v in data]
    return mask_secrets(data) if isinstance(data, str) else data
