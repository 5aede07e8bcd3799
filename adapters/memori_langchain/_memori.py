"""How the LangChain classes get a `Memori` attributed to their entity and process."""

from __future__ import annotations

from memori_core import Memori
from memori_core.errors import UsageError

__all__ = ["scoped_memori"]


def scoped_memori(
    entity_id: str,
    process_id: str | None,
    memori: Memori | None,
    database_url: str | None,
) -> Memori:
    """A `Memori` of its own, attributed to (`entity_id`, `process_id`).

    With `memori`, it is `memori.scoped(...)`: the same database, embedder, extractor and
    settings, while the caller's instance keeps its own attribution (several histories and
    agents can share one `memori`). Without it, `Memori(database_url)` is opened (engines are
    shared per URL, so this is cheap). Raises `UsageError` if both are given.
    """
    if memori is not None and database_url is not None:
        raise UsageError("pass either memori= or database_url=, not both")
    if memori is None:
        return Memori(database_url).attribution(entity_id, process_id)
    return memori.scoped(entity_id, process_id)
