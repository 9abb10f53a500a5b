"""Fixtures for every suite. (The repository root is importable through pyproject.toml's
[tool.pytest.ini_options] pythonpath, so `import shared` and `import tests.variants` work however
pytest is launched.)"""
import signal

import pytest

from tests.backends import backend  # noqa: F401  (the mlx / torch fixture)


# A shell that starts pytest in the background without job control (`cmd &` in a script, nohup)
# hands it SIGINT ignored, and every process the tests start inherits that: the Ctrl-C tests'
# children would never see their SIGINT and run to the end. The default handler here gives them
# the disposition a terminal would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _torch_one_thread():
    """Torch single-threaded: these models are tiny, and on a small shared CPU two intra-op threads
    made each run several times slower (thread contention), not faster."""
    try:
        import torch
    except ImportError:  # a NumPy-only environment (the shared/ spec tests)
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
