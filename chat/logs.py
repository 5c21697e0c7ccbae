"""Structured logs: one JSON object a line, with the request or connection id.

`context` carries the id of whatever the current task serves, so every line
logged while handling it names it. Nothing here ever logs a header, a body, a
password or a token: handlers pass only the fields they mean to show. Libraries
are less careful (at DEBUG, websockets logs every frame, `hello` and its token
included), so the handler also passes each line through `Redact`.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys
from typing import Any

# "req-1f2e" or "conn-42": set by app.py for the task that serves it.
context: contextvars.ContextVar[str | None] = contextvars.ContextVar("log_context", default=None)

_STANDARD = set(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName", "color_message"}
)


# A secret's value in a logged frame or body: `"token": "..."`, `"password":"..."` (JSON,
# perhaps inside a repr with escaped quotes), `token=...`, or an Authorization header.
_SECRET = re.compile(
    r"""(?P<key>(?:\\?["'])?(?:token|password|secret)(?:\\?["'])?\s*[:=]\s*)"""
    r"""(?:(?P<quote>\\?["']).*?(?=\\?["']|$)|[^\s,}&"']+)""",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>bearer\s+)(?P<value>[^\s\"',}]+)", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """`text` with the value of every token, password or bearer credential replaced."""
    if not any(word in text.lower() for word in ("token", "password", "secret", "bearer")):
        return text
    text = _SECRET.sub(lambda m: m["key"] + (m["quote"] or "") + REDACTED, text)
    return _BEARER.sub(lambda m: m["key"] + REDACTED, text)


class Redact(logging.Filter):
    """Blank out secrets in a record's message, whoever logged it, before any formatter runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = context.get()
        if ctx:
            out["ctx"] = ctx
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        ctx = context.get()
        line = f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        if ctx:
            line += f" [{ctx}]"
        if extras:
            line += " " + extras
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "INFO", fmt: str = "json") -> None:
    """Send every log line of the process, uvicorn's too, to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(Redact())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel("WARNING")
