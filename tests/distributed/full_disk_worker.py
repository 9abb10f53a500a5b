"""`ternary train` (convert.cli) as a torchrun worker whose disk is full at its second checkpoint
save: only rank 0 writes, so only rank 0 sees the ENOSPC (tests/distributed/test_torchrun_full_disk.py)."""
from __future__ import annotations

import errno
import os
import sys
import time

import shared.spec.checkpoint as ck
from convert.cli import main

_real, _saves = ck.save_streaming, [0]  # the checkpoint's tensor writer


def _save_file(tensors, filename, metadata=None):
    if filename.endswith(ck.MODEL_FILE):
        _saves[0] += 1
    if _saves[0] == 2:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
    return _real(tensors, filename, metadata=metadata)


if __name__ == "__main__":
    ck.save_streaming = _save_file
    rc = main(["train", "--backend", "torch", *sys.argv[1:]])
    if rc != 0 and os.environ.get("RANK") == "0":
        # torchrun terminates the other ranks as soon as one exits: rank 0 waits, so that the test
        # sees rank 1 end by itself (not by torchrun's SIGTERM)
        time.sleep(5)
    sys.exit(rc)
