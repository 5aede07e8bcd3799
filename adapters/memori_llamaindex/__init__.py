"""LlamaIndex integration for memori-core: `MemoriMemory` and `MemoriMemoryBlock`.

- `MemoriMemory(entity_id, process_id)`: a `BaseMemory` for `agent.run(user_msg=..., memory=...)`
  (FunctionAgent, ReActAgent, AgentWorkflow): recent session messages plus recalled memories.
- `MemoriMemoryBlock(entity_id, process_id)`: a block for
  `Memory.from_defaults(memory_blocks=[...])`: recalled memories inside LlamaIndex's own memory.
- `MemoriAgentWorkflow`: an `AgentWorkflow` in which each agent keeps its own long-term memory
  (`MemoriMemory(..., agent_process_ids={agent_name: process_id})`) over a shared transcript.

Install with `pip install "memori-core[llamaindex]"`.
"""

try:
    import llama_index.core  # noqa: F401
except ImportError as e:
    raise ImportError(
        'memori_llamaindex needs llama-index-core: pip install "memori-core[llamaindex]"'
    ) from e

from memori_llamaindex._settings import session_uuid
from memori_llamaindex.block import MemoriMemoryBlock
from memori_llamaindex.memory import DEFAULT_TOKEN_LIMIT, MemoriMemory
from memori_llamaindex.messages import from_memori, to_memori
from memori_llamaindex.workflow import MemoriAgentWorkflow

__all__ = [
    "DEFAULT_TOKEN_LIMIT",
    "MemoriAgentWorkflow",
    "MemoriMemory",
    "MemoriMemoryBlock",
    "from_memori",
    "session_uuid",
    "to_memori",
]
