"""A request made ready for the engine: checked, templated, tokenized, its grammar compiled.

Runs on the pre-processing pool (preprocess.py), off the event loop: limits first (the model
name, the sampling fields the vocabulary bounds, the prompt-size bound), then the chat
template, tokenizing and grammar compilation, so a request that cannot run costs little.
``OpenAIService`` (service.py) awaits these and turns what the engine streams into answers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from ..core.backend import Tokenizer
from ..core.grammar import Grammar
from ..core.types import GenerationRequest, SamplingParams
from ..engine.async_engine import AsyncEngine
from ..errors import ContextLengthExceeded, InvalidRequest, NotSupported
from .messages import normalize_messages
from .prompt_size import PromptBound
from .reasoning import ReasoningOptions
from .reasoning_plan import ReasoningPlan, template_kwargs
from .schema import ChatCompletionRequest, CompletionRequest
from .structured import check_grammar_text, compile_grammar, grammar_text, response_schema
from .text import require_text
from .tools import ToolPlan


class Preparation:
    def __init__(
        self,
        engine: AsyncEngine,
        reasoning: ReasoningOptions,
        check_model: Callable[[str | None], None],
    ) -> None:
        self.engine, self.reasoning, self.check_model = engine, reasoning, check_model
        self._prompt_bound: PromptBound | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def bound(self) -> PromptBound:
        """The prompt-size bound (measured on first use: the vocabulary's longest piece)."""
        if self._prompt_bound is None:
            self._prompt_bound = PromptBound(self.tokenizer, self.engine.context_length)
        return self._prompt_bound

    def chat(
        self, req: ChatCompletionRequest
    ) -> tuple[GenerationRequest, ToolPlan | None, ReasoningPlan | None]:
        self.check_model(req.model)
        require_text(req)
        req.check_supported()
        self._check_sampling(req.sampling())
        caps = self.engine.capabilities
        if not caps.chat:
            raise NotSupported("This model does not do chat completions.", param="messages")
        if req.logprobs and not caps.logprobs:
            raise InvalidRequest("This backend cannot return logprobs.", param="logprobs")
        messages = normalize_messages(req.messages, vision=caps.vision)
        choice: Any = req.tool_choice
        if choice is not None and not isinstance(choice, str):
            choice = choice.model_dump()
        plan = ToolPlan.build(
            req.tools,
            choice,
            req.parallel_tool_calls,
            self.tokenizer.chat_template_source,
            any(m["role"] == "tool" or m.get("tool_calls") for m in messages),
        )
        schema = response_schema(req.response_format)
        tools = None
        if plan is not None:
            messages, tools = plan.messages(messages), plan.template_tools()
        # What the template will render at least: the contents, the calls in the history and
        # the tool definitions (in a Hermes system prompt, or as the template's ``tools``).
        rendered = [m["content"] for m in messages] + ([json.dumps(tools)] if tools else [])
        rendered += [json.dumps(m["tool_calls"]) for m in messages if m.get("tool_calls")]
        rendered += [m["reasoning_content"] for m in messages if m.get("reasoning_content")]
        if req.chat_template_kwargs:
            rendered.append(json.dumps(req.chat_template_kwargs))
        self.bound().check(rendered, "messages")
        kwargs = template_kwargs(
            req.reasoning_effort, req.chat_template_kwargs, self.tokenizer.chat_template_source
        )
        prompt = self.tokenizer.chat_tokens(messages, tools, kwargs)
        constrained = schema is not None or (plan is not None and plan.forced)
        prompt, thinking = ReasoningPlan.build(
            self.tokenizer, prompt, req.reasoning_effort, self.reasoning, constrained
        )
        gen = req.to_generation(prompt, self.engine.context_length)
        calls = None  # auto with a response_format: the reply is calls or the JSON answer
        if plan is not None and plan.active and (plan.forced or schema is not None):
            calls = plan.calls_grammar()
        if plan is not None and plan.forced:
            schema = None  # the reply is calls only; response_format applies to content
        text = grammar_text(schema, calls)
        if text is not None:
            gen = dataclasses.replace(gen, grammar=self._grammar(*text))
        if thinking is not None:
            gen = thinking.apply(gen, self.tokenizer)
        return gen, plan, thinking

    def _grammar(self, text: str, param: str) -> Grammar:
        try:
            tokenizer = self.tokenizer.grammar_tokenizer()
        except NotSupported as exc:
            check_grammar_text(text, param)
            raise InvalidRequest(exc.message, param=param) from None
        return compile_grammar(text, param, tokenizer)

    def _check_sampling(self, sampling: SamplingParams) -> None:
        """Sampling fields that depend on the model: token ids a client sent (logit_bias
        keys) must exist in the vocabulary, and top_k cannot exceed it."""
        vocab = self.tokenizer.vocab_size
        if vocab:
            if sampling.top_k > vocab:
                raise InvalidRequest(
                    f"top_k must be between 0 (off) and the vocabulary size, {vocab}; got "
                    f"{sampling.top_k}.",
                    param="top_k",
                )
            bad = [t for t, _ in sampling.logit_bias if not 0 <= t < vocab]
            if bad:
                raise InvalidRequest(
                    f"logit_bias names token ids outside the vocabulary (0-{vocab - 1}): "
                    f"{bad[:5]}.",
                    param="logit_bias",
                )

    def completion(self, req: CompletionRequest) -> list[GenerationRequest]:
        self.check_model(req.model)
        require_text(req)
        req.check_supported()
        self._check_sampling(req.sampling())
        if not self.engine.capabilities.completions:
            raise NotSupported("This model does not do text completions.", param="prompt")
        context = self.engine.context_length
        prompts = req.prompts()
        self.bound().check((p for p in prompts if isinstance(p, str)), "prompt")
        gens: list[GenerationRequest] = []
        vocab = self.tokenizer.vocab_size
        for prompt in prompts:
            if isinstance(prompt, str):
                tokens = self.tokenizer.tokenize(prompt)
                if not tokens:
                    raise InvalidRequest("prompt has no tokens: give some text.", param="prompt")
            else:
                if len(prompt) >= context:  # before looking at each id
                    raise ContextLengthExceeded(
                        f"This model's maximum context length is {context} tokens; the "
                        f"prompt has {len(prompt)} tokens.",
                        param="prompt",
                    )
                if vocab and any(not 0 <= t < vocab for t in prompt):
                    raise InvalidRequest(
                        "prompt holds token ids outside the vocabulary.", param="prompt"
                    )
                tokens = list(prompt)
            gens.append(req.to_generation(tokens, context))
        return gens
