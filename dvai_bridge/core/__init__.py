"""The contract the engine and the backends share, below both of them.

Request and result types (``types``), the ``Backend``/``Batch`` contract and the tokenizer it
carries (``backend``), the ``Embedder`` contract (``embedder``), and the pieces every backend
and the engine use alike: the prompt cache, grammars, reasoning gates, incremental
detokenization. Nothing here imports the engine, the backends, or anything above them.
"""
