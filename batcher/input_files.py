"""Opening of input files that must be regular files, so a FIFO cannot block a read and a device cannot flood it."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

MIB = 1024 * 1024


class NotRegularFileError(Exception):
    """The path exists but is a directory, FIFO, device or socket."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(f"{path} is {kind}")
        self.path = path
        self.kind = kind  # for example "a FIFO (named pipe)"


def describe_file_type(mode: int) -> str:
    """Name the type of a file that is not a regular file, with an article, for messages."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def open_regular_file(path: Path) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file, following symbolic links.

    The type is checked with stat before opening, so that a device is never
    opened, and again on the open descriptor in case the path changed in
    between.

    Raises:
        NotRegularFileError: the path is a directory, FIFO, device or socket.
        OSError: the path does not exist or cannot be opened.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(path, describe_file_type(mode))

    # O_NONBLOCK because a FIFO put in place after the stat would block the open until a writer appears.
    # The flag has no effect on reads from a regular file.
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, describe_file_type(mode))
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
