"""The OpenAI interceptor behind `Memori.llm`: `Memori().llm.register(client)`.

It works on `openai.OpenAI` and `openai.AsyncOpenAI` instances by duck typing; this package
does not import `openai` (install it with `pip install "memori-core[openai]"`).
Covered calls: `chat.completions.create` (plain and `stream=True`), `chat.completions.parse`,
`responses.create` (plain and `stream=True`), `responses.parse`, on the client and on copies made
with `with_options(...)`/`copy(...)`. The SDK's `.stream()` helpers go through `create` and are
covered as well.
"""

from memori_core.llm._registry import LLMRegistry, OpenAIClient, bypass

__all__ = ["LLMRegistry", "OpenAIClient", "bypass"]
