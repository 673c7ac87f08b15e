"""The package version: the single source of truth (image tags derive from it too)."""

__version__ = "0.1.0"
