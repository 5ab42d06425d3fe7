"""The llama sampler ignores what it would misread (issue 13 item 1): a bias on an id outside
the row is dropped (a negative id indexed from the end of the numpy row, a large one raised)."""

from __future__ import annotations

import numpy as np
import pytest

from dvai_bridge.backends.llama_cpp.sampling import SamplerChain, adjusted_logits
from dvai_bridge.core.types import SamplingParams


def test_bias_on_ids_outside_the_row_is_dropped():
    raw = np.zeros(4, dtype=np.float32)
    p = SamplingParams(logit_bias=((-1, 50.0), (4, 50.0), (1, 2.0)))
    assert adjusted_logits(raw, p, generated=[], recent=[]).tolist() == [0, 2, 0, 0]
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    SamplerChain(p, n_vocab=4, prompt=[1], max_tokens=1).close()
