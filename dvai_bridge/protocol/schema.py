"""OpenAI wire schema for requests. Ranges live in ``Field``; unknown fields are accepted.

Each request converts itself into engine terms (``to_generation``), so the engine never sees
pydantic and the routes never pick fields apart.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator
from pydantic_core import PydanticCustomError

from ..core.types import GenerationRequest, SamplingParams
from ..errors import InvalidRequest

log = logging.getLogger(__name__)


class OpenAIBaseModel(BaseModel):
    """Accepts fields it does not know (clients send many) and logs their names once."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_extra(self) -> OpenAIBaseModel:
        if self.model_extra:
            log.info(
                "%s: ignoring unknown fields %s", type(self).__name__, sorted(self.model_extra)
            )
        return self


class TextPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class NonTextPart(OpenAIBaseModel):
    type: Literal["image_url", "input_audio", "file", "refusal"]


ContentPart = Annotated[TextPart | NonTextPart, Field(discriminator="type")]


class FunctionCall(OpenAIBaseModel):
    name: str
    # OpenAI sends a JSON string; some clients send the object itself.
    arguments: str | dict[str, Any] = "{}"


class ToolCall(OpenAIBaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None


class FunctionName(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"]
    function: FunctionName


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


Stop = str | Annotated[list[str], Field(max_length=16)] | None

# Limits a request is checked against before any work is built for it (docs/usage.md).
MAX_SEQUENCES = 64  # prompts x n: the sequences one request may queue
MAX_LOGIT_BIAS = 1024  # entries in logit_bias
MAX_TOP_K = 2**31 - 1  # the backends' C int; the model's vocabulary is checked later
GREEDY_BELOW = 1e-5  # a temperature below this samples greedily (1 / 1e-300 overflows)


class _SamplingFields(OpenAIBaseModel):
    """Fields chat and completions share."""

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: (
        Annotated[
            dict[str, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=MAX_LOGIT_BIAS)
        ]
        | None
    ) = None
    user: str | None = None
    # Extensions most local servers accept.
    top_k: int = Field(default=0, ge=0, le=MAX_TOP_K)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def sampling(self) -> SamplingParams:
        bias: list[tuple[int, float]] = []
        for key, value in (self.logit_bias or {}).items():
            try:
                bias.append((int(key), float(value)))
            except ValueError:
                raise InvalidRequest(
                    f"logit_bias keys must be token ids, got {key!r}.", param="logit_bias"
                ) from None
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        if top_p == 0.0 or temperature < GREEDY_BELOW:  # only the most likely token: greedy
            temperature = 0.0
        return SamplingParams(
            temperature=temperature,
            top_p=top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias=tuple(bias),
        )

    def _generation(
        self,
        prompt: list[int],
        max_tokens: int | None,
        context_length: int,
        logprobs: bool,
        top_logprobs: int,
    ) -> GenerationRequest:
        from ..errors import ContextLengthExceeded

        room = context_length - len(prompt)
        if room <= 0:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context_length} tokens; the prompt "
                f"has {len(prompt)} tokens. Shorten the messages.",
                param="messages" if hasattr(self, "messages") else "prompt",
            )
        return GenerationRequest(
            prompt_tokens=tuple(prompt),
            sampling=self.sampling(),
            max_tokens=min(max_tokens or room, room),
            stop=self.stop_list(),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Reasoning models (protocol/reasoning.py): how much to think, and variables for the chat
    # template (e.g. {"enable_thinking": false}).
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # The legacy function-calling fields: refused (400) rather than silently ignored.
    functions: Any = None
    function_call: Any = None

    def check_supported(self) -> None:
        """Refuse what this server cannot honour instead of ignoring it."""
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs: true.", param="top_logprobs")
        for legacy, new in (("functions", "tools"), ("function_call", "tool_choice")):
            if getattr(self, legacy) is not None:
                raise InvalidRequest(
                    f"{legacy} is OpenAI's deprecated function-calling field, which this server "
                    f"does not serve; use {new} (replies carry message.tool_calls).",
                    param=legacy,
                )
        # tools, tool_choice and response_format are checked where they are used
        # (protocol/tools.py, protocol/structured.py), against the model's template.

    def to_generation(self, prompt: list[int], context_length: int) -> GenerationRequest:
        return self._generation(
            prompt,
            self.max_completion_tokens or self.max_tokens,
            context_length,
            self.logprobs,
            self.top_logprobs or 0,
        )


def _few_prompts(value: Any) -> Any:
    """A list of prompts is counted before its items are validated (3.5 M token lists took
    pydantic 19 s); a list of token ids is one prompt."""
    if isinstance(value, list) and len(value) > MAX_SEQUENCES and not isinstance(value[0], int):
        raise PydanticCustomError(
            "too_many_prompts",
            "at most {limit} prompts per request, got {count}",
            {"limit": MAX_SEQUENCES, "count": len(value)},
        )
    return value


TokenId = Annotated[int, Strict()]  # true/false are not token ids (JSON booleans)
PromptInput = Annotated[
    str | list[str] | list[TokenId] | list[list[TokenId]], BeforeValidator(_few_prompts)
]


class CompletionRequest(_SamplingFields):
    prompt: PromptInput
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=16)

    def check_supported(self) -> None:
        count = (
            1
            if isinstance(self.prompt, str) or not self.prompt or isinstance(self.prompt[0], int)
            else len(self.prompt)
        )
        if count * self.n > MAX_SEQUENCES:
            raise InvalidRequest(
                f"This request asks for {count} prompts x n={self.n} = {count * self.n} "
                f"completions; at most {MAX_SEQUENCES} are served per request.",
                param="n",
            )
        if self.suffix:
            raise InvalidRequest("suffix (fill-in-the-middle) is not supported.", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequest("best_of other than n is not supported.", param="best_of")
        if self.echo and self.stream:
            raise InvalidRequest("echo is not supported with stream.", param="echo")
        if self.echo and self.logprobs is not None:
            raise InvalidRequest(
                "echo with logprobs is not supported: logprobs are computed for generated "
                "tokens only. Drop echo or logprobs.",
                param="echo",
            )

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts, each text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            p = [p]
        if not p:
            raise InvalidRequest("prompt must not be empty.", param="prompt")
        prompts = [list(p)] if all(isinstance(x, int) for x in p) else list(p)
        for i, one in enumerate(prompts):
            if not one:
                where = "prompt" if isinstance(self.prompt, str) else f"prompt[{i}]"
                raise InvalidRequest(f"{where} is empty: give text or token ids.", param="prompt")
        return prompts  # type: ignore[return-value]

    def to_generation(self, prompt: list[int], context_length: int) -> GenerationRequest:
        want = self.logprobs is not None
        return self._generation(prompt, self.max_tokens, context_length, want, self.logprobs or 0)


class EmbeddingRequest(OpenAIBaseModel):
    input: str | list[str] | list[TokenId] | list[list[TokenId]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
