"""``retouch keys``, ``retouch usage``, ``retouch db`` and the serve start-up check (CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Connection, select

from retouch.accounting.gate import UsageRecord
from retouch.accounting.tables import api_keys
from retouch.cli import main
from tests.accounts.conftest import Accounts


def _run(accounts: Accounts, *args: str) -> Result:
    data_dir = str(accounts.settings().data_dir)
    return CliRunner().invoke(
        main, [*args, "--data-dir", data_dir, "--database-url", accounts.url], catch_exceptions=False
    )


def test_keys_lifecycle(accounts: Accounts) -> None:
    created = _run(
        accounts, "keys", "create", "--name", "ci bot", "--requests-per-minute", "30",
        "--images-per-minute", "10", "--token-quota", "50000", "--models", "echo, klein",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    lines = created.output.splitlines()
    secret = lines[-1]
    assert secret.startswith("sk-rt-")
    assert " " not in secret  # alone on its line: `| tail -1` gets exactly the secret
    key_id = lines[0].split()[1]
    assert key_id.startswith("key_")

    def stored(conn: Connection) -> list[Any]:
        return [tuple(r) for r in conn.execute(select(api_keys))]

    [row] = accounts.db.read_sync(stored)
    assert secret not in {str(v) for v in row}  # only a hash and a lookup prefix are kept

    listed = _run(accounts, "keys", "list")
    assert key_id in listed.output
    assert "ci bot" in listed.output
    assert secret not in listed.output
    [as_json] = json.loads(_run(accounts, "keys", "list", "--json").output)
    assert as_json["models"] == ["echo", "klein"]
    assert (as_json["requests_per_minute"], as_json["token_quota"]) == (30, 50000)

    updated = _run(accounts, "keys", "update", key_id, "--token-quota", "none", "--models", "all")
    assert updated.exit_code == 0, updated.output
    [as_json] = json.loads(_run(accounts, "keys", "list", "--json").output)
    assert (as_json["token_quota"], as_json["models"], as_json["images_per_minute"]) == (
        None, None, 10,
    )  # fmt: skip

    assert _run(accounts, "keys", "revoke", key_id).exit_code == 0
    [as_json] = json.loads(_run(accounts, "keys", "list", "--json").output)
    assert not as_json["active"]
    missing = _run(accounts, "keys", "revoke", "key_nope")
    assert missing.exit_code == 1
    assert "no key" in missing.output


def test_usage_per_key_and_day(accounts: Accounts) -> None:
    alice, _ = accounts.create_key("alice")
    bob, _ = accounts.create_key("bob")

    async def record() -> None:
        gate = await accounts.gate(accounts.settings())
        for i, (key, status, tokens) in enumerate(
            [(alice, 200, 100), (alice, 500, 0), (bob, 200, 40)]
        ):
            await gate.record(UsageRecord(
                request_id=f"req_{i}", key_id=key.id, model="echo", status=status,
                input_images=1, output_images=1 if status == 200 else 0, text_tokens=tokens // 2,
                image_tokens=0, output_tokens=tokens - tokens // 2, latency_ms=3,
            ))  # fmt: skip
        accounts.clock.advance(86400)
        await gate.record(UsageRecord(
            request_id="req_next_day", key_id=alice.id, model="echo", status=200, input_images=2,
            output_images=3, text_tokens=1, image_tokens=2, output_tokens=3, latency_ms=3,
        ))  # fmt: skip
        await gate.close()

    anyio.run(record)
    # The test clock is 2027-01-15 08:00 UTC.
    table = _run(accounts, "usage", "--since", "2027-01-01")
    assert table.exit_code == 0, table.output
    assert "2027-01-15" in table.output
    assert "2027-01-16" in table.output
    days = json.loads(_run(accounts, "usage", "--since", "2027-01-01", "--json").output)
    summary = [(d["day"], d["key_name"], d["requests"], d["succeeded"], d["total_tokens"]) for d in days]
    assert summary == [
        ("2027-01-15", "alice", 2, 1, 100),
        ("2027-01-15", "bob", 1, 1, 40),
        ("2027-01-16", "alice", 1, 1, 6),
    ]
    only_bob = json.loads(_run(accounts, "usage", "--since", "2027-01-01", "--key", bob.id, "--json").output)
    assert [d["key_id"] for d in only_bob] == [bob.id]
    later = _run(accounts, "usage", "--since", "2027-01-16", "--json")
    assert [d["day"] for d in json.loads(later.output)] == ["2027-01-16"]


def test_db_upgrade(accounts: Accounts) -> None:
    result = _run(accounts, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert "revision 0001" in result.output


def test_serve_needs_a_key_or_insecure_off_loopback(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from retouch.api.server import GuardedH11Protocol

    started: list[dict[str, Any]] = []

    def run(server: uvicorn.Server) -> None:  # serve runs the production server config
        assert issubclass(server.config.http, GuardedH11Protocol)  # type: ignore[arg-type]
        started.append({"host": server.config.host})

    monkeypatch.setattr(uvicorn.Server, "run", run)

    refused = _run(accounts, "serve", "--host", "0.0.0.0", "--model", "echo=echo")
    assert refused.exit_code == 1
    assert "retouch keys create" in refused.output
    assert "--insecure" in refused.output
    assert started == []

    assert _run(accounts, "serve", "--model", "echo=echo").exit_code == 0  # loopback: open
    insecure = _run(accounts, "serve", "--host", "0.0.0.0", "--insecure", "--model", "echo=echo")
    assert insecure.exit_code == 0, insecure.output
    accounts.create_key()
    keyed = _run(accounts, "serve", "--host", "0.0.0.0", "--model", "echo=echo")
    assert keyed.exit_code == 0, keyed.output
    assert [kw["host"] for kw in started] == ["127.0.0.1", "0.0.0.0", "0.0.0.0"]


def test_bad_database_url_is_a_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["keys", "list", "--data-dir", str(tmp_path), "--database-url", "mysql://x/y"]
    )
    assert result.exit_code == 1
    assert "unsupported accounts database" in result.output
