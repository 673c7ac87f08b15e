"""The KServe model: a trained kftune model behind KServe's V1 and Open Inference Protocol (V2) routes.

V1 (``POST /v1/models/<name>:predict``)::

    {"instances": ["이 영화 정말 재밌다", {"text": "..."}], "parameters": {"top_k": 2}}
    -> {"predictions": [{"label": "긍정", "raw_label": "1", "score": 0.97, "probabilities": {...}}, ...]}

V2 (``POST /v2/models/<name>/infer``): one ``BYTES`` input (named ``text``, or the request's only input)
of shape ``[N]`` or ``[N, 1]``. Classifiers answer ``label`` (BYTES ``[N]``), ``score`` (FP32 ``[N]``) and
``probabilities`` (FP32 ``[N, C]``, columns in the order of the output's ``labels`` parameter, a JSON list);
taggers answer ``tokens``, ``tags`` and ``spans`` (BYTES ``[N]``, each a JSON list). A request may name the
outputs it wants (``outputs``) and pass ``parameters.top_k`` (V1 records only).

Every text is checked before it reaches the model: a string, not blank, at most ``max_text_chars``
characters; anything else is :class:`kserve.errors.InvalidInput` (HTTP 400) naming the input and the fix.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Sequence

from kftune.serving._kserve import kserve_modules
from kftune.serving.batching import MicroBatcher
from kftune.serving.metrics import observe_batch

kserve = kserve_modules()
from kserve.errors import InvalidInput  # noqa: E402 - after the guarded import above
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402

DEFAULT_MAX_TEXT_CHARS = 20_000
TEXT_INPUT = "text"


def check_texts(texts: Sequence[Any], max_text_chars: int, where: str = "text") -> list[str]:
    """``texts`` as a list of strings, or :class:`InvalidInput` naming the first bad one."""
    out = []
    for i, t in enumerate(texts):
        name = f"{where}[{i}]" if len(texts) > 1 or where != "text" else where
        if isinstance(t, (bytes, bytearray)):
            try:
                t = bytes(t).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"{name} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        if not isinstance(t, str):
            raise InvalidInput(f"{name} must be a string, got {type(t).__name__}")
        if not t.strip():
            raise InvalidInput(f"{name} is empty; send the text to classify or tag")
        if len(t) > max_text_chars:
            raise InvalidInput(f"{name} has {len(t)} characters; this server takes at most {max_text_chars} per text "
                               "(kftune serve --max-text-chars)")
        out.append(t)
    return out


def apply_top_k(record: dict[str, Any], top_k: int | None) -> dict[str, Any]:
    """The record with only the ``top_k`` most probable labels in ``probabilities`` (classification)."""
    if top_k is None or "probabilities" not in record:
        return record
    return {**record, "probabilities": dict(list(record["probabilities"].items())[:top_k])}


def parse_top_k(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{where} must be a positive integer, got {value!r}")
    return value


class KftuneModel(kserve.Model):  # type: ignore[misc,name-defined]
    """A kftune model file served by KServe (see the module docstring).

    ``uri``: the model file (local path, a directory holding ``model.pt``, or ``s3://``). :meth:`load` reads
    it; requests are micro-batched (``max_batch_size`` texts, ``batch_window_ms``).
    """

    def __init__(self, name: str, uri: str, *, device: str = "cpu", max_batch_size: int = 32,
                 batch_window_ms: float = 5.0, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS, workers: int = 1):
        super().__init__(name)
        self.uri = uri
        self.device = device
        self.max_batch_size = max_batch_size
        self.batch_window_ms = batch_window_ms
        self.max_text_chars = max_text_chars
        self.workers = workers
        self.loaded: Any = None
        self.batcher: MicroBatcher | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def load(self) -> bool:
        from kftune.io.store import open_store
        from kftune.nlp.model_io import load_model
        from kftune.nlp.trainer import resolve_device

        self.loaded = load_model(self.uri, device=resolve_device(self.device), open_store=open_store)
        self.batcher = MicroBatcher(self._predict_batch, max_batch_size=self.max_batch_size,
                                    window_s=self.batch_window_ms / 1000.0, workers=self.workers,
                                    on_batch=observe_batch)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    def _predict_batch(self, texts: list[str]) -> list[dict[str, Any]]:
        from kftune.nlp.predict import predict_records

        return predict_records(self.loaded, texts, batch_size=self.max_batch_size)

    @property
    def is_classifier(self) -> bool:
        return bool(self.loaded.task.is_classification)

    @property
    def labels(self) -> list[str]:
        return list(self.loaded.labels)

    async def records(self, texts: Sequence[str], top_k: int | None = None) -> list[dict[str, Any]]:
        """Checked texts in, prediction records out (micro-batched with other requests)."""
        assert self.batcher is not None, "load() the model first"
        out = await self.batcher.submit(list(texts))
        return [apply_top_k(r, top_k) for r in out]

    # -- V2 metadata -----------------------------------------------------------------------------
    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        if self.is_classifier:
            return [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "score", "datatype": "FP32", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.labels)]}]
        return [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in ("tokens", "tags", "spans")]

    # -- inference -------------------------------------------------------------------------------
    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        return await self._predict_v1(payload)

    async def _predict_v1(self, payload: Any) -> dict[str, Any]:
        if isinstance(payload, (bytes, bytearray, str)):
            raise InvalidInput('the body must be JSON (Content-Type: application/json): {"instances": ["a text", ...]}')
        if not isinstance(payload, dict) or "instances" not in payload:
            raise InvalidInput('the body needs "instances": a list of texts or of {"text": ...} objects')
        instances = payload["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidInput('"instances" must be a non-empty list of texts or of {"text": ...} objects')
        texts: list[Any] = []
        for i, item in enumerate(instances):
            if isinstance(item, dict):
                if TEXT_INPUT not in item:
                    raise InvalidInput(f'instances[{i}] has no "text" field (got {sorted(item)[:5]})')
                item = item[TEXT_INPUT]
            texts.append(item)
        texts = check_texts(texts, self.max_text_chars, where="instances")
        params = payload.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput('"parameters" must be an object, e.g. {"top_k": 2}')
        top_k = parse_top_k(params.get("top_k"), "parameters.top_k")
        return {"predictions": await self.records(texts, top_k)}

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        inputs = list(request.inputs or ())
        if not inputs:
            raise InvalidInput(f'the request has no inputs; send one BYTES input named "{TEXT_INPUT}"')
        named = [i for i in inputs if i.name == TEXT_INPUT]
        if len(named) != 1 and len(inputs) != 1:
            raise InvalidInput(f'send one BYTES input named "{TEXT_INPUT}" (got inputs {[i.name for i in inputs]})')
        inp = named[0] if named else inputs[0]
        if inp.datatype != "BYTES":
            raise InvalidInput(f'input "{inp.name}" has datatype {inp.datatype}; texts are BYTES')
        data = inp.data if isinstance(inp.data, list) else list(inp.data or [])
        shape = list(inp.shape or [])
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] != len(data):
            raise InvalidInput(f'input "{inp.name}" has shape {shape} for {len(data)} texts; '
                               f'use [{len(data)}] (or [{len(data)}, 1])')
        if not data:
            raise InvalidInput(f'input "{inp.name}" holds no texts')
        texts = check_texts(data, self.max_text_chars, where=inp.name)
        wanted = [o.name for o in (request.request_outputs or [])]
        known = [o["name"] for o in self.get_output_types()]
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; this model outputs {known}")
        records = await self.records(texts)
        outputs = self._v2_outputs(records)
        if wanted:
            outputs = [o for o in outputs if o.name in wanted]
        return InferResponse(response_id=request.id or str(uuid.uuid4()), model_name=self.name,
                             infer_outputs=outputs)

    def _v2_outputs(self, records: list[dict[str, Any]]) -> list[Any]:
        n = len(records)
        if self.is_classifier:
            labels = self.labels
            probs = [float(r["probabilities"].get(lab, 0.0)) for r in records for lab in labels]
            return [InferOutput("label", [n], "BYTES", [str(r["label"]) for r in records]),
                    InferOutput("score", [n], "FP32", [float(r["score"]) for r in records]),
                    InferOutput("probabilities", [n, len(labels)], "FP32", probs,
                                parameters={"labels": json.dumps(labels, ensure_ascii=False)})]
        return [InferOutput(name, [n], "BYTES", [json.dumps(r[name], ensure_ascii=False) for r in records])
                for name in ("tokens", "tags", "spans")]
