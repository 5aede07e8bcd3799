"""`Memori.llm`: register OpenAI client instances so their calls recall and record memories.

How a call is intercepted: `register(client)` replaces `create`/`parse` on *that instance's*
`chat.completions` and `responses` resources (never the class, so other clients are untouched)
and `with_options`/`copy`, so copies are covered too. Instances are patched once; which `Memori`
a call uses is looked up at call time in a context variable of the client, set by `register` in
the caller's thread or task. So when one module-level client is shared by many request threads,
each registering its own `Memori`, every call uses its own request's `Memori`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal, Protocol

from memori_core.llm._chat import ChatTurn
from memori_core.llm._responses import ResponsesTurn
from memori_core.llm._streams import AsyncStreamProxy, StreamProxy
from memori_core.llm._turn import Accumulator, Turn
from memori_core.types import Message, StoredMessage

if TYPE_CHECKING:
    from memori_core.memori import Memori

__all__ = ["LLMRegistry", "OpenAIClient", "bypass"]

logger = logging.getLogger("memori_core.llm")

Endpoint = Literal["chat", "responses"]

_HOOK_ATTR = "_memori_core_llm_hook"
_WRAPPED_MARK = "__memori_core_wrapped__"
_INSTALL_LOCK = threading.Lock()

# Set while a wrapped call runs (and by `bypass()`): a nested call made by the SDK itself, or a
# call made by memori's own extractor, is passed through untouched.
_BYPASS: ContextVar[bool] = ContextVar("memori_core_llm_bypass", default=False)


class _Resource(Protocol):
    def create(self, *args: Any, **kwargs: Any) -> Any: ...


class _Chat(Protocol):
    @property
    def completions(self) -> _Resource: ...


class OpenAIClient(Protocol):
    """What `register` needs of a client: `openai.OpenAI` and `openai.AsyncOpenAI` both fit."""

    @property
    def chat(self) -> _Chat: ...

    @property
    def responses(self) -> _Resource: ...


@contextlib.contextmanager
def bypass() -> Iterator[None]:
    """Calls made inside this block on registered clients are neither augmented nor recorded.

    For memori's own model calls (e.g. an LLM extractor using the user's client).
    """
    token = _BYPASS.set(True)
    try:
        yield
    finally:
        _BYPASS.reset(token)


class _Hook:
    """Interception state shared by one client instance and the copies made from it."""

    def __init__(self, is_async: bool) -> None:
        self.is_async = is_async
        self.active: ContextVar[LLMRegistry | None] = ContextVar(
            f"memori_core_llm_active_{id(self):x}", default=None
        )
        self.registries: weakref.WeakSet[LLMRegistry] = weakref.WeakSet()
        self.clients: weakref.WeakSet[Any] = weakref.WeakSet()
        # Used where no registry was set in the current context (e.g. the client registered once
        # at start-up and called from worker threads), but only while there is a single one:
        # with several, picking one could hand a request another user's memory.
        self.solo: LLMRegistry | None = None
        self.several = False

    def current(self) -> LLMRegistry | None:
        registry = self.active.get()
        if registry is None:
            registry = self.solo
        if registry is None or not registry._enabled:
            return None
        return registry

    def attach(self, registry: LLMRegistry) -> None:
        """Make `registry` the active one in the caller's context (callers hold the lock)."""
        self.registries.add(registry)
        if self.solo is None and not self.several:
            self.solo = registry
        elif self.solo is not registry:
            self.solo = None
            self.several = True
        self.active.set(registry)

    def detach(self, registry: LLMRegistry) -> bool:
        """Forget `registry`; True if no enabled registry is left (callers hold the lock)."""
        self.registries.discard(registry)
        if self.solo is registry:
            self.solo = None
        if self.active.get() is registry:
            self.active.set(None)
        return not any(r._enabled for r in self.registries)


def _is_async_client(client: Any) -> bool:
    create = client.chat.completions.create
    return inspect.iscoroutinefunction(inspect.unwrap(create)) or type(client).__name__.startswith(
        "Async"
    )


