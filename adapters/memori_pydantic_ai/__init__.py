"""pydantic-ai adapter for memori-core: memory as an agent capability, conversations as sessions.

- `MemoriCapability(entity_id, process_id)`: recalls the user's memories into the agent's
  instructions and records every run's new messages (`Agent(capabilities=[...])`).
- `MemoriConversationStore(entity_id, process_id)`: a pydantic-ai `ConversationStore` whose
  conversations are memori sessions, so `conversation=` load/save works across processes.

Needs `pydantic-ai-slim>=2.68` (`pip install "memori-core[pydantic-ai]"`).
"""

from __future__ import annotations

try:
    import pydantic_ai.conversation_store  # noqa: F401
except ImportError as e:
    raise ImportError(
        "memori_pydantic_ai needs pydantic-ai-slim 2.68 or newer; install it with "
        '`pip install "memori-core[pydantic-ai]"`'
    ) from e

from memori_pydantic_ai._convert import session_id_for, to_core_messages
from memori_pydantic_ai.capability import MemoriCapability
from memori_pydantic_ai.conversation_store import MemoriConversationStore

__all__ = ["MemoriCapability", "MemoriConversationStore", "session_id_for", "to_core_messages"]
