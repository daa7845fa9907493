"""`python -m rvec_hub.cli`: the same as the `rvec` console script."""

from .main import main

main()
