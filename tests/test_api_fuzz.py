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

from memory_server.api.app import create_app
from memory_server.config import Settings
from memory_server.runtime import Runtime

EXAMPLES_PER_ROUTE = 30


@schemathesis.serializer("application/gzip")
def _gzip_body(_ctx: Any, value: Any) -> bytes:
    """Import bodies: whatever was generated, as bytes (mostly not a valid export: that is the point)."""
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fuzz.db'}"


def test_no_server_errors_on_any_route(runtime: Runtime, settings: Settings) -> None:
    app = create_app(settings, runtime)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
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
            response = case.call()
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                )

        run()
    assert failures == []
