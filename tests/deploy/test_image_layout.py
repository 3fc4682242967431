"""What a `docker build` cannot be run here to show, checked without Docker.

The image is assembled by hand from docker/Dockerfile: its COPY instructions, filtered by
.dockerignore the way Docker filters the build context, lay out /app in a temp dir; then the
Dockerfile's own model-baking RUN line, `memory-server serve` and its HEALTHCHECK command run
against that layout with this virtualenv's packages (standing in for the image's
`pip install -r requirements.txt`). Not covered: the pip installs and the base image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in instructions():
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                env[key] = value
    return env


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def in_build_context(relative: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; a match on a directory
    covers everything below it; `!` re-includes."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.strip().startswith("#")]
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            included = negated
    return included


def assemble_image(app: Path) -> None:
    """Carry out the COPY instructions into ``app`` (the image's WORKDIR /app)."""
    workdir = None
    for word, args in instructions():
        if word == "WORKDIR":
            workdir = args
        if word != "COPY":
            continue
        assert workdir == "/app", "COPY before WORKDIR /app"
        assert "--from" not in args, "multi-stage COPY is not modelled by this test"
        *sources, dest = args.split()
        target = app / dest.removeprefix("/app/").removeprefix("./").rstrip("/") if dest != "./" else app
        for source in sources:
            path = ROOT / source
            assert path.exists() and in_build_context(source), f"COPY {source}: not in the build context"
            if path.is_dir():
                for file in path.rglob("*"):
                    relative = file.relative_to(ROOT).as_posix()
                    if file.is_file() and in_build_context(relative):
                        destination = target / file.relative_to(path)
                        destination.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(file, destination)
            else:
                destination = target / path.name if (dest.endswith("/") or len(sources) > 1) else target
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination)


def test_build_context_keeps_secrets_and_local_state_out() -> None:
    for path in (".env", ".venv/bin/python", ".git/HEAD", "data/x.json", "tests/conftest.py"):
        assert not in_build_context(path), path
    for path in ("src/memory_server/config.py", "alembic/env.py", "alembic.ini", "requirements.txt"):
        assert in_build_context(path), path
    assert not in_build_context("src/memory_server/__pycache__/config.cpython-311.pyc")


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    """So that a code change reuses the cached dependency layer."""
    steps = [f"{w} {a}" for w, a in instructions()]
    install = next(i for i, s in enumerate(steps) if "pip install --no-cache-dir -r requirements.txt" in s)
    copy_src = next(i for i, s in enumerate(steps) if s.startswith("COPY src"))
    copy_requirements = next(i for i, s in enumerate(steps) if s.startswith("COPY requirements.txt"))
    assert copy_requirements < install < copy_src


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_image_layout_bakes_the_model_serves_and_passes_its_healthcheck(tmp_path: Path) -> None:
    app = tmp_path / "app"
    assemble_image(app)
    env_in_image = image_env()
    assert env_in_image["HOST"] == "0.0.0.0"
    assert env_in_image["MEMORY_DATA_DIR"] == "/data"

    # Image paths, moved under tmp_path.
    def local(path: str) -> str:
        return str(tmp_path / path.lstrip("/"))

    venv_bin = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        # Stands in for `pip install --no-deps -e .` (an editable install puts /app/src on sys.path).
        "PYTHONPATH": str(app / "src"),
        "EMBEDDING_MODEL_DIR": local(env_in_image["EMBEDDING_MODEL_DIR"]),
        "MEMORY_DATA_DIR": local(env_in_image["MEMORY_DATA_DIR"]),
        "FASTMCP_SHOW_SERVER_BANNER": "false",
    }
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()

    # The app finds alembic.ini through REPO_ROOT: it must be /app, not this checkout.
    root = subprocess.run(
        [sys.executable, "-c", "from memory_server.config import REPO_ROOT; print(REPO_ROOT)"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert root == str(app)

    # The Dockerfile's model-baking RUN line, as written.
    bake = next(a for w, a in instructions() if w == "RUN" and "provision_minilm" in a)
    bake = bake.replace("/opt/memory-server", local("/opt/memory-server"))
    subprocess.run(["sh", "-c", bake], env=env, cwd=elsewhere, check=True, timeout=120)
    assert (Path(env["EMBEDDING_MODEL_DIR"]) / "model.onnx").is_file()

    # `memory-server serve` (the CMD) migrates and serves; then the HEALTHCHECK command runs.
    Path(env["MEMORY_DATA_DIR"]).mkdir(parents=True)
    port = free_port()
    serve_env = {**env, "HOST": "127.0.0.1", "PORT": str(port)}
    cmd = json.loads(next(a for w, a in instructions() if w == "CMD" and a.startswith("[")))
    assert cmd == ["memory-server", "serve"]
    server = subprocess.Popen(
        [sys.executable, "-m", "memory_server.cli", "serve"],
        env=serve_env,
        cwd=elsewhere,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        healthcheck = next(a for w, a in instructions() if w == "HEALTHCHECK")
        command = json.loads(healthcheck[healthcheck.index("CMD [") + 4 :])
        deadline = time.monotonic() + 60
        while True:
            result = subprocess.run(command, env=serve_env, cwd=elsewhere, capture_output=True, timeout=30)
            if result.returncode == 0:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"HEALTHCHECK never passed; server stderr:\n{server.communicate()[1][-3000:]}")
            time.sleep(0.5)
        assert (Path(env["MEMORY_DATA_DIR"]) / "memory.db").is_file()  # migrated at start-up
    finally:
        server.terminate()
        server.wait(timeout=30)
