"""Build the whole figshare brain tumour dataset (3064 slices) in the layout of the shared copy.

From files already downloaded from https://doi.org/10.6084/m9.figshare.1512427 (the four
brainTumorDataPublic_*.zip parts and cvind.mat, or the "download all" zip, or a folder of them):

    python scripts/prepare_figshare.py --source ~/Downloads/figshare --out data/figshare_full

Or let the script download them first (about 900 MB, kept in --cache for a rerun):

    python scripts/prepare_figshare.py --download --cache ~/.cache/figshare --out data/figshare_full
"""

from __future__ import annotations

import argparse

from lightning_bts.data.figshare import convert, download, summarize
from lightning_bts.errors import run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    origin = parser.add_mutually_exclusive_group(required=True)
    origin.add_argument("--source", nargs="+", metavar="DIR_OR_ZIP",
                        help="folders, zip parts and/or .mat files of the release (cvind.mat included)")
    origin.add_argument("--download", action="store_true", help="download the release from figshare into --cache")
    parser.add_argument("--cache", help="folder for the downloaded files (with --download)")
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds a converted dataset")
    args = parser.parse_args(argv)
    if args.download and not args.cache:
        parser.error("--download needs --cache DIR")
    if args.cache and not args.download:
        parser.error("--cache is only used with --download")
    sources = download(args.cache, log=print) if args.download else args.source
    table = convert(sources, args.out, overwrite=args.overwrite, log=print)  # FigshareError: run_main reports it
    print(summarize(table))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
