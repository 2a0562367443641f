"""structlog set-up: ids bound per task, secrets redacted by a processor, handlers only at entry points."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"secret|signature|token|password|x-api-key|authorization", re.IGNORECASE)
REDACTED = "[redacted]"
# The password of a URL: scheme://[user]:<password>@host
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)\S+(?=@)", re.IGNORECASE)


def hide_credentials(text: str) -> str:
    """`text` with the password of every URL in it replaced (redis://user:pw@host -> redis://user:***@host)."""
    return _URL_PASSWORD.sub(r"\g<head>***", text)


def scrub_urls(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Hide URL passwords in every string of the event, including a rendered traceback."""
    return {k: _scrub(v) for k, v in event.items()}


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return hide_credentials(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(item) for item in value)
    return value


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Drop the value of any field whose name says it is a secret, at any depth."""
    return {k: _clean(k, v) for k, v in event.items()}


def _clean(key: str, value: Any) -> Any:
    if isinstance(key, str) and _SECRET_KEYS.search(key) and key != "event":
        return REDACTED
    if isinstance(value, dict):
        return {k: _clean(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clean("", item) for item in value)
    return value


SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    redact,
]


def json_output(fmt: str, stream: Any = None) -> bool:
    """Whether lines are JSON: `json`, or `auto` when the stream is not a terminal (a file, a pipe, a collector)."""
    if fmt == "auto":
        stream = stream if stream is not None else sys.stderr
        isatty = getattr(stream, "isatty", None)
        return not (isatty is not None and isatty())
    return fmt == "json"


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """Route structlog and stdlib logging (Celery's, uvicorn's, the libraries') through one pipeline to stderr."""
    renderer: Any = (structlog.processors.JSONRenderer() if json_output(fmt)
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[*SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                scrub_urls,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("urllib3").setLevel(logging.WARNING)
