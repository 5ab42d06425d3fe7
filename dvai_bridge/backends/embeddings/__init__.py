"""Embedding models on MLX (a BERT-family encoder) and an embeddings-only backend.

The ``Embedder`` contract they implement lives in ``dvai_bridge.core.embedder``.
"""
