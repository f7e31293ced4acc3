"""The one atomic-write helper: a reader sees the old file or the new one, never a part, and no temporary stays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lightning_bts.files import atomic_path, write_atomically


def test_writes_text_and_bytes_and_creates_folders(tmp_path: Path) -> None:
    path = write_atomically(tmp_path / "a" / "b" / "notes.md", "héllo\n")
    assert path.read_bytes() == "héllo\n".encode()
    write_atomically(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["notes.md"]


def test_an_error_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = write_atomically(tmp_path / "model.ckpt", b"old")
    with pytest.raises(RuntimeError, match="check failed"), atomic_path(path) as temporary:
        temporary.write_bytes(b"half")
        assert path.read_bytes() == b"old"  # not visible before the block ends
        raise RuntimeError("check failed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


def test_the_temporary_keeps_the_suffix_so_np_savez_writes_that_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.npz"
    with atomic_path(path) as temporary:
        assert temporary.suffix == ".npz" and temporary.parent == tmp_path and temporary.name.startswith(".")
        np.savez(temporary, x=np.arange(3))  # would write temporary + ".npz" for any other suffix
    with np.load(path) as data:
        assert data["x"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["cache.npz"]
