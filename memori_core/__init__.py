"""memori-core: memory for LLM agents, scoped by user (entity), agent (process) and session.

```python
from memori_core import Memori
mem = Memori().llm.register(client)
mem.attribution(entity_id="user-123", process_id="support-chat")
```

`import memori_core` is kept fast: the database layer, numpy and the embedder load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memori_core import errors
from memori_core.scope import Scope
from memori_core.types import (
    ForgetReport,
    Message,
    Recalled,
    ScoreParts,
    SessionInfo,
    StoredMessage,
)

if TYPE_CHECKING:
    from memori_core.embedding import Embedder
    from memori_core.extract import Extractor
    from memori_core.memori import Memori, MemoriConfig
    from memori_core.recall import RankingConfig

__version__ = "0.1.0"

__all__ = [
    "Embedder",
    "Extractor",
    "ForgetReport",
    "Memori",
    "MemoriConfig",
    "Message",
    "RankingConfig",
    "Recalled",
    "Scope",
    "ScoreParts",
    "SessionInfo",
    "StoredMessage",
    "__version__",
    "errors",
]

_LAZY = {
    "Memori": "memori_core.memori",
    "MemoriConfig": "memori_core.memori",
    "Embedder": "memori_core.embedding",
    "Extractor": "memori_core.extract",
    "RankingConfig": "memori_core.recall",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memori_core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
