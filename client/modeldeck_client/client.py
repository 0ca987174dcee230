"""The client: connect with a URL and an API key, upload estimators, predict, move aliases, score tables."""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd
import requests

from modeldeck_client.errors import ModelDeckError, UnavailableError, UnprocessableError, error_from_response
from modeldeck_client.jobs import Job
from modeldeck_client.schema import plain, requirements_of, schema_of

PROBA_METHODS = ("predict_proba", "predict_log_proba")
# The server's default (MODELDECK_SKOPS_TRUSTED_PREFIXES): types a skops file may need trusted.
DEFAULT_TRUSTED_PREFIXES = ("sklearn.", "numpy.dtype", "functools.partial")


@dataclass(frozen=True)
class ModelVersion:
    """One uploaded version, as the server describes it."""

    name: str
    version: int
    sha256: str
    methods: list[str] | None = None
    classes: list[Any] | None = None
    input_schema: list[dict[str, Any]] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> ModelVersion:
        return cls(data["name"], data["version"], data["sha256"], data.get("methods"), data.get("classes"),
                   data.get("input_schema"), data)


class ModelDeck:
    """A connection to one ModelDeck API with one credential (an API key or a Keycloak access token)."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout_s: float = 60.0,
                 retries: int = 3, backoff_s: float = 0.5) -> None:
        url = url or os.environ.get("MODELDECK_URL")
        api_key = api_key or os.environ.get("MODELDECK_API_KEY")
        if not url:
            raise ModelDeckError("no server given: pass url= (e.g. 'http://127.0.0.1:8600') or set MODELDECK_URL")
        if not api_key:
            raise ModelDeckError("no credential given: pass api_key= or set MODELDECK_API_KEY")
        # Accept the API's base URL with or without /api/v1.
        self.url = url.rstrip("/").removesuffix("/api/v1")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    # -- HTTP ------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, retry: bool | None = None, **kwargs: Any) -> Any:
        """Send one request and return its JSON; raise the server's error as a typed exception.

        503 (broker or repository away, no live worker) is retried with backoff for idempotent calls only.
        """
        retry = method in ("GET", "PUT", "DELETE") if retry is None else retry
        kwargs.setdefault("timeout", self.timeout_s)
        for attempt in range(self.retries + 1 if retry else 1):
            try:
                resp = self.session.request(method, self.url + path, **kwargs)
            except requests.ConnectionError as exc:
                if not retry or attempt == self.retries:
                    raise UnavailableError(f"cannot reach {self.url}: {exc}", "unreachable") from exc
            else:
                if resp.status_code < 400:
                    return resp.json() if resp.content else None
                try:
                    body: Any = resp.json()
                except ValueError:
                    body = resp.text
                error = error_from_response(resp.status_code, body, resp.headers.get("X-Request-ID"))
                if resp.status_code != 503 or not retry or attempt == self.retries:
                    raise error
            time.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    # -- models ----------------------------------------------------------------------------------------
    def upload(self, model: Any, name: str, *, sample: pd.DataFrame | None = None, reference: pd.DataFrame | None = None,
               pool: str = "cpu", requirements: str | list[str] | None = "auto", description: str = "",
               input_schema: list[dict[str, Any]] | None = None, format: str | None = None,
               trusted_prefixes: Iterable[str] = DEFAULT_TRUSTED_PREFIXES, min_memory_mb: int | None = None) -> ModelVersion:
        """Upload an estimator (saved with skops) or a model file; return the new version.

        ``sample``: a few input rows; the input schema (names, types, nulls, categories) is inferred from their
        dtypes and the first row starts the console's form. ``reference``: rows typical of production, kept for
        drift statistics and the form's defaults. ``requirements="auto"`` pins this environment's versions of the
        libraries the estimator's classes come from. A directory (a Hugging Face model saved with
        ``save_pretrained``) is zipped and uploaded as format ``huggingface``.
        """
        if isinstance(model, (str, os.PathLike)) and os.path.isdir(model):
            data, fmt, filename = zip_directory(os.fspath(model)), "huggingface", f"{name}.zip"
            pins = [] if requirements in ("auto", None) else list(requirements)  # type: ignore[arg-type]
        elif isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            with open(path, "rb") as f:
                data = f.read()
            fmt = format or _format_of(path)
            filename = os.path.basename(path)
            pins: list[str] = [] if requirements in ("auto", None) else list(requirements)  # type: ignore[arg-type]
        else:
            data = _dump_skops(model, tuple(trusted_prefixes))
            fmt, filename = "skops", f"{name}.skops"
            pins = requirements_of(model) if requirements == "auto" else list(requirements or [])
        metadata: dict[str, Any] = {"name": name, "format": fmt, "pool": pool, "description": description,
                                    "requirements": pins}
        if min_memory_mb is not None:
            metadata["min_memory_mb"] = min_memory_mb
        frame = sample if sample is not None else reference
        if input_schema is not None:
            metadata["input_schema"] = input_schema
        elif frame is not None:
            metadata["input_schema"] = schema_of(frame)
        if frame is not None and len(frame):
            metadata["example"] = {str(k): plain(v) for k, v in frame.iloc[0].items()}
        files: dict[str, Any] = {"file": (filename, io.BytesIO(data)), "metadata": (None, json.dumps(metadata))}
        if reference is not None:
            files["reference"] = ("reference.csv", io.BytesIO(reference.to_csv(index=False).encode()))
        return ModelVersion.of(self.request("POST", "/api/v1/models", files=files))

    def model(self, name: str) -> dict[str, Any]:
        """Return a model with its versions and aliases."""
        return dict(self.request("GET", f"/api/v1/models/{name}"))

    def versions(self, name: str) -> list[ModelVersion]:
        """Return a model's versions, oldest first."""
        return [ModelVersion.of(v) for v in self.model(name)["versions"]]

    def version(self, name: str, version: int) -> ModelVersion:
        return ModelVersion.of(self.request("GET", f"/api/v1/models/{name}/versions/{version}"))

    def promote(self, name: str, version: int, alias: str = "production") -> dict[str, Any]:
        """Point an alias (production by default) at a version."""
        return dict(self.request("PUT", f"/api/v1/models/{name}/aliases/{alias}", json={"version": version}))

    def rollback(self, name: str, alias: str = "production", to: int | None = None) -> dict[str, Any]:
        """Point an alias back: at version ``to``, or at the newest active version below the current one."""
        if to is None:
            model = self.model(name)
            current = model.get("aliases", {}).get(alias)
            if current is None:
                raise ModelDeckError(f"model '{name}' has no alias '{alias}' to roll back", "not_found", 404)
            older = [v["version"] for v in model["versions"] if v["version"] < current and v.get("status") == "active"]
            if not older:
                raise ModelDeckError(f"model '{name}': no active version below {current} to roll '{alias}' back to",
                                     "conflict", 409)
            to = max(older)
        return self.promote(name, to, alias)

    # -- predictions -----------------------------------------------------------------------------------
    def encode(self, name: str, texts: list[str], *, normalize: bool = False,
               version: int | str | None = None) -> np.ndarray:
        """Embed texts with a Hugging Face embedding model: one float32 row per text."""
        answer = self._text(name, texts, "encode", {"normalize": normalize}, version)
        return np.asarray(answer["predictions"], dtype=np.float32)

    def generate(self, name: str, prompts: str | list[str], *, version: int | str | None = None,
                 **parameters: Any) -> list[str]:
        """Continue prompts with a text-generation model (max_new_tokens, temperature, top_p, top_k, seed)."""
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        return list(self._text(name, texts, "generate", parameters, version)["predictions"])

    def _text(self, name: str, texts: list[str], method: str, parameters: dict[str, Any],
              version: int | str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"inputs": texts, "method": method, "parameters": parameters}
        if version is not None:
            body["version"] = version
        return dict(self.request("POST", f"/api/v1/models/{name}/predict", json=body, retry=True))

    def predict(self, name: str, data: pd.DataFrame | list[Any] | np.ndarray, *, method: str = "predict",
                version: int | str | None = None) -> Any:
        """Predict rows; a DataFrame in gives pandas out, aligned to its index.

        ``predict``: a Series (a DataFrame for multi-output models); ``predict_proba``: a DataFrame with one column
        per class. Lists or arrays in give a NumPy array out.
        """
        index = None
        if isinstance(data, pd.DataFrame):
            index = data.index
            rows: list[Any] = [{str(k): plain(v) for k, v in zip(data.columns, row)}
                               for row in data.itertuples(index=False, name=None)]
        elif isinstance(data, np.ndarray):
            rows = data.tolist()
        else:
            rows = list(data)
        body: dict[str, Any] = {"inputs": rows, "method": method}
        if version is not None:
            body["version"] = version
        # A prediction changes nothing on the server: safe to retry on 503.
        answer = self.request("POST", f"/api/v1/models/{name}/predict", json=body, retry=True)
        out = np.asarray(answer["predictions"])
        if index is None:
            return out
        classes = answer.get("classes")
        if out.ndim == 2:
            columns = classes if classes is not None and len(classes) == out.shape[1] else None
            return pd.DataFrame(out, index=index, columns=columns)
        return pd.Series(out, index=index, name=method)

    # -- jobs ------------------------------------------------------------------------------------------
    def score(self, name: str, source: dict[str, Any], destination: dict[str, Any], *, method: str = "predict",
              version: int | str | None = None, chunk_rows: int | None = None) -> Job:
        """Start a batch-scoring job from a data source into a table or a file; ``.wait()`` follows it.

        ``method="predict_proba"`` writes one column per class (``proba_<label>``) instead of ``prediction``.
        """
        body: dict[str, Any] = {"model": name, "source": source, "destination": destination, "method": method}
        if version is not None:
            body["version"] = version
        if chunk_rows is not None:
            body["chunk_rows"] = chunk_rows
        started = self.request("POST", "/api/v1/jobs", json=body)
        return Job(self, {"id": started["job_id"], "status": started["status"]})

    def job(self, job_id: str) -> Job:
        return Job(self, {"id": job_id}).refresh()


