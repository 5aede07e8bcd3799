"""Give an adapter its own `Memori`, attributed to its user and agent."""

from __future__ import annotations

from memori_core import Memori, Scope
from memori_core.errors import UsageError

__all__ = ["bind_memori"]


def bind_memori(scope: Scope, *, memori: Memori | None, database_url: str | None) -> Memori:
    """A `Memori` attributed to `scope` that nothing else re-attributes.

    With `memori`, a `memori.scoped(...)` copy (same database, embedder, extractor and
    settings; the caller's instance is left as it is), so one `Memori` can serve many agents.
    Otherwise a new `Memori(database_url)`. Raises `UsageError` if both are given.
    """
    if memori is not None and database_url is not None:
        raise UsageError("pass either memori= or database_url=, not both")
    if memori is None:
        return Memori(database_url).attribution(scope.entity_id, scope.process_id)
    return memori.scoped(scope.entity_id, scope.process_id)
