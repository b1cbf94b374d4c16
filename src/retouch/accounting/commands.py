"""``retouch keys``, ``retouch usage`` and ``retouch db``: the operator's side of accounts.

Each command finds the database the way ``serve`` does (``--config``, ``--data-dir``,
``--database-url``, ``RETOUCH_*``) and brings its schema up to date first, so ``keys create``
works on a fresh data folder before the first ``serve``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from retouch.accounting import keys, ledger, migrate
from retouch.accounting.db import Database
from retouch.config import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def database_options(fn: F) -> F:
    fn = click.option(
        "--database-url", default=None,
        help="Accounts database URL (sqlite:///PATH, postgresql://...) [SQLite in DATA_DIR].",
    )(fn)  # fmt: skip
    fn = click.option(
        "--data-dir", type=click.Path(path_type=Path), default=None, help="Data folder."
    )(fn)
    fn = click.option(
        "--config", type=click.Path(path_type=Path), default=None, help="TOML config file."
    )(fn)
    return fn


def _settings(config: Path | None, data_dir: Path | None, database_url: str | None) -> Settings:
    try:
        return load_settings(config, data_dir=data_dir, database_url=database_url)
    except Exception as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from None


def open_database(config: Path | None, data_dir: Path | None, database_url: str | None) -> Database:
    settings = _settings(config, data_dir, database_url)
    try:
        db = Database.from_settings(settings)
        migrate.upgrade(db)
    except Exception as exc:
        raise click.ClickException(f"accounts database: {exc}") from None
    return db


def _where(db: Database) -> str:
    return f"{db.backend}: {db.url.render_as_string(hide_password=True)}"


_UNSET = "unset"


class _Limit(click.ParamType):  # type: ignore[type-arg]
    """A positive integer, or ``none``/``unlimited`` to remove the limit."""

    name = "N|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) or value is None or value == _UNSET:
            return value
        if str(value).lower() in ("none", "unlimited"):
            return None
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a positive integer nor 'none'", param, ctx)
        if number < 1:
            self.fail("must be at least 1 (or 'none' for no limit)", param, ctx)
        return number


_Positive = click.IntRange(min=1)


def _models(value: str | None) -> frozenset[str] | None:
    if value is None or value.strip().lower() in ("", "all", "*"):
        return None
    return frozenset(m.strip() for m in value.split(",") if m.strip())


def _show(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _describe(key: keys.KeyInfo) -> str:
    lim = key.limits
    models = ",".join(sorted(lim.models)) if lim.models is not None else "all"
    return (
        f"{key.id} '{key.name}': requests/min {_show(lim.requests_per_minute)}, images/min "
        f"{_show(lim.images_per_minute)}, token quota {_show(lim.token_quota)} "
        f"(used {key.tokens_used:,}), models {models}"
        + ("" if key.active else f", revoked {_when(key.revoked_at)}")
    )


def _when(ts: int | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# -- retouch keys ------------------------------------------------------------------------------


@click.group("keys")
def keys_group() -> None:
    """Create, list, change and revoke API keys."""


@keys_group.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option("--requests-per-minute", type=_Positive, default=None, help="[unlimited]")
@click.option("--images-per-minute", type=_Positive, default=None, help="[unlimited]")
@click.option("--token-quota", type=_Positive, default=None, help="Total tokens [unlimited].")
@click.option("--models", default=None, help="Comma-separated model names the key may use [all].")
@database_options
def keys_create(
    name: str,
    requests_per_minute: int | None,
    images_per_minute: int | None,
    token_quota: int | None,
    models: str | None,
    config: Path | None,
    data_dir: Path | None,
    database_url: str | None,
) -> None:
    """Create a key; its secret is printed once, alone on the last line."""
    db = open_database(config, data_dir, database_url)
    try:
        limits = keys.KeyLimits(requests_per_minute, images_per_minute, token_quota, _models(models))
        key, secret = db.write_sync(keys.create_key, name, limits)
    finally:
        db.close()
    click.echo(f"Created {_describe(key)}")
    click.echo("The secret is shown only now; clients send it as 'Authorization: Bearer <secret>':")
    click.echo(secret)


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@database_options
def keys_list(
    as_json: bool, config: Path | None, data_dir: Path | None, database_url: str | None
) -> None:
    """List keys (never their secrets)."""
    db = open_database(config, data_dir, database_url)
    try:
        found = db.read_sync(keys.list_keys)
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps([_key_json(k) for k in found], indent=2))
        return
    if not found:
        click.echo("No keys: the server runs open (loopback only). Create one with "
                   "'retouch keys create --name NAME'.")  # fmt: skip
        return
    rows = [("ID", "NAME", "STATUS", "REQ/MIN", "IMG/MIN", "QUOTA", "USED", "MODELS", "CREATED")]
    for k in found:
        lim = k.limits
        rows.append((
            k.id, k.name, "active" if k.active else "revoked", _show(lim.requests_per_minute),
            _show(lim.images_per_minute), _show(lim.token_quota), f"{k.tokens_used:,}",
            ",".join(sorted(lim.models)) if lim.models is not None else "all", _when(k.created_at),
        ))  # fmt: skip
    _table(rows)


def _key_json(k: keys.KeyInfo) -> dict[str, Any]:
    lim = k.limits
    return {
        "id": k.id,
        "name": k.name,
        "active": k.active,
        "requests_per_minute": lim.requests_per_minute,
        "images_per_minute": lim.images_per_minute,
        "token_quota": lim.token_quota,
        "tokens_used": k.tokens_used,
        "models": sorted(lim.models) if lim.models is not None else None,
        "created_at": k.created_at,
        "revoked_at": k.revoked_at,
    }


@keys_group.command("revoke")
@click.argument("key_id")
@database_options
def keys_revoke(
    key_id: str, config: Path | None, data_dir: Path | None, database_url: str | None
) -> None:
    """Revoke a key; every server process refuses it from its next request."""
    db = open_database(config, data_dir, database_url)
    try:
        key = db.write_sync(keys.revoke_key, key_id)
    finally:
        db.close()
    if key is None:
        raise click.ClickException(f"no key {key_id!r} (see 'retouch keys list')")
    click.echo(f"Revoked {_describe(key)}")


@keys_group.command("update")
@click.argument("key_id")
@click.option("--name", default=None)
@click.option("--requests-per-minute", type=_Limit(), default=_UNSET, help="N or none.")
@click.option("--images-per-minute", type=_Limit(), default=_UNSET, help="N or none.")
@click.option("--token-quota", type=_Limit(), default=_UNSET, help="N or none.")
@click.option("--models", default=None, help="Comma-separated names, or 'all'.")
@click.option("--reset-tokens", is_flag=True, help="Start counting the quota from zero again.")
@database_options
def keys_update(
    key_id: str,
    name: str | None,
    requests_per_minute: Any,
    images_per_minute: Any,
    token_quota: Any,
    models: str | None,
    reset_tokens: bool,
    config: Path | None,
    data_dir: Path | None,
    database_url: str | None,
) -> None:
    """Change a key's name, limits or models; takes effect on the next request."""
    changes: dict[str, object] = {}
    if name is not None:
        changes["name"] = name
    for column, value in (
        ("requests_per_minute", requests_per_minute),
        ("images_per_minute", images_per_minute),
        ("token_quota", token_quota),
    ):
        if value != _UNSET:
            changes[column] = value
    if models is not None:
        changes["models"] = _models(models)
    db = open_database(config, data_dir, database_url)
    try:
        key = db.write_sync(keys.update_key, key_id, changes, reset_tokens=reset_tokens)
    finally:
        db.close()
    if key is None:
        raise click.ClickException(f"no key {key_id!r} (see 'retouch keys list')")
    click.echo(f"Updated {_describe(key)}")


