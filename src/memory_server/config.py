"""Settings (environment and ``.env``) and the mem0-style ``config.json``.

Settings are read once at the edge (CLI, app factory) and passed down; nothing here
runs at import time.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from memory_server.errors import ConfigurationError
from memory_server.identity import validate_client_name, validate_user_id

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SLACK_API_BASE_URL = "https://slack.com/api/"
DEFAULT_RATE_LIMIT_PER_MINUTE = 600
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    """Every setting of the server; each field names its environment variable."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(Path("~/.memory-server"), validation_alias=_env("MEMORY_DATA_DIR"))
    database_url: str | None = Field(None, validation_alias=_env("DATABASE_URL"))
    qdrant_url: str | None = Field(None, validation_alias=_env("QDRANT_URL"))
    qdrant_api_key: SecretStr | None = Field(None, validation_alias=_env("QDRANT_API_KEY"))
    config_file: Path | None = Field(None, validation_alias=_env("MEMORY_CONFIG_FILE"))
    vector_engine: Literal["edge", "qdrant-local"] = Field("edge", validation_alias=_env("VECTOR_ENGINE"))
    vector_index_threshold: int = Field(20_000, validation_alias=_env("VECTOR_INDEX_THRESHOLD"), ge=1)
    vector_max_open_collections: int = Field(256, validation_alias=_env("VECTOR_MAX_OPEN_COLLECTIONS"), ge=1)
    search_mode: Literal["hybrid", "dense"] = Field("hybrid", validation_alias=_env("SEARCH_MODE"))
    search_dense_weight: float = Field(0.4, validation_alias=_env("SEARCH_DENSE_WEIGHT"), ge=0, le=1)
    search_context_weight: float = Field(0.2, validation_alias=_env("SEARCH_CONTEXT_WEIGHT"), ge=0, le=1)

    user_id: str = Field("default-user", validation_alias=_env("USER_ID"))
    default_app_id: str = Field("default", validation_alias=_env("DEFAULT_APP_ID"))

    llm_provider: str | None = Field(None, validation_alias=_env("LLM_PROVIDER"))
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    llm_base_url: str | None = Field(None, validation_alias=_env("LLM_BASE_URL"))
    llm_model: str | None = Field(None, validation_alias=_env("LLM_MODEL"))
    embedder_provider: str | None = Field(None, validation_alias=_env("EMBEDDER_PROVIDER"))
    embedder_model: str | None = Field(None, validation_alias=_env("EMBEDDER_MODEL"))
    embedder_base_url: str | None = Field(None, validation_alias=_env("EMBEDDER_BASE_URL"))
    embedding_dims: int | None = Field(None, validation_alias=_env("EMBEDDING_DIMS"), gt=0)
    embedding_model_dir: Path | None = Field(None, validation_alias=_env("EMBEDDING_MODEL_DIR"))
    embedding_threads: int = Field(2, validation_alias=_env("EMBEDDING_THREADS"), ge=1, le=64)
    embedding_precision: Literal["int8", "float32"] = Field(
        "int8", validation_alias=_env("EMBEDDING_PRECISION")
    )

    max_memory_bytes: int = Field(32_768, validation_alias=_env("MAX_MEMORY_BYTES"), ge=64)
    duplicate_threshold: float = Field(0.95, validation_alias=_env("DUPLICATE_THRESHOLD"), gt=0, le=1)
    search_min_score: float = Field(0.0, validation_alias=_env("SEARCH_MIN_SCORE"), ge=-1, le=1)
    memory_pool_size: int = Field(256, validation_alias=_env("MEMORY_POOL_SIZE"), ge=1)
    max_request_bytes: int = Field(1_048_576, validation_alias=_env("MAX_REQUEST_BYTES"), ge=1024)
    server_token: SecretStr | None = Field(None, validation_alias=_env("MEMORY_SERVER_TOKEN"))
    max_import_bytes: int = Field(536_870_912, validation_alias=_env("MAX_IMPORT_BYTES"), ge=1024)

    short_term_ttl_days: float = Field(7, validation_alias=_env("SHORT_TERM_TTL_DAYS"), gt=0)
    maintenance_interval_minutes: float = Field(
        60, validation_alias=_env("MAINTENANCE_INTERVAL_MINUTES"), ge=0
    )
    access_log_flush_seconds: float = Field(
        0.25, validation_alias=_env("ACCESS_LOG_FLUSH_SECONDS"), ge=0, le=60
    )
    archive_after_days: float = Field(30, validation_alias=_env("ARCHIVE_AFTER_DAYS"), gt=0)
    archive_max_importance: float = Field(0.3, validation_alias=_env("ARCHIVE_MAX_IMPORTANCE"), ge=0, le=1)
    archive_max_access_count: int = Field(2, validation_alias=_env("ARCHIVE_MAX_ACCESS_COUNT"), ge=0)
    promote_access_count: int = Field(5, validation_alias=_env("PROMOTE_ACCESS_COUNT"), ge=1)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=_env("LOG_LEVEL")
    )
    host: str = Field("127.0.0.1", validation_alias=_env("HOST"))
    port: int = Field(8765, validation_alias=_env("PORT"), ge=1, le=65535)

    slack_bot_token: SecretStr | None = Field(None, validation_alias=_env("SLACK_BOT_TOKEN"))
    slack_channels: str | None = Field(None, validation_alias=_env("SLACK_CHANNELS"))
    # A float so that tests (and impatient people) can use fractions of a minute.
    slack_sync_interval_minutes: float = Field(
        30, validation_alias=_env("SLACK_SYNC_INTERVAL_MINUTES"), gt=0, le=7 * 24 * 60
    )
    slack_backfill_days: float = Field(30, validation_alias=_env("SLACK_BACKFILL_DAYS"), ge=0, le=3650)
    slack_memory_user_id: str | None = Field(None, validation_alias=_env("SLACK_MEMORY_USER_ID"))
    slack_thread_window_days: float = Field(
        7, validation_alias=_env("SLACK_THREAD_WINDOW_DAYS"), ge=0, le=365
    )
    slack_include_bot_messages: bool = Field(False, validation_alias=_env("SLACK_INCLUDE_BOT_MESSAGES"))
    slack_include_join_leave: bool = Field(False, validation_alias=_env("SLACK_INCLUDE_JOIN_LEAVE"))
    slack_api_base_url: str = Field(SLACK_API_BASE_URL, validation_alias=_env("SLACK_API_BASE_URL"))

    # Authentication (docs/security.md). None means "decide from HOST" (see auth_mode_resolved).
    auth_mode: Literal["none", "token", "jwt"] | None = Field(None, validation_alias=_env("AUTH_MODE"))
    allow_unauthenticated: bool = Field(False, validation_alias=_env("ALLOW_UNAUTHENTICATED"))
    jwt_secret: SecretStr | None = Field(None, validation_alias=_env("JWT_SECRET"))
    jwt_jwks_url: str | None = Field(None, validation_alias=_env("JWT_JWKS_URL"))
    jwt_algorithms: str | None = Field(None, validation_alias=_env("JWT_ALGORITHMS"))
    jwt_audience: str | None = Field(None, validation_alias=_env("JWT_AUDIENCE"))
    jwt_issuer: str | None = Field(None, validation_alias=_env("JWT_ISSUER"))
    jwt_user_claim: str = Field("sub", validation_alias=_env("JWT_USER_CLAIM"))
    jwt_admin_claim: str = Field("roles", validation_alias=_env("JWT_ADMIN_CLAIM"))
    jwt_admin_role: str = Field("memory-admin", validation_alias=_env("JWT_ADMIN_ROLE"))
    cors_origins: str | None = Field(None, validation_alias=_env("CORS_ORIGINS"))
    # None means "decide from HOST": off on loopback, DEFAULT_RATE_LIMIT_PER_MINUTE otherwise.
    rate_limit_per_minute: int | None = Field(None, validation_alias=_env("RATE_LIMIT_PER_MINUTE"), ge=0)

    @field_validator("auth_mode", "vector_engine", "search_mode", mode="before")
    @classmethod
    def _lower_choice(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "database_url",
        "qdrant_url",
        "llm_provider",
        "llm_base_url",
        "llm_model",
        "embedder_provider",
        "embedder_model",
        "embedder_base_url",
        "qdrant_api_key",
        "openai_api_key",
        "embedding_dims",
        "embedding_model_dir",
        "config_file",
        "slack_bot_token",
        "slack_channels",
        "slack_memory_user_id",
        "auth_mode",
        "jwt_secret",
        "jwt_jwks_url",
        "jwt_algorithms",
        "jwt_audience",
        "jwt_issuer",
        "cors_origins",
        "rate_limit_per_minute",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("user_id")
    @classmethod
    def _valid_user(cls, value: str) -> str:
        try:
            return validate_user_id(value)
        except Exception as exc:
            raise ValueError(str(exc)) from None

    @field_validator("slack_memory_user_id")
    @classmethod
    def _valid_slack_user(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_user_id(value)
        except Exception as exc:
            raise ValueError(str(exc)) from None

    @field_validator("slack_api_base_url")
    @classmethod
    def _slack_url(cls, value: str) -> str:
        value = value.strip() or SLACK_API_BASE_URL
        if not value.startswith(("http://", "https://")):
            raise ValueError("SLACK_API_BASE_URL must start with http:// or https://")
        return value if value.endswith("/") else value + "/"

    @field_validator("default_app_id")
    @classmethod
    def _valid_app(cls, value: str) -> str:
        try:
            return validate_client_name(value)
        except Exception as exc:
            raise ValueError(str(exc)) from None

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split(":", 1)[0].lower()
        if not (scheme.startswith("sqlite") or scheme.startswith("postgresql") or scheme == "postgres"):
            raise ValueError("DATABASE_URL must start with sqlite:// or postgresql://")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.qdrant_api_key is not None and self.qdrant_url is None:
            raise ValueError(
                "QDRANT_API_KEY is set but QDRANT_URL is not: set QDRANT_URL to your Qdrant server"
            )
        self.data_dir = self.data_dir.expanduser()
        return self

    @property
    def is_loopback(self) -> bool:
        """Whether ``HOST`` is a loopback address (only this machine can connect)."""
        host = self.host.strip("[]").lower()
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def auth_mode_resolved(self) -> Literal["none", "token", "jwt"]:
        """``AUTH_MODE``, or its default: ``none`` on a loopback bind, ``token`` otherwise."""
        if self.auth_mode is not None:
            return self.auth_mode
        return "none" if self.is_loopback else "token"

    @property
    def rate_limit_resolved(self) -> int:
        """Requests per minute per credential; 0 is off (the default on a loopback bind)."""
        if self.rate_limit_per_minute is not None:
            return self.rate_limit_per_minute
        return 0 if self.is_loopback else DEFAULT_RATE_LIMIT_PER_MINUTE

    @property
    def cors_origin_list(self) -> list[str]:
        """``CORS_ORIGINS`` split on commas; empty means no cross-origin browser access."""
        if not self.cors_origins:
            return []
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def jwt_algorithm_list(self) -> list[str]:
        """``JWT_ALGORITHMS``, or HS256 with a secret and RS256 with a JWKS URL."""
        if self.jwt_algorithms:
            return [a.strip() for a in self.jwt_algorithms.split(",") if a.strip()]
        return ["RS256"] if self.jwt_jwks_url else ["HS256"]

    def check_auth(self) -> None:
        """Refuse an unsafe or incomplete authentication set-up, saying what to set."""
        mode = self.auth_mode_resolved
        if mode == "none" and not self.is_loopback and not self.allow_unauthenticated:
            raise ConfigurationError(
                f"refusing to serve without authentication on {self.host}, which other machines can "
                "reach: set AUTH_MODE=token (and create a token with `memory-server token create`) "
                "or AUTH_MODE=jwt, or set ALLOW_UNAUTHENTICATED=true if a proxy in front "
                "authenticates every request"
            )
        if mode == "jwt":
            if (self.jwt_secret is None) == (self.jwt_jwks_url is None):
                raise ConfigurationError(
                    "AUTH_MODE=jwt needs exactly one of JWT_SECRET (HS256) and JWT_JWKS_URL (RS256)"
                )
            if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < 32:
                raise ConfigurationError("JWT_SECRET is too short: use at least 32 random characters")

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL: ``DATABASE_URL``, or a SQLite file in the data dir."""
        if self.database_url is None:
            return f"sqlite:///{self.data_dir / 'memory.db'}"
        url = self.database_url
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def slack_enabled(self) -> bool:
        """Whether the Slack sync runs (it needs ``SLACK_BOT_TOKEN``)."""
        return self.slack_bot_token is not None

    @property
    def slack_channel_list(self) -> list[str]:
        """``SLACK_CHANNELS`` split on commas, ``#`` dropped; empty means every channel the bot is in."""
        if not self.slack_channels:
            return []
        return [c.strip().lstrip("#") for c in self.slack_channels.split(",") if c.strip().lstrip("#")]

    @property
    def slack_target_user(self) -> str:
        """The user whose memory receives Slack messages."""
        return self.slack_memory_user_id or self.user_id

    @property
    def model_dir(self) -> Path:
        """Where the local embedding model files live."""
        return (self.embedding_model_dir or self.data_dir / "models" / "all-MiniLM-L6-v2").expanduser()


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment and ``.env``; raise ``ConfigurationError`` if invalid."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None


class ProviderConfig(BaseModel):
    """One section of ``config.json``: a provider name and its options."""

    provider: str
    config: dict[str, Any] = Field(default_factory=dict)


class ProvidersConfig(BaseModel):
    """The expanded ``config.json``: which LLM, embedder and vector store to use."""

    llm: ProviderConfig
    embedder: ProviderConfig
    vector_store: ProviderConfig

    @property
    def llm_enabled(self) -> bool:
        """Whether an LLM is configured, so that ``infer`` can run."""
        provider = self.llm.provider.lower()
        if provider in ("", "none"):
            return False
        if provider == "openai":
            return bool(self.llm.config.get("api_key") or self.llm.config.get("openai_base_url"))
        return True


def expand_variables(value: Any, environ: Mapping[str, str], where: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a JSON value."""
    if isinstance(value, dict):
        return {k: expand_variables(v, environ, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_variables(v, environ, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ and environ[name] != "":
            return environ[name]
        if default is not None:
            return default
        raise ConfigurationError(
            f"config.json: {where} uses ${{{name}}} but {name} is not set; "
            f"set {name} or write ${{{name}:-default}}"
        )

    return _VAR.sub(replace, value)


def _drop_blank(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v not in ("", None)}


def _settings_environ(settings: Settings) -> dict[str, str]:
    """The documented variables as the validated settings hold them (they win over raw env)."""
    values: dict[str, Any] = {
        "QDRANT_URL": settings.qdrant_url,
        "QDRANT_API_KEY": settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
        "OPENAI_API_KEY": settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
        "LLM_PROVIDER": settings.llm_provider,
        "LLM_BASE_URL": settings.llm_base_url,
        "LLM_MODEL": settings.llm_model,
        "EMBEDDER_PROVIDER": settings.embedder_provider,
        "EMBEDDER_MODEL": settings.embedder_model,
        "EMBEDDER_BASE_URL": settings.embedder_base_url,
        "EMBEDDING_DIMS": settings.embedding_dims,
    }
    return {k: str(v) for k, v in values.items() if v is not None}


def _config_path(settings: Settings) -> Path | None:
    if settings.config_file is not None:
        if not settings.config_file.is_file():
            raise ConfigurationError(f"MEMORY_CONFIG_FILE={settings.config_file} does not exist")
        return settings.config_file
    for candidate in (Path.cwd() / "config.json", REPO_ROOT / "config.json"):
        if candidate.is_file():
            return candidate
    return None


def load_providers(settings: Settings, environ: Mapping[str, str] | None = None) -> ProvidersConfig:
    """Read ``config.json`` (see ``_config_path``) and expand variables from the environment.

    Values from ``.env`` count as environment, with the real environment winning.
    Without a config file the defaults are the ones of the repository's ``config.json``:
    local embeddings, embedded Qdrant, no LLM.
    """
    if environ is None:
        environ = {**{k: v for k, v in dotenv_values(".env").items() if v is not None}, **os.environ}
    environ = {**environ, **_settings_environ(settings)}
    path = _config_path(settings)
    raw: dict[str, Any]
    if path is None:
        raw = {
            "llm": {"provider": "none", "config": {}},
            "embedder": {"provider": "fastembed", "config": {"model": DEFAULT_EMBEDDING_MODEL}},
            "vector_store": {"provider": "qdrant", "config": {}},
        }
    else:
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path} is not valid JSON: {exc}") from None
    expanded = expand_variables(raw, environ)
    try:
        providers = ProvidersConfig.model_validate(expanded)
    except Exception as exc:
        raise ConfigurationError(
            f"{path or 'config'} must have llm, embedder and vector_store sections "
            f"with a provider each: {exc}"
        ) from None
    for section in (providers.llm, providers.embedder, providers.vector_store):
        section.config = _drop_blank(section.config)
        section.provider = section.provider.strip().lower()
    dims = providers.embedder.config.get("embedding_dims")
    if dims is not None:
        try:
            providers.embedder.config["embedding_dims"] = int(dims)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"embedder.config.embedding_dims must be a number, got {dims!r}"
            ) from None
    if providers.vector_store.provider != "qdrant":
        raise ConfigurationError(
            f"vector_store.provider {providers.vector_store.provider!r} is not supported: use qdrant"
        )
    if providers.embedder.provider not in ("fastembed", "openai"):
        raise ConfigurationError(
            f"embedder.provider {providers.embedder.provider!r} is not supported: use fastembed or openai"
        )
    return providers
