"""Settings: one validated object, built from defaults < TOML file < ``RETOUCH_*`` env < CLI flags.

Every field has a default and a description; ``docs/settings.md`` is generated from this module
(``python -m retouch settings-doc``) and a test fails when it is out of date. Nested groups use
``__`` in environment variables, e.g. ``RETOUCH_LIMITS__MAX_BODY_BYTES=50000000``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from retouch.families import ApiFamily

EngineKind = Literal[
    "classic", "echo", "flux2-klein", "qwen-image-edit", "sd-inpaint", "flux-kontext",
    "joyimage-edit", "longcat-image-edit", "qwen-image-2.1", "upstream",
]



class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Group):
    max_body_bytes: int = Field(
        96 * 1024 * 1024, gt=0, description="Largest request body in bytes; larger ones get 413."
    )
    max_image_bytes: int = Field(
        50 * 1024 * 1024, gt=0, description="Largest single input image file in bytes."
    )
    max_mask_bytes: int = Field(4 * 1024 * 1024, gt=0, description="Largest mask file in bytes.")
    max_images: int = Field(16, ge=1, le=64, description="Most input images in one request.")
    max_fields: int = Field(32, ge=1, description="Most non-file form fields in one request.")
    max_field_bytes: int = Field(
        128 * 1024, gt=0, description="Largest non-file form field (a 32000-char prompt in UTF-8)."
    )
    max_image_pixels: int = Field(
        16_777_216, gt=0, description="Most pixels in one input image, read from its header."
    )
    max_request_pixels: int = Field(
        67_108_864, gt=0, description="Most pixels summed over all inputs of one request."
    )
    max_output_pixels: int = Field(
        8_294_400, gt=0, description="Most pixels in one output image (3840x2160)."
    )
    receipt_timeout_s: float = Field(
        60.0, gt=0, description="Deadline for receiving the whole request body (slow clients)."
    )


class ServerSettings(_Group):
    """The HTTP server (uvicorn with retouch's guarded h11 protocol, ``retouch.api.server``)."""

    header_timeout_s: float = Field(
        10.0, gt=0,
        description="Deadline for a complete request head (line and headers), from the moment "
        "the connection opens or the previous response ends; then 408 and close (slow-loris).",
    )  # fmt: skip
    keep_alive_s: float = Field(
        5.0, gt=0, description="Idle keep-alive connections are closed after this long."
    )
    max_connections: int = Field(
        0, ge=0,
        description="Most open client connections; 0 = from the open-files limit (that limit "
        "less 128, at most 10000). Past it the oldest connection still sending its request head "
        "is dropped, or, when every connection is busy, the newcomer gets a 503.",
    )  # fmt: skip
    max_head_bytes: int = Field(
        16 * 1024, ge=1024, description="Largest request head (line and headers); larger is 431."
    )
    linger_s: float = Field(
        30.0, gt=0,
        description="A request answered before its body was read (429 at the model field, "
        "413, 408) is half-closed and the rest of its body read and discarded, so the client "
        "reads the answer instead of a reset; for at most this long per connection.",
    )  # fmt: skip
    linger_idle_s: float = Field(
        5.0, gt=0,
        description="A lingering connection (see linger_s) that sends nothing for this long "
        "is closed.",
    )  # fmt: skip
    raise_open_files_limit: bool = Field(
        True, description="Raise the soft open-files limit (RLIMIT_NOFILE) to the hard limit "
        "at start, so more clients fit before the connection cap applies.",
    )  # fmt: skip


class QueueSettings(_Group):
    max_queue: int = Field(
        16, ge=0, description="Requests that may wait per model beyond those running; then 429."
    )
    deadline_s: float = Field(
        120.0, gt=0, description="How long a request may wait in the queue before a 504."
    )
    keepalive_s: float = Field(
        10.0, gt=0, description="Interval of ': ping' comments on idle SSE streams."
    )
    imaging_threads: int = Field(
        0, ge=0, description="Threads for decode/encode; 0 = number of CPUs."
    )
    imaging_nice: int = Field(
        5, ge=0, le=19,
        description="How many nice levels below the event loop the decode/encode threads run "
        "(Linux): when they share a CPU, the loop answering requests goes first. 0 = same.",
    )  # fmt: skip
    run_deadline_s: float = Field(
        600.0,
        gt=0,
        description="Longest an engine may run one job (per model: ModelSettings.run_deadline_s); "
        "then the job is cancelled at its next step and the request gets 504.",
    )
    cancel_grace_s: float = Field(
        30.0,
        gt=0,
        description="How long a cancelled job may keep running before its model is reported "
        "not ready (/readyz 503); also the bound on waiting for running jobs at shutdown.",
    )
    max_decodes: int = Field(
        0, ge=0, description="Requests decoding images at once; 0 = number of CPUs."
    )
    max_buffered_bytes: int = Field(
        1024 * 1024 * 1024,
        gt=0,
        description="Most upload bytes held in memory across all requests being received or "
        "decoded; a request that would go beyond gets 503 with Retry-After. At least "
        "limits.max_body_bytes.",
    )


class S3Settings(_Group):
    endpoint_url: str | None = Field(
        None,
        description="URL of the S3-compatible service (e.g. https://s3.example.com); "
        "default: AWS S3 of the region. Credentials come from the standard AWS environment "
        "variables, files or instance roles, never from this file.",
    )
    bucket: str = Field("retouch", min_length=3, description="Bucket for image blobs.")
    prefix: str = Field(
        "blobs/", description="Key prefix of retouch's objects inside the bucket."
    )
    region: str | None = Field(
        None, description="Region name for request signing; default: the AWS configuration."
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="Bucket addressing; most self-hosted S3 services need 'path'."
    )
    create_bucket: bool = Field(
        True, description="Create the bucket at start-up when it does not exist."
    )
    lifecycle_days: int | None = Field(
        None,
        ge=1,
        description="Also install a bucket lifecycle rule expiring retouch's objects after "
        "this many days (a backstop: the sweep deletes them at their exact expiry).",
    )
    presign: bool = Field(
        False,
        description="Answer response_format=url with S3 presigned URLs (clients fetch from S3) "
        "instead of retouch-signed links served by the fronts.",
    )
    presign_endpoint_url: str | None = Field(
        None,
        description="Endpoint that presigned URLs name, when clients reach S3 by another "
        "address than the fronts do; default: endpoint_url.",
    )
    max_connections: int = Field(
        32, ge=1, description="Connection pool size of the S3 client (per front)."
    )


class StorageSettings(_Group):
    backend: Literal["local", "s3"] = Field(
        "local",
        description="Where image blobs live: 'local' (DATA_DIR/blobs, one front) or 's3' "
        "(shared by every front; see [storage.s3]).",
    )
    s3: S3Settings = Field(default_factory=S3Settings, description="The S3 blob store.")
    url_ttl_s: int = Field(3600, gt=0, description="Lifetime of signed image URLs in seconds.")
    signing_keys: list[str] = Field(
        default_factory=list,
        description="HMAC keys for URL signatures, newest first (rotation); "
        "empty = a random key kept in DATA_DIR/signing.key.",
    )
    sweep_interval_s: float = Field(
        60.0, gt=0, description="How often expired blobs are deleted."
    )
    allow_url_for_gpt_models: bool = Field(
        False,
        description="Accept response_format=url for GPT-image model families too "
        "(OpenAI accepts it only for dall-e-2).",
    )
    public_base_url: str | None = Field(
        None,
        description="Absolute base URL for image links (e.g. https://img.example.com); "
        "default: the URL the request came in on.",
    )


class FetchSettings(_Group):
    """Server-side downloads: ``image_url`` inputs and mirrored upstream links (SSRF-safe)."""

    image_urls: bool = Field(
        True,
        description="Accept http(s) URLs in the JSON body's image_url (OpenAI does) and fetch "
        "them; false = data: URLs only.",
    )
    timeout_s: float = Field(
        20.0, gt=0, description="Deadline for one download: resolution, redirects and body."
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Deadline for one TCP/TLS connect.")
    max_redirects: int = Field(5, ge=0, le=20, description="Most redirects followed per fetch.")
    allow_networks: list[str] = Field(
        default_factory=list,
        description="Non-public networks (CIDR, e.g. 10.20.0.0/16) that may be fetched anyway; "
        "private, loopback, link-local and similar addresses are refused otherwise.",
    )

    @field_validator("allow_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad entry
        return value


class AccountSettings(_Group):
    db_threads: int = Field(
        8,
        ge=1,
        le=64,
        description="Threads (and pooled connections) for the accounts database; on SQLite "
        "these are the reader threads, and writes go through one writer thread of their own.",
    )
    idempotency_ttl_s: int = Field(
        86400, gt=0, description="How long a response is kept for Idempotency-Key replays."
    )
    open_recheck_s: float = Field(
        1.0, ge=0,
        description="Serving open (no API keys yet), how often the database is asked whether "
        "a key exists now; a key created by another process takes effect within this long. "
        "0 = on every request.",
    )  # fmt: skip
    idempotency_max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=0,
        description="Largest response kept for Idempotency-Key replays; a larger one is not "
        "stored and a retry runs again.",
    )


class UpstreamSettings(_Group):
    """A relay to an OpenAI-compatible server (``engine = "upstream"``): see docs/gateway.md."""

    base_url: str = Field(
        description="The upstream API root, e.g. https://api.openai.com/v1 or "
        "http://10.0.0.5:8000/v1 (another retouch)."
    )
    model: str | None = Field(
        None, description="Model name sent upstream; default: the name the client sent."
    )
    api_key_env: str = Field(
        "RETOUCH_UPSTREAM_API_KEY",
        description="Environment variable holding the upstream API key (unset: no key sent).",
    )
    timeout_s: float = Field(
        600.0, gt=0, description="Read timeout per upstream request (OpenAI's SDK uses 600 s)."
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="Connect timeout to the upstream.")
    max_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries of requests the upstream never processed (connect failures, 429 "
        "rate limits, 503), with backoff and its Retry-After.",
    )
    max_retry_after_s: float = Field(
        10.0, ge=0, description="Longest upstream Retry-After waited for; longer ones pass on."
    )
    concurrency: int = Field(16, ge=1, description="Requests relayed at once.")
    max_response_bytes: int = Field(
        512 * 1024 * 1024, gt=0, description="Largest upstream response body accepted."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra headers sent upstream (e.g. OpenAI-Project)."
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"upstream base_url must be an http(s) URL, got {value!r}")
        return value.rstrip("/")


class ModelSettings(_Group):
    """One served model: an engine, its weights, and the request names it answers to."""

    name: str = Field(description="The model name clients send.")
    engine: EngineKind = Field(description="Engine family that runs it.")
    family: ApiFamily = Field(
        "native", description="Validation rules for requests to this name (OpenAI family)."
    )
    weights: str | None = Field(
        None, description="Hub id or local folder of the weights (generative engines)."
    )
    device: str = Field("auto", description="torch device: auto, cpu, cuda, cuda:1, mps.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="torch dtype of the weights."
    )
    cpu_offload: bool = Field(False, description="diffusers model CPU offload (less VRAM).")
    aliases: list[str] = Field(
        default_factory=list, description="More request names for this model."
    )
    workers: int = Field(
        1, ge=1, description="Jobs this model runs at once (per replica with the Ray backend)."
    )
    replicas: int | None = Field(
        None,
        ge=1,
        description="Ray backend: fixed number of engine replicas (default 1, or autoscaling "
        "between min_replicas and max_replicas when those are set).",
    )
    min_replicas: int | None = Field(
        None, ge=0, description="Ray backend: autoscaling floor (0 = scale to zero when idle)."
    )
    max_replicas: int | None = Field(None, ge=1, description="Ray backend: autoscaling ceiling.")
    gpus_per_replica: float | None = Field(
        None,
        ge=0,
        description="Ray backend: GPUs each replica reserves; default 1 for generative engines, "
        "0 for classic and echo.",
    )
    cpus_per_replica: float = Field(1.0, ge=0, description="Ray backend: CPUs each replica reserves.")
    ray_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray backend: custom resources each replica needs (e.g. a node label "
        'resource such as {"a100" = 1}).',
    )
    license: str | None = Field(
        None,
        description="Licence of the weights, shown in /v1/models; default: the licence of the "
        "engine's usual weights. One containing 'non-commercial' needs accept_license.",
    )
    accept_license: Literal["non-commercial"] | None = Field(
        None,
        description="Acknowledge that the weights' licence forbids commercial use; without it a "
        "non-commercial model (e.g. flux-kontext) refuses to start.",
    )
    run_deadline_s: float | None = Field(
        None, gt=0, description="Run deadline of this model; default: queue.run_deadline_s."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Engine-specific options (steps, compile, ...)."
    )
    upstream: UpstreamSettings | None = Field(
        None, description="Where an ``upstream`` model relays to (see UpstreamSettings)."
    )
    overflow: list[str] = Field(
        default_factory=list,
        description="Other configured models to send requests to, in order, when this one's "
        "queue is full (e.g. a local engine overflowing to an upstream relay).",
    )

    @model_validator(mode="after")
    def _upstream_configured(self) -> ModelSettings:
        if (self.engine == "upstream") != (self.upstream is not None):
            raise ValueError(
                f"model {self.name!r}: engine 'upstream' and an [upstream] table go together"
            )
        return self


    @model_validator(mode="after")
    def _replica_counts(self) -> ModelSettings:
        autoscale = self.min_replicas is not None or self.max_replicas is not None
        if autoscale and self.replicas is not None:
            raise ValueError(
                f"model {self.name!r}: set either replicas or min_replicas/max_replicas"
            )
        if autoscale and (self.min_replicas or 0) > (self.max_replicas or 1):
            raise ValueError(f"model {self.name!r}: min_replicas is above max_replicas")
        return self


def default_models() -> list[ModelSettings]:
    return [ModelSettings(name="classic", engine="classic", family="native")]


class ClusterSettings(_Group):
    backend: Literal["local", "ray"] = Field(
        "local",
        description="Where engines run: 'local' (worker threads in this process) or 'ray' "
        "(Ray Serve replicas, shared by every front that uses the same config).",
    )
    address: str = Field(
        "auto",
        description="Ray cluster to attach to: 'auto' (the cluster of the Ray node on this "
        "host) or HOST:PORT of the head's GCS. The host must run a Ray node (ray start).",
    )
    deploy: bool = Field(
        True,
        description="Submit this config's engine deployments at start-up. Idempotent: an "
        "unchanged config restarts nothing, a changed one updates in place (replica counts, "
        "queue limits) or rolls the replicas (engine settings). False = only attach.",
    )
    deploy_timeout_s: float = Field(
        600.0, gt=0, description="How long start-up waits for the deployments to run."
    )
    namespace: str = Field(
        "retouch", description="Ray namespace of the fronts' driver processes."
    )
    router_max_backoff_s: float = Field(
        0.05, gt=0, le=0.5,
        description="Longest pause of a front's Serve router between tries of a request that "
        "waits for a busy replica. Serve backs off from 25 ms, doubling, to 0.5 s by default, so "
        "a replica that frees up may idle for up to that long; each try also probes the busy "
        "replicas, so a shorter cap costs CPU in the fronts and replicas while requests wait.",
    )  # fmt: skip
    transport: Literal["grpc", "actor"] = Field(
        "grpc",
        description="How a front sends jobs to replicas: 'grpc' (Serve's direct gRPC channel "
        "to each replica; about half the round trip of an actor call) or 'actor' (Ray actor "
        "calls, arguments and results through the object store).",
    )  # fmt: skip


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RETOUCH_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    data_dir: Path = Field(
        Path("./retouch-data"), description="Folder for the database, blobs and keys."
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the accounts database; default SQLite in DATA_DIR.",
    )
    insecure: bool = Field(
        False, description="Allow serving without API keys on a non-loopback address."
    )
    accounts: AccountSettings = Field(
        default_factory=AccountSettings, description="API keys, usage ledger and idempotency."
    )
    default_model: str | None = Field(
        None,
        description="Model that OpenAI's names (gpt-image-1, dall-e-2, ...) and requests "
        "without a model go to; default: the first configured model.",
    )
    models: list[ModelSettings] = Field(
        default_factory=default_models, description="Served models (see ModelSettings)."
    )
    limits: Limits = Field(default_factory=Limits, description="Request and image limits.")
    queue: QueueSettings = Field(default_factory=QueueSettings, description="Admission.")
    server: ServerSettings = Field(
        default_factory=ServerSettings, description="HTTP server timeouts and connection caps."
    )
    storage: StorageSettings = Field(
        default_factory=StorageSettings, description="Blob storage and signed URLs."
    )
    fetch: FetchSettings = Field(
        default_factory=FetchSettings, description="Server-side downloads (image_url, mirrors)."
    )
    cluster: ClusterSettings = Field(
        default_factory=ClusterSettings, description="Engine backend (local or a Ray cluster)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as text, or as one JSON object per line (with the request id) "
        "for log collectors.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if _TOML_PATH is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_TOML_PATH))
        return tuple(sources)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSettings]) -> list[ModelSettings]:
        if not models:
            raise ValueError("at least one model must be configured")
        seen: set[str] = set()
        for m in models:
            for name in (m.name, *m.aliases):
                if name in seen:
                    raise ValueError(f"model name {name!r} is configured twice")
                seen.add(name)
        return models

    @model_validator(mode="after")
    def _overflow_exists(self) -> Settings:
        names = {m.name for m in self.models}
        for m in self.models:
            for target in m.overflow:
                if target not in names or target == m.name:
                    raise ValueError(
                        f"model {m.name!r}: overflow target {target!r} is not another "
                        "configured model"
                    )
        return self

    @model_validator(mode="after")
    def _buffer_fits_a_request(self) -> Settings:
        if self.queue.max_buffered_bytes < self.limits.max_body_bytes:
            raise ValueError(
                f"queue.max_buffered_bytes ({self.queue.max_buffered_bytes}) must be at least "
                f"limits.max_body_bytes ({self.limits.max_body_bytes}), or no maximal request "
                "could ever be received"
            )
        return self

    @model_validator(mode="after")
    def _queue_fits_ray_serve(self) -> Settings:
        engines = [m.name for m in self.models if m.engine != "upstream"]
        if self.cluster.backend == "ray" and self.queue.max_queue == 0 and engines:
            raise ValueError(
                "queue.max_queue = 0 cannot be served by the Ray backend: Ray Serve's "
                "max_queued_requests must be -1 (no limit) or at least 1; set max_queue >= 1 "
                "or use cluster.backend = \"local\""
            )
        return self

    @model_validator(mode="after")
    def _default_exists(self) -> Settings:
        if self.default_model is not None and self.default_model not in {
            m.name for m in self.models
        }:
            raise ValueError(f"default_model {self.default_model!r} is not a configured model")
        return self

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


_TOML_PATH: Path | None = None


def load_settings(toml_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, an optional TOML file, the environment and overrides
    (CLI flags; ``None`` values are ignored)."""
    global _TOML_PATH
    if toml_file is not None and not toml_file.is_file():
        raise FileNotFoundError(f"config file not found: {toml_file}")
    _TOML_PATH = toml_file
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _TOML_PATH = None
