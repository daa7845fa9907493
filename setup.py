"""The compiled kernels (rvec_hub/_ckernels.c); everything else about the package is in pyproject.toml.

Optional: without a C compiler the package installs without them and adds vectors through torch's
general path (rvec_hub.fused).
"""

import sys

from setuptools import Extension, setup

FLAGS = [] if sys.platform == "win32" else [
    "-O3",
    # float32 sums may be reassociated (vectorised); every weight's own sum is an explicit fmaf, rounded once.
    "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math", "-ffp-contract=fast",
]

setup(ext_modules=[Extension("rvec_hub._ckernels", ["rvec_hub/_ckernels.c"], extra_compile_args=FLAGS, optional=True)])
