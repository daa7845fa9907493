"""The rvec version, written into every manifest."""

__version__ = "0.2.0.dev0"
