"""The package version, in a module of its own so every layer can read it without importing the
package root (which loads Flask, the server and every front door)."""

from __future__ import annotations

__version__ = "0.1.0"  # the one place the version is written; pyproject.toml reads it
