"""Measure how much tumour each skull-stripping method keeps over a dataset folder.

    python scripts/measure_skull_strip.py --methods paper safe

Prints a table by method and tumour type and writes it as Markdown to ``--out`` (with the command that made
it), and the per-slice measurements as CSV beside it (same name, ``.csv``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from lightning_bts.data.retention import SUBSTANTIAL_LOSS, measure_retention, summarize
from lightning_bts.data.skull_strip import MIN_COMPONENT_SHARE, SAFE_MARGIN_FRACTION, SKULL_STRIP_METHODS
from lightning_bts.errors import run_main

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "figshare_brain_tumor"
WORST_SLICES_LISTED = 25


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT, help="dataset folder (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=["paper", "safe"], choices=SKULL_STRIP_METHODS)
    parser.add_argument("--out", type=Path, default=Path("reports/skull_strip_retention.md"))
    parser.add_argument("--workers", type=int, default=None, help="reading threads (default: one per CPU)")
    args = parser.parse_args(argv)

    threads = args.workers or os.cpu_count() or 1
    tables, seconds = [], {}
    for method in args.methods:
        start = time.perf_counter()
        tables.append(measure_retention(args.data_root, method, threads))
        seconds[method] = time.perf_counter() - start
        print(f"{method}: {len(tables[-1])} slices in {seconds[method]:.1f} s", file=sys.stderr)
    per_slice = pd.concat(tables, ignore_index=True)
    summary = summarize(per_slice)
    print(summary.to_string(index=False))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = args.out.with_suffix(".csv")
    per_slice.to_csv(csv_path, index=False, float_format="%.6g")
    command = shlex.join(["python", "scripts/measure_skull_strip.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.write_text(report(command, args.data_root, summary, per_slice, seconds, csv_path.name, threads))
    print(f"wrote {args.out} and {csv_path}", file=sys.stderr)


def report(
    command: str,
    root: Path,
    summary: pd.DataFrame,
    per_slice: pd.DataFrame,
    seconds: dict[str, float],
    csv: str,
    threads: int,
) -> str:
    """The Markdown report: command, column meanings, summary table, the worst slices per method."""
    lines = [
        "# Skull stripping: tumour retention",
        "",
        "Made by (from the repository root):",
        "",
        "```",
        command,
        "```",
        "",
        f"Dataset: `{root.name}` ({per_slice['slice'].nunique()} slices); per-slice values: [`{csv}`]({csv}).",
        "Methods: `lightning_bts/data/skull_strip.py`. `paper`: Gaussian blur 5x5, Otsu, largest component, holes "
        f"filled. `safe`: same blur and Otsu, convex hull of every component of at least {MIN_COMPONENT_SHARE:.0%} "
        f"of the largest one, widened by {SAFE_MARGIN_FRACTION:.0%} of the image side.",
        "",
        "- `any_loss`: slices losing at least one tumour pixel; `loss_over_5pct`: losing more than "
        f"{SUBSTANTIAL_LOSS:.0%} of it; `total_loss`: losing all of it.",
        "- `mean_removed`: mean share of the image zeroed (background air included).",
        "- `mean_head_removed`: mean share of the head zeroed, the head being the convex hull of all Otsu "
        "foreground (skull, scalp, face and neck count, air does not).",
        "- `cpu_ms_per_slice`: mean CPU time of `brain_mask` alone per slice (wall time of the whole run, "
        f"reading and checking the files in {threads} thread(s) on a shared machine: "
        f"{', '.join(f'{m} {s:.0f} s' for m, s in seconds.items())}).",
        "",
        markdown_table(summary),
    ]
    for method, table in per_slice.groupby("method", sort=False):
        losing = table[table["kept_pixels"] < table["tumour_pixels"]].sort_values("retained_fraction")
        lines += ["", f"## `{method}`: slices losing tumour pixels ({len(losing)})", ""]
        if len(losing):
            shown = losing.head(WORST_SLICES_LISTED)
            lines.append(
                markdown_table(
                    shown[
                        ["slice", "tumor_type", "tumour_pixels", "kept_pixels", "retained_fraction", "removed_fraction"]
                    ]
                )
            )
            if len(losing) > len(shown):
                lines += ["", f"... and {len(losing) - len(shown)} more with smaller losses (see the CSV)."]
        else:
            lines.append("None.")
    return "\n".join(lines) + "\n"


def markdown_table(table: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    rows = [list(table.columns), ["---"] * len(table.columns)]
    rows += [[cell(v) for v in row] for row in table.itertuples(index=False)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


if __name__ == "__main__":
    run_main(main)
