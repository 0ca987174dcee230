"""CPU per request of the API's access log, in process: the same hooks on a Flask app, the log on and off.

Usage: .venv/bin/python tests/bench/access_log_cost.py [--rounds 9] [--requests 3000] [--checkout PATH]
Two Flask apps with the API's request-id and deferred-work hooks (server/http/app.py) and a predict route, one
with `access_log.install(app, "text")`, one with "off", are called in alternating blocks through Flask's test
client; the process's CPU time per request (the writer thread's included: the queue is flushed at the end of each
block) is printed for both, with the difference: what the access log costs the API per request. The log goes to
a temporary file that is also the process's stderr, as the API's stderr is its log file. --checkout measures another checkout's code (before/after).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

_CHECKOUT = sys.argv[sys.argv.index("--checkout") + 1] if "--checkout" in sys.argv[:-1] else Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_CHECKOUT))

from flask import Blueprint, Flask, Response, g  # noqa: E402

from server.http import access_log  # noqa: E402
from server.services.request_scope import request_id, run_after_response  # noqa: E402


def make_app(fmt: str) -> Flask:
    app = Flask(f"access-{fmt}")

    @app.before_request
    def _assign_request_id() -> None:
        request_id()

    @app.after_request
    def _deferred(resp: Response) -> Response:
        pending = g.pop("after_response", None)
        if pending:
            resp.call_on_close(partial(run_after_response, pending))
        return resp

    predict = Blueprint("predict", __name__)

    @predict.route("/api/v1/models/<name>/predict", methods=["POST"])
    def _predict(name: str) -> str:
        access_log.note_version(1)
        return '{"predictions": [0]}'

    app.register_blueprint(predict)
    access_log.install(app, fmt)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--checkout", default=str(_CHECKOUT), help="the checkout whose server/ is measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # The API's stderr is its log file: the root logger's lines and the access log's own handler's go there.
        log = open(Path(tmp) / "api.log", "a", buffering=1)  # noqa: SIM115 - closed with the directory's end
        sys.stderr = log
        logging.basicConfig(level=logging.INFO, stream=log,
                            format="%(asctime)s %(levelname)s %(process)d %(name)s %(message)s")
        clients = {fmt: make_app(fmt).test_client() for fmt in ("off", "text")}
        cpu: dict[str, list[float]] = {fmt: [] for fmt in clients}
        for _ in range(args.rounds):
            for fmt, client in clients.items():
                started = time.process_time()
                for _ in range(args.requests):
                    client.post("/api/v1/models/iris/predict", data=b"{}").close()  # runs call_on_close
                getattr(access_log, "flush", lambda: None)()  # the writer thread's share (checkouts that queue)
                cpu[fmt].append((time.process_time() - started) / args.requests * 1e6)
        lines = sum(1 for line in (Path(tmp) / "api.log").read_text().splitlines() if "modeldeck.access" in line)
    off, text = statistics.median(cpu["off"]), statistics.median(cpu["text"])
    print(f"{args.checkout}: CPU per request (median of {args.rounds} blocks of {args.requests}): log off {off:.1f} us, "
          f"text {text:.1f} us; the access log costs {text - off:.1f} us per request ({lines} lines written)")


if __name__ == "__main__":
    main()
