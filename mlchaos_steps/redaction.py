"""One redactor for every string that leaves the process: ledger, journal, MLflow params and tags,
verdict reasons, error messages and logs.

It knows secrets by where they sit and by their shape:
- mapping keys and environment names that say secret (``password``, ``token``, ``DATABASE_URL``,
  ``SENTRY_DSN``, ``SLACK_WEBHOOK_URL``, ``GITHUB_PAT``, ``AWS_ACCESS_KEY_ID``...): the whole value;
- argument lists: the value after a secret-naming flag (``--password X``, ``--api-key X``) and
  ``--token=X``;
- inside any text: credentials in URLs (``scheme://user:pass@``, ``scheme://key@`` as in DSNs),
  ``Authorization: Bearer|Basic|Token ...``, ``name=value`` / ``name: value`` pairs whose name says
  secret, and token shapes with a known prefix (GitHub, GitLab, Slack tokens and webhooks, AWS key
  ids, OpenAI/Anthropic/Stripe/Hugging Face/PyPI/npm tokens, JWTs, private key blocks).

Shapes follow the public rule sets of secret scanners (gitleaks, GitHub secret scanning). detect-secrets
was measured for this and not used: about 4 ms per line here, and it returns only ``ghp`` as the
value of a GitHub token, so the token itself would not be redacted.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"

SECRET_NAME = re.compile(
    r"(secret|token|passw|pwd|credential|api[_-]?key|apikey|private[_-]?key|auth|dsn|webhook|(^|[_-])pat($|[_-])|"
    r"access[_-]?key|session[_-]?key|cookie|signature|database[_-]?url|connection[_-]?string|client[_-]?secret)",
    re.IGNORECASE)

# Every repetition is bounded: an unbounded one before a literal makes a long run of word characters
# (a 20 kB value) cost quadratic time.
_WORDS = (r"(?:secret|token|passw(?:or)?d?|pwd|credential|api[_-]?key|apikey|private[_-]?key|access[_-]?key|"
          r"auth[_-]?key|client[_-]?secret|dsn)")
_SECRET_WORDS = r"(?:(?<![\w.-])[\w.-]{0,40}?" + _WORDS + r"[\w.-]{0,40})"
_TEXT_RULES: list[tuple[re.Pattern[str], str]] = [
    # -----BEGIN ... PRIVATE KEY----- blocks
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL),
     "-----BEGIN PRIVATE KEY-----" + REDACTED),
    # credentials in URLs: scheme://user:pass@host, scheme://token@host (DSNs)
    (re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]{0,30}://)(?P<user>[^/\s:@'\"]{1,256}):(?P<pw>[^/\s@'\"]{1,256})@"),
     r"\g<scheme>\g<user>:" + REDACTED + "@"),
    (re.compile(r"(?P<scheme>\bhttps?://)(?P<key>[A-Za-z0-9_-]{16,256})@"), r"\g<scheme>" + REDACTED + "@"),
    # Authorization headers
    (re.compile(r"\b(Bearer|Basic|Token|Bot)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE), r"\1 " + REDACTED),
    # name=value, name: value, "name": "value", with a secret-naming name
    (re.compile(r"(?P<name>[\"']?" + _SECRET_WORDS + r"[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"',;&]+)",
                re.IGNORECASE), r"\g<name>" + REDACTED),
    # token shapes with a known prefix
    (re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,}|"
                r"xox[abposr]-[A-Za-z0-9-]{10,}|(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA)[A-Z0-9]{16}|"
                r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|hf_[A-Za-z0-9]{20,}|"
                r"pypi-[A-Za-z0-9_-]{20,}|npm_[A-Za-z0-9]{30,}|AIza[0-9A-Za-z_-]{30,}|"
                r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"), REDACTED),
    (re.compile(r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]+"),
     "https://hooks.slack.com/" + REDACTED),
    (re.compile(r"https://discord(?:app)?\.com/api/webhooks/[0-9]+/[A-Za-z0-9_-]+"),
     "https://discord.com/api/webhooks/" + REDACTED),
]
_SECRET_FLAG = re.compile(r"^--?[\w.-]{0,40}?" + _WORDS + r"[\w.-]{0,40}$", re.IGNORECASE)


def redact_text(text: str) -> str:
    """The text with every secret shape it holds replaced by ``***``."""
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


def _redact_arguments(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    hide_next = False
    for value in values:
        if hide_next and isinstance(value, str):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = isinstance(value, str) and bool(_SECRET_FLAG.match(value))
        out.append(redact(value))
    return out


def redact(value: Any) -> Any:
    """Redact a structure: secret-named keys lose their values, argument lists the value after a secret
    flag, and every string its secret shapes. Other values pass through unchanged."""
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and SECRET_NAME.search(k) and v not in (None, "")
                    and not isinstance(v, bool | int | float) else redact(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return _redact_arguments(list(value))
    if isinstance(value, str):
        return redact_text(value)
    return value


class RedactingFilter:
    """A logging filter: the message of every record, arguments merged, is redacted."""

    def filter(self, record: Any) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: leave it to logging
            return True
        record.msg, record.args = redact_text(message), None
        return True
