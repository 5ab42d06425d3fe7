"""The MLX backend: a model loaded through mlx-lm, generating through ``generate_step``."""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ...core.backend import Backend, Batch, Capabilities, Step
from ...core.types import BatchLimits, CancelToken, GenerationRequest
from ...errors import BackendError, BridgeError, ModelLoadFailed
from ...progress import ProgressEvent, ProgressHub
from ...store.resolve import (
    EMBEDDED_ID,
    download_model,
    embedded_default_gguf,
    hf_snapshot,
    is_remote_reference,
    is_repo_id,
)
from .device import MLXDevice, select_device
from .logprobs import token_choice
from .tokenizer import MLXTokenizer

if TYPE_CHECKING:
    from .cpu_tuning import CpuTuning

log = logging.getLogger(__name__)

PREFILL_STEP = 512


class _Cancelled(Exception):
    pass


@contextmanager
def _boundary(what: str) -> Iterator[None]:
    """Translate mlx / mlx-lm exceptions into BridgeErrors, once, here."""
    try:
        yield
    except (BridgeError, _Cancelled, GeneratorExit):
        raise
    except Exception as exc:
        log.exception("MLX failed while %s", what)
        raise BackendError(f"MLX failed while {what}: {exc}") from exc


def resolve_model(model_path: str | None, progress: ProgressHub) -> tuple[Path, str]:
    """A local MLX checkpoint folder for a reference, and the id to serve it under."""
    if model_path is None:
        gguf, model_id = embedded_default_gguf(), EMBEDDED_ID
    else:
        path = Path(model_path).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadFailed(f"{path} is not an MLX checkpoint (no config.json).")
            return path, path.name
        if is_repo_id(model_path):
            return hf_snapshot(model_path, progress=progress), model_path
        if is_remote_reference(model_path):  # org/name/file.gguf, or a URL to a .gguf
            path = download_model(model_path, progress=progress)
        if path.suffix.lower() != ".gguf" or not path.is_file():
            raise ModelLoadFailed(
                f"Model {model_path!r} not found: give an MLX folder, a .gguf file or an "
                "HF repo id (org/name)."
            )
        gguf, model_id = path, path.stem
    from .gguf_import import cached_import

    progress.emit(ProgressEvent("load", message=f"Importing {gguf.name} into MLX (cached)"))
    return cached_import(gguf), model_id


def _device_memory() -> int | None:
    """The GPU's memory in bytes (Metal: the unified memory MLX may use), None on the CPU."""
    import mlx.core as mx

    try:
        info = mx.device_info()
    except Exception:
        return None
    size = info.get("memory_size") or info.get("total_memory")
    return int(size) if size else None


class MLXBackend(Backend):
    name = "mlx"
    capabilities = Capabilities(chat=True, completions=True, logprobs=True)

    def __init__(
        self, model: Any, tokenizer: Any, *, model_id: str, context_length: int, device: MLXDevice
    ) -> None:
        """``tokenizer``: mlx-lm's ``TokenizerWrapper`` (wrapped here in an ``MLXTokenizer``)."""
        self.model = model
        self.model_id = model_id
        self.context_length = context_length
        self.device = device
        self.device_kind = device.kind
        self.device_memory = _device_memory()
        self.tokenizer = MLXTokenizer(
            tokenizer,
            model_id=model_id,
            vocab_size=int(getattr(model.args, "vocab_size", 0)) or None,
        )
        self.cpu_tuning: CpuTuning | None = None  # the CPU device's tuning (cpu_tuning)

    @classmethod
    def load(
        cls, model_path: str | None, *, context_size: int | None, progress: ProgressHub
    ) -> MLXBackend:
        device = select_device()
        folder, model_id = resolve_model(model_path, progress)
        progress.emit(ProgressEvent("load", message=f"Loading {model_id} on MLX ({device.kind})"))
        try:
            from mlx_lm import load

            # without return_config, load returns the (model, tokenizer) pair
            model, tokenizer = cast(tuple[Any, Any], load(str(folder)))
        except BridgeError:
            raise
        except Exception as exc:
            raise ModelLoadFailed(f"MLX could not load {model_id}: {exc}") from exc
        tuning = None
        if device.is_cpu:
            from . import cpu_tuning

            tuning = cpu_tuning.apply(model)
        config = json.loads((folder / "config.json").read_text())
        native = int(config.get("max_position_embeddings") or 4096)
        backend = cls(
            model,
            tokenizer,
            model_id=model_id,
            context_length=min(context_size or native, native),
            device=device,
        )
        backend.cpu_tuning = tuning
        return backend

    # -- generation ------------------------------------------------------------------
    def generate(self, request: GenerationRequest, cancel: CancelToken) -> Generator[Step]:
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        from . import sampling

        def on_prefill(done: int, total: int) -> None:
            if cancel.cancelled:
                raise _Cancelled

        with _boundary("preparing generation"):
            sampler = sampling.make_sequence_sampler(request.sampling)
            processors = sampling.logits_processors(
                request.sampling, len(request.prompt_tokens), request.grammar
            )
            steps = generate_step(
                mx.array(request.prompt_tokens),
                self.model,
                max_tokens=request.max_tokens,
                sampler=sampler,
                logits_processors=processors or None,
                prefill_step_size=PREFILL_STEP,
                prompt_progress_callback=on_prefill,
            )
        want = request.top_logprobs if request.logprobs else -1
        try:
            while True:
                with _boundary("generating"):
                    if self.cpu_tuning is not None:
                        self.cpu_tuning.tick()
                    try:
                        token, logprobs = next(steps)
                    except StopIteration:
                        return
                    yield token_choice(int(token), logprobs, want)
        except _Cancelled:
            return
        finally:
            steps.close()

    def close(self) -> None:
        """Let pending work finish and return MLX's cached buffers (any thread; the engine
        calls it on its own). The weights go with the backend object."""
        import mlx.core as mx

        super().close()
        try:
            mx.synchronize()
            mx.clear_cache()
        except Exception:
            log.exception("freeing MLX state failed")

    def end_thread(self) -> None:
        """Drop the engine thread's MLX state (``mx.clear_streams``: its streams, compile cache
        and random state) while the thread still has its Python thread state.

        Left to the thread's exit, those thread-local C++ objects are destroyed after Python
        considers the thread done; they take the GIL to drop Python objects, and if the
        interpreter is finalizing by then (``serve`` stopping on SIGTERM) the thread is unwound
        inside a noexcept destructor: "terminate called without an active exception", exit 134
        (seen on CUDA and on the CPU, about one stop in three; in gdb: ``__call_tls_dtors`` ->
        ``PyGILState_Ensure``). After this, MLX cannot be used on the thread again."""
        import mlx.core as mx

        try:
            if hasattr(mx, "clear_streams"):
                mx.clear_streams()
        except Exception:
            log.exception("clearing the engine thread's MLX streams failed")

    def on_idle(self) -> None:
        if self.cpu_tuning is not None:
            self.cpu_tuning.tick()

    def open_batch(self, limits: BatchLimits) -> Batch | None:
        from .batch import MLXBatch

        tuning = self.cpu_tuning
        return MLXBatch(
            self.model,
            tick=tuning.tick if tuning is not None else None,
            max_batch=limits.max_batch,
            prefill_step=limits.prefill_chunk,
            prompt_cache_bytes=limits.prompt_cache_bytes,
        )
