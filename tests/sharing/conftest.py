"""The sharing tests build every registered model type from the cases of tests/models/test_common.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
