"""Redaction: what must never reach a log, the audit ledger or an artifact. Secret-named fields,
passwords in URLs and bearer tokens are masked wherever a record or message is built from
outside data."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***redacted***"

_SECRET_KEY = re.compile(
    r"(^|[_\-. ])(password|passwd|pass|passphrase|secret|token|api[_\-]?key|apikey|"
    r"authorization|auth|credentials?|private[_\-]?key|cookie|dsn)([_\-. ]|$)",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):[^@/\s]+@")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-named fields, URL passwords and bearer tokens masked."""
    if isinstance(value, Mapping):
        return {
            str(key): REDACTED if _SECRET_KEY.search(str(key)) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set):
        return [redact(item) for item in value]
    if isinstance(value, str):
        masked = _URL_PASSWORD.sub(rf"\g<scheme>\g<user>:{REDACTED}@", value)
        return _BEARER.sub(f"Bearer {REDACTED}", masked)
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))
