"""Small file helpers shared by the layers that write files."""

from __future__ import annotations

import os


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that a reader (or a crash) sees either the old or the whole new content."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())
