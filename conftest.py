"""One share of the CPU cores per pytest-xdist worker, for the tests and the notebook kernels alike.

Without it, each of the README's two workers (``-n 2``) computes on every core, and on a 2-core machine four
compute threads spin against each other. The notebook kernels and the CLI subprocesses inherit the variable; a value
the user set is kept.
"""

from __future__ import annotations

import os

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _workers:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