def zip_directory(directory: str) -> bytes:
    """Zip a model directory's files (stored, not compressed: weights hardly compress), paths relative to it."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for root, _, files in sorted(os.walk(directory)):
            for file in sorted(files):
                path = os.path.join(root, file)
                archive.write(path, os.path.relpath(path, directory))
    return buf.getvalue()


def _format_of(path: str) -> str:
    for suffix, fmt in ((".skops", "skops"), (".onnx", "onnx"), (".pt", "torchscript"), (".joblib", "joblib"),
                        (".pkl", "pickle"), (".zip", "huggingface"), (".tar.gz", "huggingface")):
        if path.endswith(suffix):
            return fmt
    raise ModelDeckError(f"cannot tell the format of {os.path.basename(path)!r}: pass format='skops' or 'onnx'")


def _dump_skops(model: Any, trusted_prefixes: tuple[str, ...]) -> bytes:
    """Serialise with skops and refuse, as the server would, types outside the trusted prefixes."""
    import skops.io

    data = skops.io.dumps(model)
    refused = [t for t in skops.io.get_untrusted_types(data=data) if not t.startswith(trusted_prefixes)]
    if refused:
        raise UnprocessableError(
            "skops file needs types that this deployment does not trust: "
            f"{', '.join(refused)}; an admin may add their prefixes to MODELDECK_SKOPS_TRUSTED_PREFIXES",
            "invalid_model", 0, None, {"untrusted_types": refused})
    return data


__all__ = ["ModelDeck", "ModelVersion"]
