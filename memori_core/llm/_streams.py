"""Proxies for the SDK's `Stream`/`AsyncStream` that record the turn when the stream ends.

The proxy keeps the stream's interface: iteration, `close()`, the (async) context manager, and
every other attribute (`response`, ...) by delegation. The turn is recorded once: when the
stream is exhausted (complete), or when it is closed or fails before the end (partial).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any

from memori_core.llm._turn import Accumulator

__all__ = ["AsyncStreamProxy", "StreamProxy"]

logger = logging.getLogger("memori_core.llm")

# Recording tasks started while a stream is being cancelled; kept so they are not collected early.
_BACKGROUND: set[asyncio.Task[None]] = set()


def _add(accumulator: Accumulator, item: Any, on_error: Callable[[], None]) -> None:
    try:
        accumulator.add(item)
    except Exception:
        logger.warning(
            "memori: could not read a stream chunk; the reply may be stored incomplete",
            exc_info=True,
        )
        on_error()


class StreamProxy:
    """Wraps a sync SDK stream; calls `on_end(accumulator, partial)` once when it ends."""

    def __init__(
        self,
        stream: Any,
        accumulator: Accumulator,
        on_end: Callable[[Accumulator, bool], None],
        on_error: Callable[[], None],
    ) -> None:
        self._stream = stream
        self._accumulator = accumulator
        self._on_end = on_end
        self._on_error = on_error
        self._iterator: Iterator[Any] | None = None
        self._ended = False

    def __iter__(self) -> StreamProxy:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self._stream)
        try:
            item = next(self._iterator)
        except StopIteration:
            self._end(partial=False)
            raise
        except BaseException:
            self._end(partial=True)
            raise
        _add(self._accumulator, item, self._on_error)
        return item

    def close(self) -> None:
        """Close the underlying stream; a reply cut short is recorded as partial."""
        try:
            self._stream.close()
        finally:
            self._end(partial=True)

    def __enter__(self) -> StreamProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes the proxy does not have itself: `response`, `_options`, ...
        return getattr(self._stream, name)

    def __repr__(self) -> str:
        return f"<memori stream proxy for {self._stream!r}>"

    def _end(self, *, partial: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self._on_end(self._accumulator, partial)


class AsyncStreamProxy:
    """Wraps an async SDK stream; awaits `on_end(accumulator, partial)` once when it ends."""

    def __init__(
        self,
        stream: Any,
        accumulator: Accumulator,
        on_end: Callable[[Accumulator, bool], Awaitable[None]],
        on_error: Callable[[], None],
    ) -> None:
        self._stream = stream
        self._accumulator = accumulator
        self._on_end = on_end
        self._on_error = on_error
        self._iterator: AsyncIterator[Any] | None = None
        self._ended = False

    def __aiter__(self) -> AsyncStreamProxy:
        return self

    async def __anext__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._stream.__aiter__()
        try:
            item = await self._iterator.__anext__()
        except StopAsyncIteration:
            await self._end(partial=False)
            raise
        except Exception:
            await self._end(partial=True)
            raise
        except BaseException:
            # Cancelled (e.g. the web client went away): record without delaying cancellation.
            self._end_in_background()
            raise
        _add(self._accumulator, item, self._on_error)
        return item

    async def close(self) -> None:
        """Close the underlying stream; a reply cut short is recorded as partial."""
        try:
            result = self._stream.close()
            if inspect.isawaitable(result):
                await result
        finally:
            await self._end(partial=True)

    async def __aenter__(self) -> AsyncStreamProxy:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __repr__(self) -> str:
        return f"<memori async stream proxy for {self._stream!r}>"

    async def _end(self, *, partial: bool) -> None:
        if self._ended:
            return
        self._ended = True
        await self._on_end(self._accumulator, partial)

    def _end_in_background(self) -> None:
        if self._ended:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._end(partial=True))
        except RuntimeError:
            return
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