# -- retouch usage -----------------------------------------------------------------------------


@click.command("usage")
@click.option(
    "--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
    help="First UTC day to report, YYYY-MM-DD [30 days ago].",
)  # fmt: skip
@click.option("--key", "key_id", default=None, help="Only this key id.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@database_options
def usage(
    since: dt.datetime | None,
    key_id: str | None,
    as_json: bool,
    config: Path | None,
    data_dir: Path | None,
    database_url: str | None,
) -> None:
    """Usage per key and UTC day, from the ledger (one row per admitted request)."""
    if since is None:
        start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=30)
        since = dt.datetime(start.year, start.month, start.day)
    since_ts = int(since.replace(tzinfo=dt.UTC).timestamp())
    db = open_database(config, data_dir, database_url)
    try:
        days = db.read_sync(ledger.daily_usage, since=since_ts, key_id=key_id)
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps([d.as_dict() for d in days], indent=2))
        return
    if not days:
        click.echo(f"No usage since {since.date().isoformat()}.")
        return
    rows = [("DAY", "KEY", "NAME", "REQUESTS", "OK", "IMAGES IN", "IMAGES OUT", "INPUT TOK",
             "OUTPUT TOK", "TOTAL TOK")]  # fmt: skip
    for d in days:
        rows.append((
            d.day, d.key_id or "(open)", d.key_name or "-", f"{d.requests:,}", f"{d.succeeded:,}",
            f"{d.input_images:,}", f"{d.output_images:,}", f"{d.input_tokens:,}",
            f"{d.output_tokens:,}", f"{d.total_tokens:,}",
        ))  # fmt: skip
    _table(rows)


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


# -- retouch db --------------------------------------------------------------------------------


@click.group("db")
def db_group() -> None:
    """The accounts database schema."""


@db_group.command("upgrade")
@database_options
def db_upgrade(config: Path | None, data_dir: Path | None, database_url: str | None) -> None:
    """Apply the migrations (serve does this on start-up too)."""
    db = open_database(config, data_dir, database_url)
    try:
        click.echo(f"accounts database at revision {migrate.current_revision(db)} ({_where(db)})")
    finally:
        db.close()


COMMANDS = (keys_group, usage, db_group)
