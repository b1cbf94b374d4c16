"""The accounts schema (SQLAlchemy Core). Changes here need a migration in ``migrations/``.

Times are integer Unix seconds: the same arithmetic (bucketing by ``created_at // width``)
works on SQLite and PostgreSQL, and OpenAI's usage API speaks Unix seconds too.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias).
_Serial = BigInteger().with_variant(Integer(), "sqlite")

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True, comment="key_<hex>, public"),
    Column("name", String(200), nullable=False),
    Column("prefix", String(16), nullable=False, unique=True, comment="lookup part of the secret"),
    Column("secret_hash", String(64), nullable=False, comment="sha256 hex of the whole secret"),
    Column("models", Text, nullable=True, comment="comma-separated names; NULL = all"),
    Column("requests_per_minute", Integer, nullable=True),
    Column("images_per_minute", Integer, nullable=True),
    Column("token_quota", BigInteger, nullable=True),
    Column("tokens_used", BigInteger, nullable=False, server_default="0"),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("id", _Serial, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, unique=True),
    Column("key_id", String(32), ForeignKey("api_keys.id"), nullable=True),
    Column("model", String(200), nullable=False),
    Column("status", Integer, nullable=False),
    Column("input_images", Integer, nullable=False),
    Column("output_images", Integer, nullable=False),
    Column("text_tokens", Integer, nullable=False),
    Column("image_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("total_tokens", Integer, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("end_user", String(200), nullable=True, comment="the request's user/safety_identifier"),
    Column("created_at", BigInteger, nullable=False),
    Index(None, "key_id", "created_at"),
    Index(None, "created_at"),
)

rate_windows = Table(
    "rate_windows",
    metadata,
    Column("key_id", String(32), ForeignKey("api_keys.id"), primary_key=True),
    Column("window_start", BigInteger, primary_key=True, comment="Unix second the minute starts"),
    Column("requests", Integer, nullable=False),
    Column("images", Integer, nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(32), primary_key=True, comment="key id, '' when serving open"),
    Column("idempotency_key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("status", Integer, nullable=True, comment="NULL while the first request runs"),
    Column("content_type", String(100), nullable=True),
    Column("body", LargeBinary, nullable=True),
    Column("locked_until", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index(None, "expires_at"),
)
