"""Model scope, declared with each route (``Api.route(..., scope=...)``) and enforced before its view runs.

A scope says where an operation finds the model it acts on, so a credential limited to some models
(``"models": [...]`` on an API key) is checked by the framework, never by each view remembering to:

- ``"path:<param>"``, ``"query:<param>"``, ``"body:<field>"``: the model's name is that path parameter, query
  parameter or top-level JSON field;
- ``"form:<part>.<field>"``: a multipart part holding JSON whose field names the model (uploads);
- ``"job:<param>"``: the path parameter is a job id; the job's model is checked;
- ``"list"``: the answer lists many models' items; the view shows only those ``in_scope`` allows;
- ``"none"``: the operation touches no model (health, the caller's identity, data sources, pool series);
- ``"unscoped"``: the operation spans every model (audit, keys, runtimes): scoped credentials are refused.

A model outside the scope gets the answer a model that does not exist gets (404 with the same message), so a
scoped credential cannot learn other models' names. The OpenAPI document shows the scope as ``x-model-scope``.
"""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, g, request

from server.core import jobs_repo
from server.core.errors import ForbiddenError, InvalidInputError, NotFoundError
from server.services.auth import Principal

KINDS = ("path", "query", "body", "form", "job")
LIST, NONE, UNSCOPED = "list", "none", "unscoped"


def check_declaration(scope: str, rule: str) -> None:
    """Refuse, at import, a scope that does not parse or a model path whose scope ignores the model's name."""
    kind, _, where = scope.partition(":")
    if scope not in (LIST, NONE, UNSCOPED) and (kind not in KINDS or not where):
        raise ValueError(f"route {rule}: scope {scope!r} is not one of path:/query:/body:/form:/job:<name>, "
                         f"{LIST!r}, {NONE!r}, {UNSCOPED!r}")
    if "/models/<name>" in rule and scope != "path:name":
        raise ValueError(f"route {rule} names a model in its path; declare scope='path:name'")
    if kind in ("path", "job") and f"<{where}>" not in rule and not any(f":{where}>" in p for p in rule.split("/")):
        raise ValueError(f"route {rule}: scope {scope!r} names a path parameter the rule does not have")


def not_found(name: str) -> NotFoundError:
    """Return the error a model that does not exist gets (models_repo raises the same)."""
    return NotFoundError(f"model '{name}' does not exist", {"name": name})


def in_scope(name: str) -> bool:
    """Tell whether this request's credential may see the model (views filtering a list use this)."""
    principal: Principal | None = g.get("principal")
    return principal is None or principal.may_use_model(name)


def scope_models() -> tuple[str, ...] | None:
    """Return the models this request's credential is limited to; None when it is not limited."""
    principal: Principal | None = g.get("principal")
    return None if principal is None else principal.models


def enforce(scope: str, principal: Principal, path_args: dict[str, Any], raw_body: Any) -> None:
    """Raise unless the principal's model scope covers what the operation names."""
    if principal.models is None or scope in (LIST, NONE):
        return
    if scope == UNSCOPED:
        raise ForbiddenError(
            f"this operation spans every model; a credential limited to models {', '.join(principal.models)} "
            "may not use it (use a key without 'models')", {"models": list(principal.models)})
    kind, _, where = scope.partition(":")
    if kind == "job":
        _enforce_job(principal, str(path_args.get(where, "")))
        return
    name = _named_model(kind, where, path_args, raw_body)
    if not principal.may_use_model(name):
        raise not_found(name)


def _named_model(kind: str, where: str, path_args: dict[str, Any], raw_body: Any) -> str:
    """Read the model's name from where the scope says; a name that cannot be read is refused (fail closed)."""
    if kind == "path":
        value: Any = path_args.get(where)
    elif kind == "query":
        value = request.args.get(where)
    elif kind == "body":
        value = raw_body.get(where) if isinstance(raw_body, dict) else None
    else:
        part, _, field = where.partition(".")
        try:
            doc = json.loads(request.form.get(part) or "null")
        except ValueError as exc:
            raise InvalidInputError(f"part '{part}' is not valid JSON: {exc}") from exc
        value = doc.get(field) if isinstance(doc, dict) else None
        where = f"{part}.{field}"
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"field '{where}': expected the name of a model, got {value!r}"[:300],
                                {"field": where})
    return value


def _enforce_job(principal: Principal, job_id: str) -> None:
    model = jobs_repo.job_model(current_app.extensions["modeldeck"].db, job_id)
    if model is not None and not principal.may_use_model(model):
        # The answer a job that does not exist (or expired) gets, from jobs_repo.
        raise jobs_repo.missing_job(job_id)
