"""Hooks for the whole suite."""

from __future__ import annotations

import sys

import pytest


def pytest_unconfigure(config: pytest.Config) -> None:
    """Drop this (main) thread's MLX state before the interpreter finalizes.

    Some tests use MLX on pytest's own thread (tests/e2e/test_chat_text.py loads a backend
    there). Left to the process's exit, MLX's thread-local streams are destroyed by
    ``__call_tls_dtors`` after Python has finalized, and they still drop Python objects:
    a segmentation fault (exit 139) after every test passed. It depended on which modules ran
    together (test_tools + test_chat_text + test_openai_sdk did it every time). The server
    does the same for its engine thread (``MLXBackend.end_thread``)."""
    if "mlx.core" not in sys.modules:
        return
    import mlx.core as mx

    try:
        mx.synchronize()
        mx.clear_streams()
    except Exception:
        pass
