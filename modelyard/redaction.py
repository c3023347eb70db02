"""Redaction: what must never reach a log, the audit ledger or an artifact. Secret-named fields,
credentials in URLs (a userinfo password, a token in the query string), ``name=secret`` pairs and
bearer/basic credentials in text are masked wherever a record or message is built from outside
data.

Which names are secret (``is_secret_name``): a name is cut into words (``accessToken`` →
access, token; ``X-Api-Key`` → x, api, key; ``MODELYARD_LEDGER_KEY`` → modelyard, ledger, key), and
it is secret when a word contains token, secret, password, passwd, passphrase, credential,
cookie, dsn or auth (not author), is ``pass``/``pwd``, or ends in ``key`` as the last word
(``api_key``, ``privateKey``, ``apikey``). Deliberately *not* secret, because the ledger and the
registry use them for facts that must stay readable: a bare ``key`` (a tag's or a toleration's
key), a key named by what it identifies (``model_key``, ``monitor_key``, ``sort_key``,
``public_key``…), a name where ``key`` is followed by another word (``key_id``,
``key_fingerprint``: about a key, not the key), ``author``, and token counts (``max_tokens``,
``prompt_tokens``…, ``tokenizer``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***redacted***"

# A word that names a secret wherever it appears in a name; "auth" but not author/authority, nor
# (un)authenticated (a count of rejected requests is not a secret).
_SECRET_PARTS = re.compile(r"token|secret|passw|passphrase|credential|cookie|dsn|auth(?!or(?!i[sz]))(?!entic)")
_SECRET_WORDS = frozenset({"pass", "pwd"})
# Query parameters that carry a credential in presigned URLs (S3 X-Amz-Signature, Azure sig);
# not secret as field names (an MLflow model's "signature" is its input schema).
_QUERY_SECRET_WORDS = frozenset({"sig", "signature"})
# A key named by what it identifies, not a secret: model_key, monitor_key, public_key …
_PLAIN_KEY_QUALIFIERS = frozenset({
    "model", "monitor", "sort", "primary", "partition", "cache", "idempotency", "dedupe", "dedup", "routing",
    "group", "stack", "foreign", "lookup", "row", "object", "public", "label", "tag", "dict", "map", "index",
    "hash", "shard", "composite", "unique", "natural", "surrogate", "bucket", "order", "join", "delivery",
})
# Names about tokens that count or split text (LLM parameters and usage), not credentials.
_TOKEN_COUNTS = re.compile(r"^((max|max_new|min|prompt|completion|total|input|output|num|n|cached|reasoning)_)?"
                           r"tokens(_count|_per_second|_per_s|_used)?$|^token_count$|^tokeni[sz](er|ation)")
_NOT_KEYS = frozenset({"monkey", "turkey", "hockey", "jockey", "whiskey", "donkey"})
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z]|[^A-Za-z]|$)|[A-Z]?[a-z]+|[0-9]+")


def name_words(name: str) -> list[str]:
    """``name`` cut into lowercase words at case changes, digits and any separator."""
    return [word.lower() for word in _WORD.findall(name)]


def is_secret_name(name: object, query: bool = False) -> bool:
    """Whether a field, header, variable (or, ``query``, a URL query parameter) of this name
    holds a secret."""
    words = name_words(str(name))
    if not words or _TOKEN_COUNTS.search("_".join(words)):
        return False
    if any(_SECRET_PARTS.search(word) or word in _SECRET_WORDS for word in words):
        return True
    if query and any(word in _QUERY_SECRET_WORDS for word in words):
        return True
    last = words[-1]
    if last in ("key", "keys"):
        return len(words) > 1 and words[-2] not in _PLAIN_KEY_QUALIFIERS
    return last.endswith("key") and last not in _NOT_KEYS


_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s?#]*):(?P<password>[^@/\s?#]+)@")
# https://<token>@host: a user part alone in an http URL is how tokens ride along (git remotes).
_URL_TOKEN_USER = re.compile(r"(?P<scheme>\bhttps?://)(?P<user>[^:/@\s?#]+)@", re.IGNORECASE)
_QUERY_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&#\s?;]+)=(?P<value>[^&#\s\"'<>;]*)")
_AUTH_HEADER = re.compile(r"(?i)(?P<name>\b(?:proxy-)?authorization)(?P<sep>\s*[:=]\s*|[\"']\s*:\s*[\"'])"
                          r"(?:(?P<scheme>bearer|basic|digest|token|negotiate)\s+)?(?P<value>[^\s\"',;}]+)")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")
# name=value and "name": "value" in free text (an error message quoting a command or a config).
_TEXT_PAIR = re.compile(r"(?P<name>\b[A-Za-z_][A-Za-z0-9_.-]*)(?P<sep>\s*=\s*[\"']?|[\"']\s*:\s*[\"']|\s*:\s+[\"']?)"
                        r"(?P<value>[^\s,;&\"'}]+)")
_SCHEMES = frozenset({"bearer", "basic", "digest", "token", "negotiate"})


def _mask_pair(match: re.Match) -> str:
    value = match["value"]
    if value == REDACTED or value.lower() in _SCHEMES or not is_secret_name(match["name"]):
        return match[0]
    return match[0][: match.start("value") - match.start()] + REDACTED


def _mask_query(match: re.Match) -> str:
    if not match["value"] or match["value"] == REDACTED or not is_secret_name(match["name"], query=True):
        return match[0]
    return f"{match['lead']}{match['name']}={REDACTED}"


def _mask_header(match: re.Match) -> str:
    scheme = f"{match['scheme']} " if match["scheme"] else ""
    return f"{match['name']}{match['sep']}{scheme}{REDACTED}"


def redact_text(text: str) -> str:
    """``text`` with URL passwords and tokens, secret ``name=value`` pairs and bearer/basic
    credentials masked."""
    masked = _URL_USERINFO.sub(rf"\g<scheme>\g<user>:{REDACTED}@", text)
    masked = _URL_TOKEN_USER.sub(lambda m: m[0] if m["user"] == REDACTED else f"{m['scheme']}{REDACTED}@", masked)
    masked = _QUERY_PARAM.sub(_mask_query, masked)
    masked = _AUTH_HEADER.sub(_mask_header, masked)
    masked = _BEARER.sub(f"Bearer {REDACTED}", masked)
    return _TEXT_PAIR.sub(_mask_pair, masked)


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-named fields masked, and credentials in its text."""
    if isinstance(value, Mapping):
        # None and booleans say whether something is set or on (``auth_enabled``), never what it is.
        return {str(key): REDACTED if is_secret_name(key) and not (item is None or isinstance(item, bool))
                else redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))
