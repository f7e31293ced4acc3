"""Shared fixtures: the shipped sample, the full shared dataset, and small synthetic datasets."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

# The suite imports TensorFlow (Keras parity) and torch_xla (XLA paths) into one process. Both bundle LLVM, and
# torch_xla imported after TensorFlow aborts the process ("LLVM ERROR: inconsistency in registered CommandLine
# options"); the other order works. lightning_bts.keras.reference.import_keras imports torch_xla first, but any
# other way TensorFlow reaches the session (a test's own `import keras`, TensorBoard probing for it) aborts the whole
# run at the next XLA test: a full run on a fresh clone did, in test_tune.py, when this import was left out. So the
# session loads torch_xla first, whatever the order of the tests (about 4 s, the fast tier's included).
if importlib.util.find_spec("torch_xla") is not None:
    os.environ.setdefault("PJRT_DEVICE", "CPU")  # what torch_xla picks here anyway, without its warning
    import torch_xla  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ROOT = REPO / "data" / "sample"
SHARED_ROOT = REPO.parent / "shared" / "data" / "figshare_brain_tumor"


@pytest.fixture
def shared_root() -> Path:
    """The full dataset beside the checkout (present in CI); tests that need it skip where it is absent."""
    if not (SHARED_ROOT / "metadata.csv").is_file():
        pytest.skip(f"full dataset not found at {SHARED_ROOT}")
    return SHARED_ROOT


def write_dataset(root: Path, groups: int = 6, slices_per_group: int = 3, size: int = 64, seed: int = 0) -> Path:
    """A tiny dataset in the shared layout: bright discs on a dark head, one disc = tumour mask."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for group in range(groups):
        for index in range(slices_per_group):
            key = f"{group:02d}{index:02d}"
            image = np.zeros((size, size), np.uint8)
            cv2.circle(image, (size // 2, size // 2), size * 2 // 5, 90, -1)
            mask = np.zeros((size, size), np.uint8)
            center = (int(rng.integers(size // 3, 2 * size // 3)), int(rng.integers(size // 3, 2 * size // 3)))
            cv2.circle(mask, center, size // 10, 255, -1)
            image[mask > 0] = 220
            cv2.imwrite(str(root / "images" / f"{key}.png"), image)
            cv2.imwrite(str(root / "masks" / f"{key}.png"), mask)
            rows.append({"slice_id": key, "image": f"images/{key}.png", "mask": f"masks/{key}.png",
                         "patient_id": f"p{group}", "patient_group": f"p{group}",
                         "tumor_type": ["meningioma", "glioma", "pituitary"][group % 3]})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "tiny")


_NOT_OURS = {".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache"}


def _repo_files() -> set[str]:
    found = set()
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if d not in _NOT_OURS and not d.endswith(".egg-info")]
        found.update(os.path.join(folder, name) for name in files)
    return found


@pytest.fixture(autouse=True)
def leave_no_artifacts_behind():
    """No test may write into the repository.

    The check sees the whole checkout, so files another process writes meanwhile (a training run saving into this
    checkout's runs/) show up as the running test's; the message says so, because the fix then is a separate clone.
    """
    before = _repo_files()
    yield
    added = sorted(os.path.relpath(p, REPO) for p in _repo_files() - before)
    assert not added, (
        f"test left files in the repository: {added[:10]} (if another process, such as a training run, writes "
        "into this checkout while the suite runs, its files show here too: run the suite in a separate clone)"
    )
