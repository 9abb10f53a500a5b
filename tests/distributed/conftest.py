"""Make the repository root importable (the project is not necessarily pip-installed), and run
torch single-threaded here: these models are tiny, and on a small shared CPU two intra-op threads
made each run several times slower (thread contention), not faster."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True, scope="package")
def _torch_one_thread():
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
