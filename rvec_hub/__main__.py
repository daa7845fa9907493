"""`python -m rvec_hub`: the same as the `rvec` console script."""

from .cli.main import main

main()
