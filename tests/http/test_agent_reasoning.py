"""Reasoning on the Responses and Messages APIs: a ``reasoning`` output item / ``thinking``
block, streamed and not, and ``reasoning.effort`` / ``thinking`` reaching the chat request.

Over the fake backend with the Qwen3-style template of the reasoning tests (its generation
prompt opens <think>). Needs the chat reasoning support (protocol/reasoning.py, issue 15):
skipped where that is not in the tree yet.
"""

from __future__ import annotations

from pathlib import Path

import anthropic
import openai
import pytest

from dvai_bridge.backends.fake import FakeBackend

pytest.importorskip("dvai_bridge.protocol.reasoning", reason="chat reasoning (issue 15) absent")

TEMPLATE = Path(__file__).parents[1] / "data" / "qwen3_style.jinja"
REPLY = "Two and two.\n</think>\n\nIt is 4."


@pytest.fixture
def thinker(client_for):
    backend = FakeBackend(reply=REPLY)
    backend.tokenizer.set_chat_template(TEMPLATE.read_text())
    return client_for(backend)


def test_responses_reasoning_item(thinker) -> None:
    o = openai.OpenAI(
        base_url="http://127.0.0.1/v1", api_key="k", http_client=thinker, max_retries=0
    )
    r = o.responses.create(model="m", input="2+2?", reasoning={"effort": "high"})
    kinds = [i.type for i in r.output]
    assert kinds == ["reasoning", "message"]
    assert r.output[0].content[0].text == "Two and two.\n" and r.output_text == "It is 4."
    assert r.usage.output_tokens_details.reasoning_tokens > 0
    events = list(o.responses.create(model="m", input="2+2?", stream=True))
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert thought == "Two and two.\n" and events[-1].response.output_text == "It is 4."
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # the effort reaches the chat request: an unknown one is refused there
    with pytest.raises(openai.BadRequestError):
        o.responses.create(model="m", input="2+2?", reasoning={"effort": "huge"})
    # the reasoning item goes back into the history with previous_response_id
    again = o.responses.create(model="m", input="and 3+3?", previous_response_id=r.id)
    assert again.output_text == "It is 4."


def test_messages_thinking_block(thinker) -> None:
    c = anthropic.Anthropic(
        base_url="http://127.0.0.1", api_key="k", http_client=thinker, max_retries=0
    )
    m = c.messages.create(
        model="m",
        max_tokens=200,
        messages=[{"role": "user", "content": "2+2?"}],
        thinking={"type": "enabled", "budget_tokens": 2048},
    )
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == "Two and two.\n" and m.content[1].text == "It is 4."
    with c.messages.stream(
        model="m", max_tokens=200, messages=[{"role": "user", "content": "2+2?"}]
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Two and two.\n"
