"""The version, in one place: the package face, the CLI and the environment record import it."""

__version__ = "0.1.0"
