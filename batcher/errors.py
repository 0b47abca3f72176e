"""Exceptions that end a command, each carrying the exit code it maps to.

BatcherError
 +-- JobError          invalid command line or job file (exit 2)
 +-- AuthError         missing, malformed or rejected key (exit 3)
 +-- QuotaError        quota exhausted (exit 4)
 +-- EndpointError     endpoint unreachable or preflight incomplete (exit 5)
 +-- LockError         another run holds the output folder (exit 6)
 +-- OutputError       results could not be written, for example a full disk (exit 74)
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; cron and CI act on these."""

    OK = 0
    SOME_FAILED = 1
    INVALID_INPUT = 2
    AUTH = 3
    QUOTA = 4
    UNREACHABLE = 5
    LOCKED = 6
    INTERNAL_ERROR = 70  # EX_SOFTWARE from sysexits.h: a bug, not bad input
    OUTPUT_ERROR = 74  # EX_IOERR from sysexits.h
    SIGINT = 130
    SIGTERM = 143


class BatcherError(Exception):
    """An error that ends the command with a message for the user and an exit code."""

    exit_code: ExitCode = ExitCode.INVALID_INPUT
    # The failure kind that log events about this error carry; None when no request failed.
    failure_kind: str | None = None

    def __init__(self, message: str, *, failure_kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if failure_kind is not None:
            self.failure_kind = failure_kind


class JobError(BatcherError):
    """The command line or the job file cannot be used; nothing was sent."""

    exit_code = ExitCode.INVALID_INPUT


class AuthError(BatcherError):
    """The key is missing or malformed, or the endpoint rejected it."""

    exit_code = ExitCode.AUTH
    failure_kind = "auth"


class QuotaError(BatcherError):
    """The endpoint reports that the account's quota is exhausted."""

    exit_code = ExitCode.QUOTA
    failure_kind = "quota"


class EndpointError(BatcherError):
    """The endpoint could not be reached, or the preflight could not complete."""

    exit_code = ExitCode.UNREACHABLE


class LockError(BatcherError):
    """Another run holds the lock on the output folder."""

    exit_code = ExitCode.LOCKED


class OutputError(BatcherError):
    """The output folder could not be written, for example because the disk is full."""

    exit_code = ExitCode.OUTPUT_ERROR
