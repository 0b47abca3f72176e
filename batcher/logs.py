"""structlog configuration: JSON lines to the run's log file, and a copy on stderr."""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import Any, TextIO

import structlog

from batcher.jsonl import dumps
from batcher.redact import Redactor

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class LogSinks:
    """Writes each event as one JSON line to the log file, and a copy to stderr.

    On a terminal, stderr gets structlog's readable console format. Elsewhere (cron, CI, a
    redirect) it gets the file's JSON lines, with no colour and no carriage return. The file is
    always UTF-8. Where stderr's encoding cannot hold every character (a Latin-1 locale, or the
    C locale with Python's UTF-8 mode off), its JSON lines escape non-ASCII as `\\uXXXX`,
    because the stream's own replacement (`\\xe9`) would make them invalid JSON.
    """

    def __init__(
        self,
        *,
        stderr: TextIO,
        show_progress: bool = True,
        stderr_level: str = "info",
        file_level: str = "info",
    ) -> None:
        self._file: TextIO | None = None
        self._stderr = stderr
        self._stderr_level = _LEVELS[stderr_level]
        self._file_level = _LEVELS[file_level]
        self._is_tty = stderr.isatty()
        self._stderr_ascii_only = not _encodes_all_unicode(getattr(stderr, "encoding", None))
        self._console = structlog.dev.ConsoleRenderer(colors=self._is_tty) if self._is_tty else None
        self.redactor = Redactor()
        # The terminal's progress bar, cleared before a log line is printed and redrawn after.
        self.progress: Any = None
        self.show_progress = show_progress and self._is_tty
        self.min_level = min(self._stderr_level, self._file_level)

    def open_file(self, file: TextIO) -> None:
        self._file = file

    def close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Register strings (the API key) that must never reach a log line."""
        self.redactor.add(secrets)

    def __call__(self, logger: Any, method_name: str, event_dict: dict[str, Any]) -> Any:
        level = _LEVELS.get(event_dict.get("level", method_name), 20)
        if self.redactor:
            event_dict = self.redactor.value(event_dict)
        line = None
        if self._file is not None and level >= self._file_level:
            line = dumps(event_dict)
            try:
                self._file.write(line + "\n")
                self._file.flush()
            except OSError as exc:
                # A full disk must not turn every later log call into an exception.
                self._file = None
                self._stderr.write(f"batcher: cannot write the log file ({exc.strerror}); logging to stderr only\n")
        if level >= self._stderr_level:
            if self.progress is not None:
                self.progress.clear()
            if self._console is not None:
                self._stderr.write(self._console(logger, method_name, dict(event_dict)) + "\n")
            elif self._stderr_ascii_only:
                self._stderr.write(dumps(event_dict, ascii_only=True) + "\n")
            else:
                self._stderr.write((line or dumps(event_dict)) + "\n")
            self._stderr.flush()
            if self.progress is not None:
                self.progress.draw()
        raise structlog.DropEvent



def _encodes_all_unicode(encoding: str | None) -> bool:
    """Tell whether a stream with this encoding takes any text; None is an in-memory stream."""
    if encoding is None:
        return True
    try:
        return codecs.lookup(encoding).name.startswith("utf")
    except LookupError:
        return False


def configure_logging(sinks: LogSinks) -> None:
    """Configure structlog once, from the CLI entry point."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            sinks,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(sinks.min_level),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )

