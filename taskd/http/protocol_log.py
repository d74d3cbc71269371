"""Requests aiohttp cannot parse (bytes that are not HTTP): one log line each, never a traceback.

aiohttp answers them itself with a 400 before any taskd code runs, and logs each one on
`aiohttp.server` with a traceback at ERROR; anyone who can connect could fill the log that way.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

SERVER_LOGGER = "aiohttp.server"


class MalformedRequestFilter(logging.Filter):
    """Turns aiohttp's traceback for an unparsable request into one INFO line naming the problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; every record is kept."""
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            # The class names the problem; its message would repeat the caller's bytes.
            record.msg = "malformed HTTP request refused with %s (%s)"
            record.args = (error.code, type(error).__name__)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


_FILTER = MalformedRequestFilter()


def install() -> None:
    """Add the filter to aiohttp's server logger (once, however many apps are made)."""
    logging.getLogger(SERVER_LOGGER).addFilter(_FILTER)
