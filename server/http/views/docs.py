"""The OpenAPI document, generated from the declared operations, and Swagger UI."""

from __future__ import annotations

from flask import Response, current_app

from server.http.api import Api, json_response
from server.services.auth import ANYONE

api = Api("docs")


@api.route("/api/v1/openapi.json", "GET", ANYONE, "The OpenAPI 3 document of this API", scope="none")
def openapi() -> Response:
    return json_response(current_app.extensions["modeldeck_openapi"])
