"""The Flask application factory of the Service API."""

from __future__ import annotations

import logging
from functools import partial
from importlib.metadata import PackageNotFoundError, version

from flask import Flask, Response, g, request
from flask_swagger_ui import get_swaggerui_blueprint
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from server.services import audit
from server.services import preload
from server.http import access_log
from server.http.api import Api, json_response
from server.services.request_scope import request_id, run_after_response
from server.services.auth import Authenticator
from server.services.keycloak import TokenVerifier
from server.services.alerts import Housekeeper
from server.services.metrics import MetricsRecorder
from server.services.cache import RepoCache
from server.services.context import CACHE_TTL_S, Context, PoolLiveness
from server.core import audit_repo, crypto, datasources_repo
from server.core.db import connect, ensure_indexes, storage_error
from server.core.errors import ModelDeckError
from server.core.settings import Settings
from server.http.openapi import build_openapi
from server.services.ratelimit import FailureLimiter
from server.core.direct_reply import listener_config
from server.transport.router import Router
from server.http.views import apikeys, audit_log, datasources, docs, health, jobs, models, predict, v2
from server.http.views import runtimes
from server.http.views import monitoring

logger = logging.getLogger(__name__)

APIS: list[Api] = [health.api, docs.api, apikeys.api, models.api, predict.api, jobs.api, audit_log.api, v2.api, runtimes.api, monitoring.api, monitoring.metrics_api,
                   datasources.api]
_HTTP_CODES = {400: "invalid_input", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _version() -> str:
    try:
        return version("modeldeck")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(settings: Settings, router: Router | None = None) -> Flask:
    """Create and configure the Flask application."""
    app = Flask(__name__)
    preload.start(settings.preload_upload_libraries)
    # Uploads may be large; JSON bodies have their own, smaller limit (server.http.api.read_json).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + 1024 * 1024
    # Spool multipart files to disk past 1 MiB instead of holding them in memory.
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024
    keys = audit_repo.audit_keys(settings)  # no key: refuse to start, naming MODELDECK_AUDIT_KEY
    db = connect(settings)
    ensure_indexes(db)
    audit_repo.prepare_chain(db, keys)
    crypto.check_key_present(settings, datasources_repo.count_datasources(db))
    if router is None:
        reply_host, reply_limits = listener_config(settings)
        router = Router(settings.broker_url, settings.queue_prefix, reply_host, reply_limits)
    router.start()
    cache = RepoCache(lambda: router.connected, ttl_s=CACHE_TTL_S)
    router.on_event(cache.on_event)
    router.on_connect(cache.clear)
    if router.connected:
        cache.clear()
    app.extensions["modeldeck"] = Context(
        settings=settings, db=db, router=router, auth=Authenticator(db, cache, TokenVerifier(settings) if settings.keycloak_enabled else None),
        liveness=PoolLiveness(db, settings.worker_lost_after_s), cache=cache,
        limiter=FailureLimiter(db, settings.auth_failure_limit, settings.auth_failure_window_s), audit_keys=keys,
        metrics=MetricsRecorder(db, settings, Housekeeper(settings)) if settings.metrics_enabled else None,
    )
    if app.extensions["modeldeck"].metrics is not None:
        app.extensions["modeldeck"].metrics.start()
    if settings.trusted_proxies:
        # Behind N reverse proxies, the client address is the N-th from the right in X-Forwarded-For.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies)  # type: ignore[method-assign]
    for api in APIS:
        app.register_blueprint(api.blueprint)
    app.extensions["modeldeck_openapi"] = build_openapi([op for api in APIS for op in api.operations], _version())
    app.register_blueprint(get_swaggerui_blueprint("/api/docs", "/api/v1/openapi.json", config={"app_name": "ModelDeck API"}))
    # Serve Swagger UI at /api/docs itself too (its blueprint answers 308 to /api/docs/); its asset URLs are absolute.
    app.add_url_rule("/api/docs", "swagger_ui_root", app.view_functions["swagger_ui.show"])
    _register_handlers(app)
    access_log.install(app, settings.access_log)
    return app


def _drain_body() -> None:
    """Read and drop what is left of the request body (bounded by the upload limit), so the client, still
    sending, reads our answer instead of a reset connection; used when spooling an upload ran out of disk."""
    try:
        while request.stream.read(1024 * 1024):
            pass
    except Exception:  # the client went away; nothing to answer
        pass


def _register_handlers(app: Flask) -> None:
    @app.before_request
    def _assign_request_id() -> None:
        request_id()

    cors = set(app.extensions["modeldeck"].settings.cors_origins)

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["X-Request-ID"] = g.get("request_id", "")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        if not request.path.startswith("/api/docs"):
            # JSON needs no scripts, styles or frames; Swagger UI (under /api/docs) does.
            resp.headers["Content-Security-Policy"] = "default-src 'none'; frame-ancestors 'none'"
        origin = request.headers.get("Origin")
        # CORS is closed unless an origin is listed in MODELDECK_CORS_ORIGINS.
        if origin and origin in cors:
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Request-ID"
            resp.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE"
            resp.headers["Vary"] = "Origin"
        pending = g.pop("after_response", None)
        if pending:
            # Runs when the WSGI server closes the response, after its last byte went out.
            resp.call_on_close(partial(run_after_response, pending))
        return resp

    @app.errorhandler(ModelDeckError)
    def _modeldeck_error(exc: ModelDeckError) -> Response:
        if exc.status in (401, 403, 429):
            audit.record_denied(exc.status, exc.message, actor=exc.details.get("subject"))
        if request.path.startswith("/v2"):
            resp = v2.v2_error(exc)
            if exc.status == 429:
                resp.headers["Retry-After"] = str(exc.details.get("retry_after_s", 60))
            return resp
        if exc.status == 429:
            resp = json_response({"error": {"code": exc.code, "message": exc.message, "details": exc.details,
                                            "request_id": g.get("request_id")}}, 429)
            resp.headers["Retry-After"] = str(exc.details.get("retry_after_s", 60))
            return resp
        body = exc.to_body()
        body["error"]["request_id"] = g.get("request_id")
        return json_response(body, exc.status)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        if request.path.startswith("/v2"):
            return json_response({"error": message}, status)
        if status == 413:
            limit = app.config["MAX_CONTENT_LENGTH"] - 1024 * 1024
            message = f"request body is over the upload limit of {limit} bytes (MODELDECK_MAX_UPLOAD_MB)"
        body = {"error": {"code": _HTTP_CODES.get(status, exc.name.lower().replace(" ", "_")),
                          "message": message, "details": {}, "request_id": g.get("request_id")}}
        return json_response(body, status)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        known = storage_error(exc)
        if known is not None:
            # The repository is down or its disk is full: say so (503 / 507) rather than a bare 500.
            logger.warning("request %s failed: %s (%s)", g.get("request_id"), known.message, type(exc).__name__)
            if known.status == 507:
                _drain_body()
            return _modeldeck_error(known)
        logger.exception("request %s failed", g.get("request_id"))
        body = {"error": {"code": "internal", "message": f"internal error; quote request id {g.get('request_id')} to an operator",
                          "details": {}, "request_id": g.get("request_id")}}
        return json_response(body, 500)
