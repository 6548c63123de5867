"""What a non-editable install gets: the wheel carries every data file the server reads.

Built the way an operator's ``pip install imserver`` would build it (an isolated build
from pyproject.toml), installed into a scratch directory, and run from outside the
checkout, so nothing is read from the source tree by accident.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(out)],
        check=True,
        timeout=300,
    )
    (found,) = out.glob("imserver-*.whl")
    return found


def test_the_wheel_carries_the_data_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for wanted in (
        "imserver/py.typed",
        "imserver/http/card.schema.json",
        "imserver/dashboard/static/index.html",
    ):
        assert wanted in names, wanted


def test_an_installed_server_describes_the_card_document_in_full(
    wheel: Path, tmp_path: Path
) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        check=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run(
        [sys.executable, "-m", "imserver", "openapi"],
        cwd=tmp_path,  # not the checkout: the installed copy is what runs
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    doc = json.loads(run.stdout)
    card = doc["components"]["schemas"]["CardDocument"]
    assert "$defs" in card and "properties" in card  # the schema, not the stub
    where = subprocess.run(
        [sys.executable, "-c", "import imserver; print(imserver.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(target))
