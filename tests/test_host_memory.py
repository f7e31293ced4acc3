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

# Allocates and fills a 64 MiB tensor, frees it, does it again, and reports the minor page faults of the second
# round: without the setting glibc maps the block afresh and the kernel faults in all 16384 of its 4 KiB pages.
PROBE = """
import json, resource, sys, torch
from lightning_bts.host_memory import keep_freed_memory
in_force = keep_freed_memory() if sys.argv[1] == "keep" else False
def fill():
    torch.empty(16 * 1024 * 1024).fill_(1.0)
fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill()
print(json.dumps({"in_force": in_force, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
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
