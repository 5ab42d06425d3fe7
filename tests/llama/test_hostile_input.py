"""The hostile cases of tests/e2e/test_hostile_input.py against the llama backend on the same
SmolLM2 GGUF (issue 13 items 1, 3, 8, 12): each bad request is a 400 naming its field, huge
prompts are refused cheaply, and sampled and greedy requests answer after every case."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dvai_bridge import Bridge, StartConfig
from tests.e2e.conftest import E2EServer
from tests.e2e.test_hostile_input import (  # noqa: F401 - collected here, on this server
    test_a_15_mib_message_is_refused_cheaply,
    test_a_15_mib_tool_description_is_refused_cheaply,
    test_a_prompt_just_under_the_size_bound_is_tokenized_and_refused,
    test_client_errors_are_400_naming_the_field,
    test_extreme_sampling_values_are_served_and_hurt_nothing,
    test_top_k_past_the_vocabulary_is_a_400_and_sampling_still_works,
    watch,
)


@pytest.fixture(scope="module")
def e2e_server(gguf_path) -> Iterator[E2EServer]:
    bridge = Bridge()
    bound = bridge.start_blocking(
        StartConfig(
            backend="llama",
            model_path=gguf_path,
            http_base_port=0,
            context_size=8192,
            threads=1,
            log_level="warning",
        )
    )
    try:
        yield E2EServer(bound.base_url, bound.model_id)
    finally:
        bridge.stop()
