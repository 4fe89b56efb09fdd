"""``IRError``: the one exception type of the IR (an invalid graph or an invalid use of it).

It lives in a module of its own so that everything in ``ir/`` can raise it without
importing the graph: ``ir.graph`` imports the op table (``ir.ops``) for inference, and the
op table imports only this module and ``ir.types``. ``ir.graph`` re-exports it.
"""

from __future__ import annotations

__all__ = ["IRError"]


class IRError(Exception):
    """An invalid graph or an invalid use of the graph API."""
