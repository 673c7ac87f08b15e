"""Training checkpoints in the artifact store, written atomically, and the RNG states they carry.

A checkpoint is one ``torch.save`` file holding the model, optimizer and scheduler state, every RNG
state (Python, NumPy, torch CPU, CUDA), the epoch (and the position inside it when a SIGTERM cut the
epoch short), the best dev score with its weights, and the per-epoch history. It is written to a
local temporary file and then handed to ``store.put_file`` (atomic by the store contract), so a
reader never sees half a checkpoint, whatever kills the writer. The store is handed in (a
:class:`~kftune.nlp.storage.BlobStore`; the steps open it): this module opens none.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import random
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from kftune.core.errors import ArtifactNotFoundError, DataError
from kftune.nlp.storage import BlobStore

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "kftune-checkpoint"
CHECKPOINT_VERSION = 1


def capture_rng_state() -> dict[str, Any]:
    """Every RNG state training draws from, in types ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class CheckpointStore:
    """One checkpoint slot (``key``) in an artifact store; each save replaces the last atomically.

    ``save(state, background=True)`` hands the write (serialisation, upload, fsync) to one background
    thread, so training goes on while the file is written; the caller must pass a snapshot that later
    training steps do not modify (see :func:`snapshot`). At most one write is in flight: the next save,
    :meth:`wait` and :meth:`load` wait for it first and re-raise its error, if any. A process killed
    mid-write leaves the previous checkpoint in place (the store's put is atomic).
    """

    def __init__(self, store: BlobStore, key: str):
        self.store, self.key = store, key
        self._pending: Future | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def uri(self) -> str:
        return self.store.uri_for(self.key)

    def exists(self) -> bool:
        self.wait()
        return self.store.exists(self.key)

    def _write(self, payload: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix="kftune-ckpt-", suffix=".pt")
        os.close(fd)
        try:
            torch.save(payload, tmp)
            self.store.put_file(self.key, tmp)
        finally:
            os.unlink(tmp)
        log.debug("checkpoint written: %s", self.uri)

    def save(self, state: dict[str, Any], background: bool = False) -> None:
        self.wait()
        payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
        if not background:
            self._write(payload)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kftune-checkpoint")
        self._pending = self._executor.submit(self._write, payload)

    def wait(self) -> None:
        """Block until a background write is done; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        self.wait()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint, or ``None`` when there is none."""
        self.wait()
        try:
            data = self.store.get_bytes(self.key)
        except ArtifactNotFoundError:
            return None
        try:
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{self.uri}: unreadable checkpoint ({type(exc).__name__}: {exc}); "
                            "delete it to start over") from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise DataError(f"{self.uri}: not a kftune checkpoint")
        if payload.get("version") != CHECKPOINT_VERSION:
            raise DataError(f"{self.uri}: checkpoint version {payload.get('version')!r}, this kftune reads "
                            f"{CHECKPOINT_VERSION}; start the training over without --resume")
        return payload

    def delete(self) -> None:
        self.wait()
        self.store.delete(self.key)


def snapshot(state: Any) -> Any:
    """A deep copy of nested dicts/lists of tensors (tensors cloned to the CPU), safe to write in the
    background while training changes the originals in place."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: snapshot(v) for k, v in state.items()}
    if isinstance(state, list):
        return [snapshot(v) for v in state]
    if isinstance(state, tuple):
        return tuple(snapshot(v) for v in state)
    return copy.deepcopy(state)
