"""The OpenAI API over an engine: requests in, response bodies and stream chunks out."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from ..core.backend import Tokenizer
from ..core.types import Finished, GenerationRequest, TextDelta
from ..engine.async_engine import AsyncEngine, EventStream
from ..engine.metrics import EngineMetrics
from ..errors import (
    BackendError,
    BridgeError,
    NotSupported,
)
from .embeddings import create_embeddings
from .embeddings import unavailable as embeddings_unavailable
from .model_names import ModelNames
from .prepare import Preparation
from .preprocess import Preprocessor
from .reasoning import ReasoningOptions
from .reasoning_plan import ReasoningPlan
from .responses import ChunkFactory, CompletionLogprobs, chat_logprobs, new_id, usage
from .schema import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from .tool_stream import Split
from .tools import ToolPlan, new_call_id, openai_call


@dataclasses.dataclass
class _Result:
    text: str
    finish: Finished
    deltas: list[TextDelta]


def _fan_out(gen: GenerationRequest, n: int) -> list[GenerationRequest]:
    """n choices of one prompt: with a seed, choice i uses seed + i so they differ."""
    seed = gen.sampling.seed
    return [gen if i == 0 or seed is None else gen.with_seed(seed + i) for i in range(n)]


def _raise_if_failed(finish: Finished) -> None:
    if finish.reason == "error":
        err = finish.error
        raise err if isinstance(err, BridgeError) else BackendError(str(err))


async def _merge(streams: Sequence[EventStream]) -> AsyncIterator[tuple[int, Any]]:
    """Events of several streams as they come, tagged with the stream's index."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, stream: EventStream) -> None:
        async for event in stream:
            await queue.put((i, event))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        finished = 0
        while finished < len(streams):
            i, event = await queue.get()
            if isinstance(event, Finished):
                finished += 1
            yield i, event
    finally:
        for t in tasks:
            t.cancel()


T = TypeVar("T")
# Streams being closed in the background: the loop keeps only weak references to tasks.
_closing: set[asyncio.Task[None]] = set()


