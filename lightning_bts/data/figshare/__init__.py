"""The official figshare release of the brain tumour dataset, converted into the dataset layout
(``scripts/prepare_figshare.py``).

- ``release``  the release's files; reading one slice (``N.mat``) and ``cvind.mat``
- ``fetch``    :func:`download`: the release into a cache folder, resumable, MD5-checked
- ``convert``  :func:`convert`: the release -> ``images/``, ``masks/``, ``metadata.csv``, ``README.md``
"""

from lightning_bts.data.figshare.convert import convert, summarize
from lightning_bts.data.figshare.fetch import download
from lightning_bts.data.figshare.release import FigshareError, Slice, patient_group, read_cvind, read_slice
from lightning_bts.data.intensity import to_uint8  # the one mapping (data/intensity.py), kept importable here

__all__ = ["FigshareError", "Slice", "convert", "download", "patient_group", "read_cvind", "read_slice",
           "summarize", "to_uint8"]
