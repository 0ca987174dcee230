"""One frozen settings object per process, read from ``MODELDECK_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
# Keycloak realm roles (or "<client>/<role>" client roles) and the ModelDeck role each grants.
DEFAULT_ROLE_MAP = {
    "modeldeck-admin": "admin",
    "modeldeck-operator": "operator",
    "modeldeck-analyst": "analyst",
    "modeldeck-service": "service",
}


class SettingsError(Exception):
    """A configuration variable is missing or invalid."""


class Settings(BaseSettings):
    """Configuration for every ModelDeck process; documented in docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix="MODELDECK_", frozen=True, extra="ignore")

    env: Literal["development", "production"] = "development"
    home: Path = Path(".modeldeck")
    broker_url: str = DEFAULT_BROKER_URL
    queue_prefix: str = Field(default="modeldeck.", pattern=r"^[A-Za-z0-9_.-]*$")
    mongo_url: str = ""
    mongo_db: str = Field(default="modeldeck", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    embedded_mongo_port: int = Field(default=27117, ge=1, le=65535)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8600, ge=0, le=65535)
    api_workers: int = Field(default=2, ge=1)
    api_threads: int = Field(default=16, ge=1)
    allow_pickle: bool = False
    # What ordinary scikit-learn models need beyond their own classes: a OneHotEncoder's dtype, and the partial
    # around a sklearn function a HistGradientBoosting model keeps (skops lists the wrapped function separately).
    skops_trusted_prefixes: tuple[str, ...] = ("sklearn.", "numpy.dtype", "functools.partial")
    max_upload_mb: int = Field(default=1024, ge=1)
    upload_inspect_max_mb: int = Field(default=200, ge=0)
    max_body_kb: int = Field(default=10240, ge=1)
    max_predict_rows: int = Field(default=10000, ge=1)
    predict_timeout_s: float = Field(default=30.0, gt=0)
    direct_replies: bool = True
    direct_reply_host: str = Field(default="127.0.0.1", min_length=1)
    direct_reply_hello_timeout_s: float = Field(default=1.0, gt=0, le=30)
    direct_reply_max_pending: int = Field(default=4, ge=1, le=1000)
    direct_replies_without_tls: bool = False
    worker_pool: str = Field(default="cpu", pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    worker_concurrency: int = Field(default=4, ge=1)
    worker_memory_limit_mb: int = Field(default=0, ge=0)
    model_cache_size: int = Field(default=256, ge=1)
    model_cache_mb: int = Field(default=1024, ge=1)
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    worker_lost_after_s: float = Field(default=10.0, gt=0)
    gpu_pools: tuple[str, ...] = ("gpu",)
    worker_device: Literal["auto", "cpu", "cuda"] = "auto"
    model_cache_gpu_mb: int = Field(default=0, ge=0)
    genai_batch_size: int = Field(default=32, ge=1, le=1024)
    genai_batch_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    genai_batch_lanes: int = Field(default=0, ge=0, le=64)
    genai_fp16: bool = True
    genai_torch_threads: int = Field(default=1, ge=0)
    genai_cpu_runtime: Literal["onnxruntime", "torch"] = "onnxruntime"
    genai_max_inputs: int = Field(default=64, ge=1)
    genai_max_input_chars: int = Field(default=20000, ge=1)
    genai_max_input_tokens: int = Field(default=512, ge=1)
    genai_max_new_tokens: int = Field(default=256, ge=1)
    scaler_backend: Literal["local", "kubernetes"] = "local"
    max_replicas_per_pool: int = Field(default=8, ge=1, le=1000)
    cold_start_timeout_s: float = Field(default=60.0, gt=0)
    controller_interval_s: float = Field(default=1.0, gt=0)
    controller_stop_timeout_s: float = Field(default=12.0, gt=0)
    controller_restart_backoff_max_s: float = Field(default=30.0, gt=0)
    kubernetes_namespace: str = "modeldeck"
    kubernetes_deployment_prefix: str = "worker-"
    job_result_ttl_s: int = Field(default=86400, ge=60)
    keycloak_url: str = ""
    keycloak_realm: str = "modeldeck"
    keycloak_issuer: str = ""
    keycloak_client_id: str = "modeldeck-api"
    keycloak_audience: str = "modeldeck-api"
    keycloak_leeway_s: int = Field(default=30, ge=0, le=300)
    keycloak_role_map: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ROLE_MAP))
    audit_prediction_sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    audit_key: SecretStr = SecretStr("")
    audit_previous_keys: tuple[SecretStr, ...] = ()
    auth_failure_limit: int = Field(default=20, ge=1)
    auth_failure_window_s: float = Field(default=60.0, gt=0)
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: int = Field(default=0, ge=0, le=5)
    access_log: Literal["text", "json", "off"] = "text"
    preload_upload_libraries: bool = True
    embedded_mongo_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    # Monitoring (docs/monitoring.md).
    metrics_enabled: bool = True
    metrics_flush_interval_s: float = Field(default=5.0, gt=0)
    metrics_raw_retention_days: float = Field(default=7.0, gt=0)
    metrics_hourly_retention_days: float = Field(default=90.0, gt=0)
    metrics_rollup_interval_s: float = Field(default=300.0, gt=0)
    pool_sample_interval_s: float = Field(default=15.0, gt=0)
    worker_fast_lane: bool = True
    worker_inline_max_ms: float = Field(default=2.0, ge=0)
    prediction_log_retention_days: float = Field(default=7.0, gt=0)
    prediction_log_max_bytes: int = Field(default=16384, ge=256)
    alert_interval_s: float = Field(default=60.0, gt=0)
    alert_window_s: int = Field(default=300, ge=60)
    alert_min_requests: int = Field(default=20, ge=1)
    alert_webhook_url: str = ""
    alert_webhook_secret: str = ""
    drift_psi_warn: float = Field(default=0.1, gt=0)
    drift_psi_alert: float = Field(default=0.25, gt=0)
    drift_min_rows: int = Field(default=50, ge=1)
    drift_window_s: int = Field(default=3600, ge=60)
    # Data sources and batch scoring (docs/datasources.md).
    secret_key: SecretStr = SecretStr("")
    data_roots: tuple[Path, ...] = ()
    preview_max_rows: int = Field(default=1000, ge=1, le=100000)
    preview_timeout_s: float = Field(default=10.0, gt=0)
    batch_chunk_rows: int = Field(default=10000, ge=1, le=1000000)
    batch_statement_timeout_s: float = Field(default=600.0, gt=0)
    batch_result_ttl_s: int = Field(default=7 * 86400, ge=60)
    # prometheus-client reads this variable itself; it is here so the /metrics view knows the mode.
    prometheus_multiproc_dir: str = Field(default="", validation_alias="PROMETHEUS_MULTIPROC_DIR")

    @field_validator("keycloak_role_map")
    @classmethod
    def _known_roles(cls, value: dict[str, str]) -> dict[str, str]:
        bad = {k: v for k, v in value.items() if v not in ("admin", "operator", "analyst", "service")}
        if bad:
            raise ValueError(f"roles must map to admin, operator, analyst or service; got {bad}")
        return value

    @field_validator("secret_key")
    @classmethod
    def _fernet_key(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if raw:
            import base64
            import binascii

            try:
                ok = len(base64.urlsafe_b64decode(raw.encode())) == 32
            except (binascii.Error, ValueError):
                ok = False
            if not ok:
                # Never echo the value: it is a secret, even when malformed.
                raise ValueError("expected a Fernet key (32 url-safe base64-encoded bytes); make one with "
                                 "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`")
        return value

    @property
    def keycloak_enabled(self) -> bool:
        """Tell whether Keycloak tokens are accepted."""
        return bool(self.keycloak_url)

    @property
    def embedded_mongo(self) -> bool:
        """Tell whether the stack runs its own nx-27017 server."""
        return not self.mongo_url

    @property
    def effective_mongo_url(self) -> str:
        """Return the configured MongoDB URL, else the embedded server's."""
        return self.mongo_url or f"mongodb://127.0.0.1:{self.embedded_mongo_port}"

    def device_for(self, pool: str) -> str:
        """Return the torch device a pool's workers load models onto: CUDA for GPU pools unless set otherwise."""
        if self.worker_device != "auto":
            return self.worker_device
        return "cuda" if pool in self.gpu_pools else "cpu"

    def queue_name(self, pool: str) -> str:
        """Return the RabbitMQ queue that serves a pool."""
        return self.queue_prefix + pool

    @property
    def max_upload_bytes(self) -> int:
        """Return the upload size limit in bytes."""
        return self.max_upload_mb * 1024 * 1024


def settings_or_exit() -> Settings:
    """Read settings for a process entry point; print the bad variable and exit with status 2."""
    import sys

    try:
        return load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from exc


def load_settings() -> Settings:
    """Read settings from the environment, naming the bad variable when one is invalid."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"MODELDECK_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems} (see docs/configuration.md)") from exc
