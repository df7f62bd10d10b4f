"""nbval executes the notebooks as tests, in the smoke profile (what CI runs) unless ``MKDLAB_PROFILE`` says otherwise.

Without this, a local run of the README's test command (no ``CI`` variable) would train every notebook in the
``quick`` profile: minutes per notebook instead of seconds. The kernels nbval starts inherit this environment.
"""

import os

os.environ.setdefault("MKDLAB_PROFILE", "smoke")
