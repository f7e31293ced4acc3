"""Download the figshare release (four zip parts and ``cvind.mat``, about 900 MB) into a cache folder: resumable,
checked against figshare's MD5s, with a message that names the URL when the network fails.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.request
from pathlib import Path

from lightning_bts.data.figshare.release import API_URL, ARTICLE_ID, DOI, RELEASE_FILES, USER_AGENT, FigshareError, Log
from lightning_bts.files import atomic_path


def download(cache: str | Path, log: Log | None = None) -> list[Path]:
    """Download the four zip parts and ``cvind.mat`` into ``cache`` (about 900 MB); return their paths.

    File names, URLs and MD5 sums come from the figshare API. Files already in ``cache`` with the right MD5
    are kept, so an interrupted download resumes file by file.

    Raises:
        FigshareError: no network, an HTTP error, or a file whose MD5 does not match.
    """
    log = log or (lambda line: None)
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    listing = {entry["name"]: entry for entry in json.loads(_fetch_bytes(API_URL))["files"]}
    absent = [name for name in RELEASE_FILES if name not in listing]
    if absent:
        raise FigshareError(f"figshare article {ARTICLE_ID} lists no {absent} (it has {sorted(listing)})")
    paths = []
    for name in RELEASE_FILES:
        entry, target = listing[name], cache / name
        if not _is_complete(target, entry):
            log(f"downloading {name} ({entry.get('size', 0) / 2**20:.0f} MiB)")
            with atomic_path(target) as partial:  # a failed download or MD5 check leaves no file
                _fetch_to(entry["download_url"], partial)
                if "computed_md5" in entry and _md5(partial) != entry["computed_md5"]:
                    raise FigshareError(f"{name} from {entry['download_url']}: MD5 does not match; download again")
        paths.append(target)
    return paths


def _open_url(url: str):
    return urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": USER_AGENT}), timeout=60)


def _network_error(url: str, error: OSError) -> FigshareError:
    return FigshareError(
        f"cannot download {url}: {error}. Without network access, download {', '.join(RELEASE_FILES)} by hand "
        f"from https://doi.org/{DOI} and run with --source pointing at them"
    )


def _fetch_bytes(url: str) -> bytes:
    try:
        with _open_url(url) as response:
            return response.read()
    except OSError as error:  # urllib.error.URLError and HTTPError are OSErrors, as are resets and timeouts
        raise _network_error(url, error) from error


def _fetch_to(url: str, target: Path) -> None:
    try:
        with _open_url(url) as response, target.open("wb") as file:
            shutil.copyfileobj(response, file, 1 << 20)
    except OSError as error:
        target.unlink(missing_ok=True)
        raise _network_error(url, error) from error


def _is_complete(path: Path, entry: dict) -> bool:
    """Whether ``path`` already holds the file figshare lists as ``entry`` (by MD5, else by size)."""
    if not path.is_file():
        return False
    if "computed_md5" in entry:
        return _md5(path) == entry["computed_md5"]
    return path.stat().st_size == entry.get("size")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
