"""``kftune serve --model URI``: serve a trained model over HTTP.

Routes (``NAME`` is ``--name``, default the model file's corpus name):

    POST /predict                       {"text": "..."} or {"texts": [...]}  ->  {"label": "부정", "score": 0.93, ...}
    POST /v1/models/NAME:predict        KServe V1: {"instances": ["...", ...]}
    POST /v2/models/NAME/infer          Open Inference Protocol: a BYTES input "text"
    GET  /v2/models/NAME                model metadata;  GET /v2/health/live, /v2/health/ready
    GET  /metrics                       Prometheus;      GET /docs: the OpenAPI page

The model is loaded before the server listens: a missing or damaged model file ends the command with one
line and exit status 1, and readiness never turns true. ``--host`` defaults to 127.0.0.1 (the serving image
passes 0.0.0.0); KServe's gRPC server is not started. Concurrent requests are micro-batched
(``--max-batch-size`` texts; the requests that arrive while a batch runs form the next one, which under load
waits up to ``--batch-window-ms`` for more), off the event loop, in ``--workers`` inference threads.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Sequence

from kftune.core.errors import KftuneError

log = logging.getLogger("kftune.serve")

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kftune serve", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="URI",
                   help="the model file: a local path, a directory holding model.pt (KServe's /mnt/models), or s3://...")
    p.add_argument("--name", default=None,
                   help="the model name in the routes (default: the model's corpus name, lower-cased, else 'kftune')")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080, as KServe expects)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--max-batch-size", type=int, default=32, help="most texts per model call (default 32)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="under load (the previous batch at least half full), how long a batch waits for more "
                        "requests to share its model call (default 5; a lone request never waits)")
    p.add_argument("--workers", type=int, default=1,
                   help="inference threads, each running one micro-batch at a time (default 1)")
    p.add_argument("--max-text-chars", type=int, default=None, help="longest text accepted, in characters (default 20000)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="largest request body (default 4 MiB)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def default_name(loaded: object) -> str:
    corpus = str(getattr(getattr(loaded, "task", None), "corpus_name", None) or "").lower()
    corpus = re.sub(r"[^a-z0-9_.-]+", "-", corpus).strip("-._")
    return corpus or "kftune"


def _problems(args: argparse.Namespace) -> list[str]:
    out = []
    if args.name is not None and not _NAME.match(args.name):
        out.append(f"--name {args.name!r}: use lower-case letters, digits, '-', '_' and '.' (it is part of the URL)")
    if not 0 <= args.port <= 65535:
        out.append(f"--port {args.port}: not a TCP port")
    if args.max_batch_size < 1:
        out.append(f"--max-batch-size {args.max_batch_size}: must be at least 1")
    if not 0 <= args.batch_window_ms <= 1000:
        out.append(f"--batch-window-ms {args.batch_window_ms}: must be between 0 and 1000")
    for flag, value in (("--max-text-chars", args.max_text_chars), ("--max-body-bytes", args.max_body_bytes),
                        ("--threads", args.threads), ("--workers", args.workers)):
        if value is not None and value < 1:
            out.append(f"{flag} {value}: must be at least 1")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = _problems(args)
    if problems:
        for line in problems:
            print(f"kftune serve: {line}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from kftune.serving._kserve import kserve_modules

        kserve_modules()
    except KftuneError as exc:
        print(f"kftune serve: {exc}", file=sys.stderr)
        return 2
    import torch
    import uvicorn

    from kftune.serving.app import DEFAULT_MAX_BODY_BYTES, build_app
    from kftune.serving.model import DEFAULT_MAX_TEXT_CHARS, KftuneModel

    if args.threads:
        torch.set_num_threads(args.threads)
    model = KftuneModel(args.name or "kftune", args.model, device=args.device, max_batch_size=args.max_batch_size,
                        batch_window_ms=args.batch_window_ms, workers=args.workers,
                        max_text_chars=args.max_text_chars or DEFAULT_MAX_TEXT_CHARS)
    try:
        model.load()
    except (KftuneError, OSError, RuntimeError, ValueError) as exc:
        print(f"kftune serve: cannot load the model {args.model}: {exc}", file=sys.stderr)
        return 1
    if args.name is None:
        model.name = default_name(model.loaded)
    app = build_app(model, max_body_bytes=args.max_body_bytes or DEFAULT_MAX_BODY_BYTES)
    loaded = model.loaded
    what = (f"labels {', '.join(loaded.labels)}" if loaded.task.is_classification
            else f"{len(loaded.labels)} tags")
    log.info("serving %s (%s, %s) at http://%s:%d/v2/models/%s  (POST /predict, docs at /docs)",
             model.name, loaded.task.type, what, args.host, args.port, model.name)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, log_level=args.log_level,
                            access_log=False, timeout_graceful_shutdown=30, lifespan="off")  # uvloop + httptools when present
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        model.stop()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
