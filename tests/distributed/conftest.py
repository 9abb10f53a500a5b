"""Make the repository root importable, and run torch single-threaded as tests/train does (the same
fixture: tiny models on a small shared CPU run several times slower with two intra-op threads)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.train import conftest as _train  # noqa: E402

_torch_one_thread = _train._torch_one_thread  # the same autouse fixture