class OpenAIService:
    def __init__(
        self,
        engine: AsyncEngine,
        prep: Preprocessor | None = None,
        reasoning: ReasoningOptions | None = None,
        *,
        aliases: Sequence[str] = (),
        strict_model_names: bool = False,
        served_name: str | None = None,
    ) -> None:
        self.engine = engine
        self.prep = prep or Preprocessor()
        self.reasoning = reasoning or ReasoningOptions()
        embedder = engine.embedder
        self.names = ModelNames(
            engine.model_id,
            aliases=aliases,
            embedder_id=embedder.model_id if embedder else None,
            strict=strict_model_names,
        )
        self.served_name = served_name or engine.model_id  # the answers' ``model``
        self.prepare = Preparation(engine, self.reasoning, self.check_model)

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (host work: call it from the pre-processing pool)."""
        return self.engine.tokenizer

    # -- models ------------------------------------------------------------------------
    def check_model(self, name: str | None) -> None:
        self.names.check_chat(name)

    def models(self) -> dict[str, Any]:
        return self.names.listing()

    def model(self, model_id: str) -> dict[str, Any]:
        return self.names.entry(model_id)

    # -- operations ------------------------------------------------------------------
    def health(self) -> tuple[dict[str, Any], bool]:
        """``GET /health``'s body, and whether the server is ready."""
        m = self.engine.metrics()
        body: dict[str, Any] = {
            "status": "ok",
            "backend": self.engine.name,
            "model": self.engine.model_id,
            "queued": m.queue_depth,
            "running": m.running,
        }
        group = self.engine.group_info  # served by an MLX distributed group
        if group is not None:
            body["group"] = group.as_dict()
        why = self.engine.health()
        if why is not None:  # the engine failed or is stopping: not ready
            body.update(status="error", reason=why)
        return body, why is None

    def engine_metrics(self) -> list[tuple[dict[str, str], EngineMetrics]]:
        """The engines ``/metrics`` reports, with their labels (none: there is one)."""
        return [({}, self.engine.metrics())]

    async def load_model(self, name: str | None) -> dict[str, Any]:
        self.check_model(name)
        return {"success": True}  # the one model is loaded for the server's whole life

    async def unload_model(self, name: str | None) -> dict[str, Any]:
        raise NotSupported(
            "This server serves one model for its whole life; configure "
            "several (--model NAME=REF ...) to load and unload them.",
            param="model",
        )

    # -- prompts -----------------------------------------------------------------------
    # Everything from the request to the engine runs on the pre-processing pool
    # (preprocess.py, prepare.py): limits, templating, tokenizing, grammar compilation.
    async def _chat_generation(
        self, req: ChatCompletionRequest
    ) -> tuple[GenerationRequest, ToolPlan | None, ReasoningPlan | None]:
        return await self.prep.run(self.prepare.chat, req)

    async def _completion_generations(self, req: CompletionRequest) -> list[GenerationRequest]:
        return await self.prep.run(self.prepare.completion, req)

    def _open(self, gens: list[GenerationRequest]) -> list[EventStream]:
        streams: list[EventStream] = []
        try:
            for gen in gens:
                streams.append(self.engine.open(gen))
        except BaseException:
            for s in streams:
                _closing.add(task := asyncio.ensure_future(s.aclose()))
                task.add_done_callback(_closing.discard)
            raise
        return streams

    async def _collect(self, gens: list[GenerationRequest]) -> list[_Result]:
        streams = self._open(gens)
        results = [_Result("", Finished("length", 0, 0), []) for _ in gens]
        async with AsyncExitStack() as stack:
            for s in streams:
                stack.push_async_callback(s.aclose)
            async for i, event in _merge(streams):
                if isinstance(event, TextDelta):
                    results[i].text += event.text
                    results[i].deltas.append(event)
                else:
                    _raise_if_failed(event)
                    results[i].finish = event
        return results

    # -- chat ------------------------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest) -> dict[str, Any]:
        gen, plan, thinking = await self._chat_generation(req)
        results = await self._collect(_fan_out(gen, req.n))
        choices = []
        for i, r in enumerate(results):
            lp = None
            if req.logprobs:
                lp = {"content": [c for d in r.deltas for c in chat_logprobs(d)["content"]]}
            text = r.text
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking is not None:  # the reasoning apart; tool calls from the answer only
                parser = thinking.parser()
                head, tail = parser.feed(text), parser.finish()
                text = message["content"] = head.content + tail.content
                message.update(self.reasoning.fields(head.reasoning + tail.reasoning or None))
            reason: str = r.finish.reason  # or "tool_calls", which only this layer knows
            splitter = plan.splitter(stream=False) if plan is not None else None
            if splitter is not None:
                part, rest = splitter.feed(text), splitter.finish()
                calls = part.calls + rest.calls
                content = part.content + rest.content
                # a forced reply is calls, never its markup
                if calls or (plan is not None and plan.forced):
                    message["content"] = content if content.strip() else None
                if calls:
                    message["tool_calls"] = [openai_call(c) for c in calls]
                    reason = "tool_calls" if reason == "stop" else reason
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": lp,
                    "finish_reason": reason,
                    **_stop_reason(r.finish),
                }
            )
        first = results[0].finish
        return {
            "id": new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.served_name,
            "choices": choices,
            "usage": usage(
                first.prompt_tokens,
                sum(r.finish.completion_tokens for r in results),
                first.cached_tokens,
                sum(r.finish.reasoning_tokens for r in results) if thinking is not None else None,
            ),
        }

    async def chat_stream(self, req: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
        """Validate and submit now (errors raise before any byte is sent); stream later."""
        return (await self.open_chat_stream(req))[1]

    async def open_chat_stream(
        self, req: ChatCompletionRequest
    ) -> tuple[int, AsyncIterator[dict[str, Any]]]:
        """``chat_stream`` with the prompt's token count (the Messages API sends it first)."""
        gen, plan, thinking = await self._chat_generation(req)
        streams = self._open(_fan_out(gen, req.n))
        factory = ChunkFactory(
            "chat.completion.chunk", self.served_name, new_id("chatcmpl"), req.include_usage
        )
        return len(gen.prompt_tokens), self._chat_chunks(
            streams, factory, req.logprobs, plan, thinking
        )

    def model_name(self, name: str | None) -> str:
        self.check_model(name)
        return self.served_name

    async def run_on(self, name: str | None, call: Callable[[OpenAIService], Awaitable[T]]) -> T:
        self.check_model(name)
        return await call(self)

    async def chat_prompt(self, req: ChatCompletionRequest) -> tuple[int, ...]:
        """The prompt tokens ``req`` would prefill (template, tools and all); runs nothing."""
        return (await self._chat_generation(req))[0].prompt_tokens

    async def _chat_chunks(
        self,
        streams: list[EventStream],
        f: ChunkFactory,
        want_logprobs: bool,
        plan: ToolPlan | None,
        thinking: ReasoningPlan | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        splitters = [plan.splitter(stream=True) if plan is not None else None for _ in streams]
        parsers = [thinking.parser() if thinking is not None else None for _ in streams]
        called = [0] * len(streams)
        reasoned = 0

        def split_reasoning(i: int, text: str, lp: Any, last: bool) -> Iterator[dict[str, Any]]:
            """The reasoning part of a piece as its own chunk; then the answer part."""
            parser = parsers[i]
            if parser is None:
                answer = text
            else:
                parsed = parser.finish() if last else parser.feed(text)
                answer = parsed.content
                if parsed.reasoning:
                    yield f.chunk(
                        [
                            {
                                "index": i,
                                "delta": self.reasoning.fields(parsed.reasoning),
                                "logprobs": None if answer else lp,
                                "finish_reason": None,
                            }
                        ]
                    )
                    if not answer:
                        lp = None
            splitter = splitters[i]
            yield from pieces(i, splitter.feed(answer) if splitter else Split(answer), lp)
            if last and splitter is not None:
                yield from pieces(i, splitter.finish())

        def pieces(i: int, split: Split, lp: Any = None) -> Iterator[dict[str, Any]]:
            """Chunks for one piece of a split reply: its content, then its tool-call deltas
            (a call's first carries index, id, type and name; the rest, argument text)."""
            if split.content or lp is not None:
                yield f.chunk(
                    [
                        {
                            "index": i,
                            "delta": {"content": split.content},
                            "logprobs": lp,
                            "finish_reason": None,
                        }
                    ]
                )
            for d in split.deltas:
                call: dict[str, Any] = {"index": d.index, "function": {"arguments": d.arguments}}
                if d.name is not None:
                    call = {
                        "index": d.index,
                        "id": new_call_id(),
                        "type": "function",
                        "function": {"name": d.name, "arguments": d.arguments},
                    }
                    called[i] += 1
                yield f.chunk(
                    [
                        {
                            "index": i,
                            "delta": {"tool_calls": [call]},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )

        async with AsyncExitStack() as stack:
            for s in streams:
                stack.push_async_callback(s.aclose)
            for i in range(len(streams)):
                yield f.chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            prompt = completion = cached = 0
            async for i, event in _merge(streams):
                if isinstance(event, TextDelta):
                    lp = chat_logprobs(event) if want_logprobs else None
                    for chunk in split_reasoning(i, event.text, lp, last=False):
                        yield chunk
                    continue
                if event.reason == "error":
                    yield _error_frame(event)
                    return
                if splitters[i] is not None or parsers[i] is not None:
                    for chunk in split_reasoning(i, "", None, last=True):
                        yield chunk
                prompt, cached = event.prompt_tokens, event.cached_tokens
                completion += event.completion_tokens
                reasoned += event.reasoning_tokens
                reason = "tool_calls" if called[i] and event.reason == "stop" else event.reason
                yield f.chunk(
                    [
                        {
                            "index": i,
                            "delta": {},
                            "logprobs": None,
                            "finish_reason": reason,
                            **_stop_reason(event),
                        }
                    ]
                )
            if f.include_usage:
                yield f.usage_chunk(
                    prompt, completion, cached, reasoned if thinking is not None else None
                )

    # -- completions -------------------------------------------------------------------
    async def completion(self, req: CompletionRequest) -> dict[str, Any]:
        gens = [g for gen in await self._completion_generations(req) for g in _fan_out(gen, req.n)]
        results = await self._collect(gens)
        echoed = (
            await self.prep.run(lambda: [self.tokenizer.decode(g.prompt_tokens) for g in gens])
            if req.echo
            else None
        )
        choices = []
        for i, r in enumerate(results):
            text = r.text
            lp = None
            if req.logprobs is not None:
                acc = CompletionLogprobs()
                for d in r.deltas:
                    acc.add(d)
                lp = acc.whole()
            if echoed is not None:
                text = echoed[i] + text
            choices.append(
                {"index": i, "text": text, "logprobs": lp, "finish_reason": r.finish.reason}
            )
        prompt_total = sum(len(g.prompt_tokens) for g in gens[:: req.n])
        return {
            "id": new_id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.served_name,
            "choices": choices,
            "usage": usage(prompt_total, sum(r.finish.completion_tokens for r in results)),
        }

    async def completion_stream(self, req: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        gens = [g for gen in await self._completion_generations(req) for g in _fan_out(gen, req.n)]
        streams = self._open(gens)
        f = ChunkFactory("text_completion", self.served_name, new_id("cmpl"), req.include_usage)
        return self._completion_chunks(
            streams, f, req.logprobs is not None, sum(len(g.prompt_tokens) for g in gens[:: req.n])
        )

    async def _completion_chunks(
        self, streams: list[EventStream], f: ChunkFactory, want_logprobs: bool, prompt_total: int
    ) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            for s in streams:
                stack.push_async_callback(s.aclose)
            lps = [CompletionLogprobs() for _ in streams]
            completion = 0
            async for i, event in _merge(streams):
                if isinstance(event, TextDelta):
                    lp = lps[i].add(event) if want_logprobs else None
                    yield f.chunk(
                        [{"index": i, "text": event.text, "logprobs": lp, "finish_reason": None}]
                    )
                    continue
                if event.reason == "error":
                    yield _error_frame(event)
                    return
                completion += event.completion_tokens
                yield f.chunk(
                    [{"index": i, "text": "", "logprobs": None, "finish_reason": event.reason}]
                )
            if f.include_usage:
                yield f.usage_chunk(prompt_total, completion)

    # -- embeddings --------------------------------------------------------------------
    async def embeddings(self, req: EmbeddingRequest) -> dict[str, Any]:
        embedder = self.engine.embedder
        if embedder is None:
            self.check_model(req.model)
            raise embeddings_unavailable(
                self.engine.name, self.engine.model_id, self.engine.embedding_hint
            )
        self.names.check_embedding(req.model)
        return await create_embeddings(embedder, req, self.engine.on_device)


def _stop_reason(finish: Finished) -> dict[str, Any]:
    """vLLM's ``stop_reason`` extension, given only when a stop string ended the choice (the
    Messages API reports it as ``stop_sequence``)."""
    return {"stop_reason": finish.stop_string} if finish.stop_string is not None else {}


def _error_frame(finish: Finished) -> dict[str, Any]:
    err = finish.error
    if not isinstance(err, BridgeError):
        err = BackendError(f"Generation failed: {err}")
    return err.to_openai()
