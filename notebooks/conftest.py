"""nbval executes the notebooks as tests, in the smoke profile (what CI runs) unless ``MKDLAB_PROFILE`` says otherwise.

Without this, a local run of the README's test command (no ``CI`` variable) would train every notebook in the
``quick`` profile: minutes per notebook instead of seconds. The test run also trains every student run again
(``MKDLAB_REUSE_RUNS=0``) instead of reading back a finished one, so that it tests the training cells as they are
now. The kernels nbval starts inherit this environment.
"""

import os

os.environ.setdefault("MKDLAB_PROFILE", "smoke")
os.environ.setdefault("MKDLAB_REUSE_RUNS", "0")
