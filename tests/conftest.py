import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from micl_probe.testing import FAMILIES  # noqa: E402


@pytest.fixture(params=FAMILIES)
def family(request):
    """Every family with a tiny random model (micl_probe.testing)."""
    return request.param
