"""Test configuration shared by the whole suite."""
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO / "egs" / "librispeech" / "ASR" / "zipformer_cif"

# Recipe modules import each other by file name (`from scaling import ...`), as in icefall,
# because the recipe scripts run from egs/<corpus>/ASR with zipformer_cif/ on sys.path.
if str(RECIPE_DIR) not in sys.path:
    sys.path.insert(0, str(RECIPE_DIR))

# The suite's tensors are tiny: a second intra-op thread only adds synchronisation, which on a
# busy 2-core machine made small LSTM steps ~1000x slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
    yield
