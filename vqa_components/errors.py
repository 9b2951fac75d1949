"""The library's user error, at the bottom of the package so that every module may raise it.

Parts import it from :mod:`vqa_components.interfaces`, which re-exports it; ``layers/`` and
``metrics/``, which sit below the interfaces, import it from here.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A part or model argument that cannot work; ``vqa`` prints it as one line (exit status 2)."""