class LLMRegistry:
    """The `Memori.llm` namespace: register OpenAI clients so their calls use this `Memori`.

    ```python
    client = OpenAI()
    mem = Memori().llm.register(client)
    mem.attribution(entity_id="user-123", process_id="support-chat")
    client.chat.completions.create(model="gpt-4o-mini", messages=[...])
    ```

    Before each call the last user message is used to recall memories for the current scope;
    they are injected as one marked system message (chat) or in front of `instructions`
    (responses). If the caller sent no earlier turns and the current session has a transcript
    (a resumed session), its recent turns are replayed within `replay_token_budget` tokens.
    After the call the new messages and the reply are recorded. Nothing else in the request is
    changed. Failures of recall or recording are logged and counted (`stats()`), never raised.

    Until `attribution()` is set, calls pass through untouched.

    Which `Memori` a call uses: the one last registered on that client in the calling thread or
    asyncio task (tasks inherit it from the code that created them). A thread that registered
    none uses the client's only `Memori` if there was only ever one; with several, its calls
    pass through untouched rather than risk using another user's memory. Re-registering to
    switch is cheap (microseconds).

    Streams are recorded when exhausted or closed (a reply cut short is stored with
    `payload={"partial": True}`); a stream dropped without either is not recorded.
    """

    def __init__(
        self,
        memori: Memori,
        *,
        replay_messages: int = 40,
        replay_token_budget: int = 2000,
    ) -> None:
        self.memori = memori
        self.replay_messages = replay_messages
        self.replay_token_budget = replay_token_budget
        self._enabled = True
        self._hooks: weakref.WeakSet[_Hook] = weakref.WeakSet()
        self._counts_lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "llm_calls",
                "llm_recall_errors",
                "llm_record_errors",
                "llm_errors",
                "llm_partial_replies",
                "llm_replayed_messages",
                "llm_passed_through",
            ),
            0,
        )

    # -- public API ---------------------------------------------------------------------------

    def register(self, client: OpenAIClient) -> Memori:
        """Intercept `client`'s calls with this `Memori` in this thread/task; returns the `Memori`.

        Accepts an `openai.OpenAI` or `openai.AsyncOpenAI` instance. Idempotent; registering
        another `Memori` on the same client in another thread or task does not affect this one.
        """
        # One process-wide lock: registering is a few microseconds, and it keeps a concurrent
        # `unregister` from restoring the client between our lookup and our attach.
        with _INSTALL_LOCK:
            hook: _Hook | None = getattr(client, _HOOK_ATTR, None)
            if hook is None:
                hook = _Hook(_is_async_client(client))
                _install(client, hook)
            self._enabled = True
            self._hooks.add(hook)
            hook.attach(self)
        return self.memori

    def unregister(self) -> None:
        """Stop intercepting for this `Memori`; clients no one else uses get their methods back."""
        with _INSTALL_LOCK:
            self._enabled = False
            for hook in list(self._hooks):
                if hook.detach(self):
                    for client in list(hook.clients):
                        _uninstall(client)
            self._hooks = weakref.WeakSet()

    def stats(self) -> dict[str, int]:
        """Counters: intercepted calls, recall/record/other failures, partial replies, replays."""
        with self._counts_lock:
            return dict(self._counts)

    # -- shared by the sync and async drivers -------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[key] += n

    def _begin(self, endpoint: Endpoint, kwargs: dict[str, Any], stream: bool) -> Turn | None:
        """The turn for this call, or None to pass it through (not attributed, or unreadable)."""
        try:
            config = self.memori.config
            if config.entity_id is None:
                return None
            cls = ChatTurn if endpoint == "chat" else ResponsesTurn
            turn = cls(
                kwargs,
                stream=stream,
                session_id=str(config.session_id),
                replay_token_budget=self.replay_token_budget,
            )
        except Exception:
            logger.warning(
                "memori: could not read the request; calling without memory", exc_info=True
            )
            self._count("llm_errors")
            return None
        self._count("llm_calls")
        return turn

    def _prepare(self, turn: Turn, block: str, history: list[StoredMessage]) -> dict[str, Any]:
        try:
            kwargs = turn.prepare(block, history)
        except Exception:
            logger.warning("memori: could not inject memory; calling without it", exc_info=True)
            self._count("llm_errors")
            return turn.kwargs
        if turn.replayed:
            self._count("llm_replayed_messages", turn.replayed)
        return kwargs

    def _recall_failed(self, error: BaseException | None = None) -> None:
        logger.warning(
            "memori: recall failed; calling the model without memory", exc_info=error or True
        )
        self._count("llm_recall_errors")

    def _record_failed(self) -> None:
        logger.warning(
            "memori: recording the turn failed; the reply is returned anyway", exc_info=True
        )
        self._count("llm_record_errors")

    def _chunk_failed(self) -> None:
        self._count("llm_errors")

    def _to_record(
        self, turn: Turn, reply: Callable[[], Message | None], partial: bool
    ) -> list[Message] | None:
        try:
            message = reply()
            if partial and message is not None:
                self._count("llm_partial_replies")
            return turn.to_record(message)
        except Exception:
            self._record_failed()
            return None

    # -- sync I/O -----------------------------------------------------------------------------

    def _fetch(self, turn: Turn) -> tuple[str, list[StoredMessage]]:
        block = ""
        history: list[StoredMessage] = []
        transcript_read = False
        failed: Exception | None = None

        def read_transcript() -> None:
            nonlocal history, transcript_read, failed
            transcript_read = True
            try:
                history = self.memori.messages(turn.session_id, limit=self.replay_messages)
            except Exception as e:  # reported below; the recall itself goes on
                failed = e

        try:
            if turn.query:
                # The transcript is read while recall waits for the query's embedding.
                block = self.memori._context(
                    turn.query, while_waiting=read_transcript if turn.wants_history else None
                )
        except Exception as e:
            failed = e
        if turn.wants_history and not transcript_read:
            read_transcript()
        if failed is not None:
            self._recall_failed(failed)  # once per call: the caller sees one failed recall
        return block, history

    def _record(self, turn: Turn, messages: list[Message] | None) -> None:
        if not messages:
            return
        write = self.memori.append if turn.all_new else self.memori.record
        try:
            write(messages, session_id=turn.session_id)
        except Exception:
            self._record_failed()

    def _call(
        self,
        endpoint: Endpoint,
        stream: bool,
        raw: bool,
        original: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        turn = self._begin(endpoint, kwargs, stream)
        if turn is None:
            return original(*args, **kwargs)
        block, history = self._fetch(turn)
        send = self._prepare(turn, block, history)
        token = _BYPASS.set(True)
        try:
            result = original(*args, **send)
        finally:
            _BYPASS.reset(token)
        if turn.stream:

            def on_end(accumulator: Accumulator, partial: bool) -> None:
                self._record(
                    turn, self._to_record(turn, lambda: accumulator.reply(partial), partial)
                )

            return StreamProxy(result, turn.accumulator(), on_end, self._chunk_failed)
        self._record(turn, self._to_record(turn, lambda: turn.reply(_parsed(result, raw)), False))
        return result

    # -- async I/O (same steps; only the awaiting differs) ------------------------------------

    async def _afetch(self, turn: Turn) -> tuple[str, list[StoredMessage]]:
        # One worker-thread hop for recall and the transcript read (each hop costs the event
        # loop a wake-up); the steps are the sync ones.
        return await asyncio.to_thread(self._fetch, turn)

    async def _arecord(self, turn: Turn, messages: list[Message] | None) -> None:
        if messages:
            await asyncio.to_thread(self._record, turn, messages)

    async def _acall(
        self,
        endpoint: Endpoint,
        stream: bool,
        raw: bool,
        original: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        turn = self._begin(endpoint, kwargs, stream)
        if turn is None:
            return await original(*args, **kwargs)
        block, history = await self._afetch(turn)
        send = self._prepare(turn, block, history)
        token = _BYPASS.set(True)
        try:
            result = await original(*args, **send)
        finally:
            _BYPASS.reset(token)
        if turn.stream:

            async def on_end(accumulator: Accumulator, partial: bool) -> None:
                await self._arecord(
                    turn, self._to_record(turn, lambda: accumulator.reply(partial), partial)
                )

            return AsyncStreamProxy(result, turn.accumulator(), on_end, self._chunk_failed)
        await self._arecord(
            turn, self._to_record(turn, lambda: turn.reply(_parsed(result, raw)), False)
        )
        return result


# -- patching one client instance -------------------------------------------------------------

_TARGETS: tuple[tuple[Endpoint, str], ...] = (
    ("chat", "create"),
    ("chat", "parse"),
    ("responses", "create"),
    ("responses", "parse"),
)


# `with_raw_response` calls the resource's method with this header "true" and returns the HTTP
# response (its `.parse()` gives the usual object, parsed once and cached by the SDK);
# `with_streaming_response` sets it to "stream" and leaves reading the body to the caller.
_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"
# How a call's reply can be read: as the usual object, through the raw response's `.parse()`,
# or not at all (the caller reads the body itself).
ReplyAccess = Literal["object", "parse", "none"]
# Cached per resource by the SDK from whatever `create` was when first used: dropped on
# (un)install so they are rebuilt around the current method.
_RAW_VIEWS = ("with_raw_response", "with_streaming_response")


def _reply_access(kwargs: dict[str, Any], stream: bool) -> ReplyAccess:
    """ "object" for a plain call, "parse" for `with_raw_response`, "none" for a raw stream or
    `with_streaming_response`, whose body only the caller reads: those pass through untouched."""
    headers = kwargs.get("extra_headers")
    if not isinstance(headers, dict) or _RAW_RESPONSE_HEADER not in headers:
        return "object"
    return "parse" if headers[_RAW_RESPONSE_HEADER] == "true" and not stream else "none"


def _parsed(result: Any, raw: bool) -> Any:
    return result.parse() if raw else result


def _resource(client: Any, endpoint: Endpoint) -> Any:
    return client.chat.completions if endpoint == "chat" else client.responses


def _wrap_call(
    hook: _Hook, endpoint: Endpoint, method: str, original: Callable[..., Any]
) -> Callable[..., Any]:
    streams = method == "create"  # `parse` never returns a stream

    if hook.is_async:

        @functools.wraps(original)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            registry = hook.current()
            if registry is None or _BYPASS.get():
                return await original(*args, **kwargs)
            stream = streams and kwargs.get("stream") is True
            access = _reply_access(kwargs, stream)
            if access == "none":
                registry._count("llm_passed_through")
                return await original(*args, **kwargs)
            raw = access == "parse"
            return await registry._acall(endpoint, stream, raw, original, args, kwargs)

        wrapper: Callable[..., Any] = async_wrapper
    else:

        @functools.wraps(original)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            registry = hook.current()
            if registry is None or _BYPASS.get():
                return original(*args, **kwargs)
            stream = streams and kwargs.get("stream") is True
            access = _reply_access(kwargs, stream)
            if access == "none":
                registry._count("llm_passed_through")
                return original(*args, **kwargs)
            return registry._call(endpoint, stream, access == "parse", original, args, kwargs)

        wrapper = sync_wrapper
    setattr(wrapper, _WRAPPED_MARK, True)
    return wrapper


def _wrap_copy(hook: _Hook, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def copy_wrapper(*args: Any, **kwargs: Any) -> Any:
        copied = original(*args, **kwargs)
        with _INSTALL_LOCK:
            if getattr(copied, _HOOK_ATTR, None) is None:
                _install(copied, hook)
        return copied

    setattr(copy_wrapper, _WRAPPED_MARK, True)
    return copy_wrapper


def _install(client: Any, hook: _Hook) -> None:
    """Patch `client`'s own resources (callers hold `_INSTALL_LOCK`)."""
    for endpoint, method in _TARGETS:
        resource = _resource(client, endpoint)
        original = getattr(resource, method, None)
        if original is None or getattr(original, _WRAPPED_MARK, False):
            continue
        setattr(resource, method, _wrap_call(hook, endpoint, method, original))
    _drop_raw_views(client)
    for method in ("with_options", "copy"):
        original = getattr(client, method, None)
        if original is not None and not getattr(original, _WRAPPED_MARK, False):
            setattr(client, method, _wrap_copy(hook, original))
    setattr(client, _HOOK_ATTR, hook)
    with contextlib.suppress(TypeError):  # not weak-referenceable: it just cannot be restored
        hook.clients.add(client)


def _drop_raw_views(client: Any) -> None:
    for endpoint in ("chat", "responses"):
        state = vars(_resource(client, endpoint))
        for view in _RAW_VIEWS:
            state.pop(view, None)


def _uninstall(client: Any) -> None:
    """Remove the patches from `client` (callers hold `_INSTALL_LOCK`)."""
    for endpoint, method in _TARGETS:
        resource = _resource(client, endpoint)
        if getattr(vars(resource).get(method), _WRAPPED_MARK, False):
            delattr(resource, method)
    _drop_raw_views(client)
    for method in ("with_options", "copy"):
        if getattr(vars(client).get(method), _WRAPPED_MARK, False):
            delattr(client, method)
    with contextlib.suppress(AttributeError):
        delattr(client, _HOOK_ATTR)
