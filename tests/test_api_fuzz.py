"""schemathesis against the OpenAPI schema: generated requests to every REST route, no 5xx answers.

(schemathesis' own pytest plugin does not run under pytest 9 yet, so the operations are
driven here with its strategies and hypothesis directly.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from memory_server.api.app import create_app
from memory_server.config import Settings, load_settings
from memory_server.runtime import Runtime

EXAMPLES_PER_ROUTE = 30


@schemathesis.serializer("application/gzip")
def _gzip_body(_ctx: Any, value: Any) -> bytes:
    """Import bodies: whatever was generated, as bytes (mostly not a valid export: that is the point)."""
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fuzz.db'}"


@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "token-auth"])
def test_no_server_errors_on_any_route(runtime: Runtime, settings: Settings, auth: bool) -> None:
    headers: dict[str, str] = {}
    if auth:
        settings = load_settings(
            data_dir=settings.data_dir,
            database_url=settings.database_url,
            embedding_model_dir=settings.embedding_model_dir,
            auth_mode="token",
        )
        headers = {"Authorization": f"Bearer {runtime.tokens.create('fuzzer', is_admin=True)[1]}"}
    app = create_app(settings, runtime)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    results = list(schema.get_all_operations())
    unreadable = [result.err() for result in results if isinstance(result, Err)]
    assert not unreadable, f"operations schemathesis could not read from the OpenAPI schema: {unreadable}"
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    # The change stream never ends by itself; it is tested in test_stream.py.
    operations = [op for op in operations if op.path != "/api/v1/memories/stream"]
    assert len(operations) >= 18
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=EXAMPLES_PER_ROUTE,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: Any) -> None:
            response = case.call(headers=headers)
            where = f"{case.method} {case.formatted_path} -> {response.status_code}"
            if response.status_code >= 500:
                failures.append(f"{where}: {response.text[:200]}")
                return
            try:  # every answer, errors included, must match the schema the API publishes
                case.validate_response(
                    response, checks=[response_schema_conformance, status_code_conformance]
                )
            except Exception as exc:  # schemathesis raises a group of check failures
                failures.append(f"{where}: {str(exc)[:300]}")

        run()
    assert failures == []
