"""keep_freed_memory: a freed large tensor's memory is reused without page faults, in a process of its own."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Allocates, fills and frees a 64 MiB tensor again and again, and reports the minor page faults per round once
# the heap has settled: without the setting glibc maps every block afresh and the kernel faults in all 16384 of
# its 4 KiB pages each round. With it, the first rounds still grow the heap (torch asks for 64 MiB plus its
# alignment, a few bytes more than a freed block that a small allocation pins behind it offers), so the probe
# warms up for 20 rounds first: a training step frees its activations together, and they coalesce sooner.
PROBE = """
import json, resource, sys, torch
from lightning_bts.host_memory import keep_freed_memory
in_force = keep_freed_memory() if sys.argv[1] == "keep" else False
def fill():
    torch.empty(16 * 1024 * 1024).fill_(1.0)
for _ in range(20):
    fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    fill()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4
print(json.dumps({"in_force": in_force, "faults": faults}))
"""
PAGES = 64 * 1024 * 1024 // 4096

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")


def probe(mode: str, **env: str) -> dict:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    environment.update(env, PYTHONPATH=str(REPO), THP_MEM_ALLOC_ENABLE="0")
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=environment,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_a_freed_block_is_reused_without_page_faults():
    default, kept = probe("default"), probe("keep")
    assert default["faults"] > PAGES / 2, default  # the premise: glibc gives the block back and maps it again
    assert kept["in_force"] is True
    assert kept["faults"] < PAGES / 20, kept


@glibc_only
def test_the_opt_out_and_glibcs_own_variables_leave_malloc_alone():
    assert probe("keep", LIGHTNING_BTS_KEEP_FREED_MEMORY="0") == {"in_force": False, "faults": pytest.approx(
        PAGES, rel=0.5)}
    assert probe("keep", MALLOC_MMAP_MAX_="65536")["in_force"] is False
