"""Device side: fill the preprocessing cache for ROOT at 128x128 with skull_strip=safe.

ROOT holds the shared set already skull-stripped and resized to 128x128 on the development machine by the toolkit
itself (preprocess_dataset(..., 128, "safe", rgb=True); the 512x512 PNGs are too large to travel). Reading those
PNGs with skull_strip=none gives arrays identical to safe@128 on the originals (checked there, bit for bit), so
the cache entry that a run with data.skull_strip=safe looks up holds exactly what it would have computed.
"""
import sys

from lightning_bts.data.preprocess import _cache_path, _write_atomically, preprocess_dataset
from lightning_bts.data.records import load_records

root, cache_dir = sys.argv[1:3]
records = load_records(root)
data = preprocess_dataset(records, 128, "none", rgb=True)
path = _cache_path(records, 128, "safe", True, cache_dir)
_write_atomically(path, data)
print("primed", path, data.images.shape, data.masks.shape)
