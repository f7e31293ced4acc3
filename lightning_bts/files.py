"""Writing a file so that a reader never sees half of it: the one helper every writer of the package uses.

A crash, a full disk or Ctrl-C while writing a checkpoint, a cache or a report must leave the old file (or
none), not a truncated one that a later run reads as valid. The content goes to a temporary file in the same
folder (a rename is atomic only within one file system) and is renamed over the target when complete.
Imports nothing of the package, so any layer may use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends without error.

    On an error (or a check that raises inside the block) the temporary file is removed and ``path`` is left
    as it was. The temporary name ends with ``path``'s suffix, so writers that pick a format by the suffix
    (or append one, as ``np.savez`` does without ``.npz``) write the same file. The file exists, empty, when
    the block starts; folders above it are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path: str | Path, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ``path`` through :func:`atomic_path`; returns ``path``."""
    data = content.encode() if isinstance(content, str) else content
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)
