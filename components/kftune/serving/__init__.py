"""The model server behind ``kftune serve``: a ``kserve.Model`` over the same prediction code as
``kftune predict`` (:func:`kftune.nlp.predict.predict_records`), so that the CLI and every route answer alike.

- :mod:`.batching` collects concurrent requests into one model call (a short window, a maximum size) and
  runs it off the event loop;
- :mod:`.model` is the KServe model: V1 ``instances`` and Open Inference Protocol (V2) ``BYTES`` inputs;
- :mod:`.app` builds the FastAPI application: KServe's V1/V2 routes, a plain ``POST /predict`` with
  Pydantic models (documented at ``/docs``), request limits and Prometheus metrics at ``/metrics``;
- :mod:`.server` is the command: load the model (or fail with one line), then run uvicorn on the chosen host.

``kserve`` (the ``serve`` extra) is imported only through :func:`._kserve.kserve_modules`, which keeps it from
reading this process' command line: ``kserve.model_server`` parses ``sys.argv`` when imported.
"""
