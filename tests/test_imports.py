"""What importing the toolkit does to the process: nothing that reaches the network."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

# Counts the URLs asked for (and answers none) while the toolkit's data pipeline, albumentations with it, is imported.
PROBE = """
import os, urllib.request, warnings
opened = []
def refuse(self, url, *args, **kwargs):
    opened.append(url)
    raise OSError("no network in this test")
urllib.request.OpenerDirector.open = refuse
warnings.simplefilter("ignore")
import lightning_bts.data.transforms
print(len(opened), os.environ.get("NO_ALBUMENTATIONS_UPDATE"))
"""


def _import_in_a_fresh_process(**env: str) -> list[str]:
    environment = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"} | env
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.split()


def test_importing_the_data_pipeline_asks_no_server_for_updates():
    assert _import_in_a_fresh_process() == ["0", "1"]


def test_a_user_who_wants_the_albumentations_update_check_keeps_it():
    assert _import_in_a_fresh_process(NO_ALBUMENTATIONS_UPDATE="0") == ["1", "0"]
