"""The package version, at the bottom so that any module may record it."""

__version__ = "0.1.0"
