"""Fixtures every test folder shares: the real Watson data beside the checkout, when present."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# ../shared/data/watson sits beside the checkout on developer machines and CI; never in it.
WATSON_DIR = REPO.parent / "shared" / "data" / "watson"


@pytest.fixture(scope="session")
def watson_dir() -> Path:
    if not (WATSON_DIR / "train.csv").is_file():
        pytest.skip(f"real Watson data not found at {WATSON_DIR}")
    return WATSON_DIR
