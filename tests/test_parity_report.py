"""The Keras parity report's table (no TensorFlow needed): every check, its value, tolerance and verdict."""

from __future__ import annotations

from lightning_bts.keras.parity_report import ParityReport


def test_the_markdown_table_lists_every_check_with_its_verdict():
    report = ParityReport()
    report.check("forward |p_keras - p_torch|", 2.5e-7, 1e-5)
    report.check("loss relative difference", 0.002, 1e-6)
    report.check("nan fails", float("nan"), 1.0)
    lines = report.markdown("Keras parity", "preamble").splitlines()
    assert lines[:5] == ["# Keras parity", "", "preamble", "", "**Overall: FAIL** (1/3 checks pass)"]
    assert set(lines[7]) <= set("|-: ")  # the header rule
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[6:] if line != lines[7]]
    assert rows[0] == ["check", "value", "tolerance", "result"]
    assert rows[1:] == [
        ["forward \\|p_keras - p_torch\\|", "2.5e-07", "<= 1e-05", "pass"],  # the | escaped: one cell
        ["loss relative difference", "0.002", "<= 1e-06", "**FAIL**"],
        ["nan fails", "nan", "<= 1", "**FAIL**"],
    ]
