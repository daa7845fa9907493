"""The `rvec` command line: a thin shell over the library."""
