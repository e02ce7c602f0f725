"""Every server setting in one model: flags override MCP_LOCKS_* environment variables, which override defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

__all__ = ["Settings", "default_data_dir", "load_settings"]


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/mcp-locks``, else ``~/.local/share/mcp-locks``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mcp-locks"


class Settings(BaseSettings):
    """Server settings (environment variables: ``MCP_LOCKS_`` + the upper-case name)."""

    model_config = SettingsConfigDict(env_prefix="MCP_LOCKS_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8765, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    data_dir: Path = Field(default_factory=default_data_dir, description="Where the SQLite database is kept.")
    store: str = Field(
        "sqlite",
        description="'sqlite' (durable, one server), 'memory' (forgets on exit), or a postgresql://... URL"
        " (several servers share it and act as one; see pg_files).",
    )
    pg_schema: str = Field(
        "public", pattern=r"^[a-z_][a-z0-9_]{0,40}$", description="PostgreSQL store: the schema its tables live in."
    )
    pg_files: Literal["database", "folder"] = Field(
        "database",
        description="PostgreSQL store: file content in the database (each server's data dir holds its own copy)"
        " or only in the data dir, which every server must then share.",
    )
    sync: Literal["normal", "full"] = Field(
        "normal", description="SQLite durability: 'normal' survives a process crash, 'full' also a power loss."
    )
    max_timeout: float = Field(86_400, ge=1, description="Longest lease a client may ask for, in seconds.")
    max_wait: float = Field(3_600, ge=0, description="Longest a client may wait in line, in seconds.")
    idle_timeout: float = Field(60, gt=0, description="Seconds before an idle workspace actor is evicted.")
    max_locks: int = Field(1_000_000, ge=1, description="Most locks held at once in one workspace.")
    max_waiters: int = Field(10_000, ge=1, description="Most requests waiting at once in one workspace.")
    retention: float = Field(
        86_400, ge=60, description="How long ended locks and request_ids are remembered (seconds)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Server log level.")
    insecure_no_auth: bool = Field(
        False, description="Serve without API keys (local experiments only; refused unless bound to loopback)."
    )
    admin_key: SecretStr | None = Field(
        None, description="An mcp-locks key to register as the admin key instead of writing <data-dir>/admin.key."
    )
    max_body: int = Field(1 << 20, ge=1024, description="Largest request body accepted, in bytes (default 1 MiB).")
    rate_limit: str | None = Field(
        None, description="Per-key request limit, e.g. '100/second' or '5000/minute' (default: none)."
    )
    max_file_size: int = Field(1 << 30, ge=1, description="Largest file the file store accepts, in bytes (1 GiB).")
    chunk_size: int = Field(16 << 20, ge=1024, description="Largest chunk of a resumable upload, in bytes (16 MiB).")
    upload_ttl: float = Field(86_400, ge=60, description="Seconds before an unfinished upload is dropped.")
    quota_bytes: int | None = Field(
        None,
        ge=0,
        description="Most bytes of file content one workspace may keep, the chunks of its unfinished uploads"
        " included (default: no quota).",
    )
    quota_files: int | None = Field(None, ge=0, description="Most files one workspace may keep (default: no quota).")
    max_sessions_per_key: int = Field(
        32, ge=1, description="Most MCP sessions (streamable HTTP or legacy SSE) one key may hold open at once."
    )
    max_listens_per_key: int = Field(
        16, ge=1, description="Most MCP subscription listen streams one key may hold open at once."
    )
    audit: bool = Field(True, description="Keep an audit log of every lock event and file write.")
    audit_days: float = Field(30, gt=0, description="Days audit entries are kept.")
    webhooks_allow_private: bool = Field(
        False, description="Allow webhook receivers on loopback and private addresses (trusted networks only)."
    )
    webhook_concurrency: int = Field(64, ge=1, le=1024, description="Deliveries in flight at once per webhook.")
    log_format: Literal["text", "json"] = Field("text", description="Server log lines as text or as JSON objects.")
    metrics_public: bool = Field(
        False, description="Serve /metrics without a key (by default it needs an admin key when keys are on)."
    )
    allowed_origins: list[str] = Field(
        default_factory=list, description="Extra browser origins allowed when bound to loopback."
    )
    compat_storage_tool: bool = Field(
        False,
        description="Also offer the MCP tool `storage`, Fast.io's grouped call shape ({action, params}) on the"
        " real tools (off: tool lists stay short).",
    )

    @field_validator("admin_key")
    @classmethod
    def _check_admin_key(cls, v: SecretStr | None) -> SecretStr | None:
        from mcp_locks.core.keys import parse_key_id

        if v is not None and parse_key_id(v.get_secret_value()) is None:
            raise ValueError("MCP_LOCKS_ADMIN_KEY is not an mcp-locks key (mlk_<12 hex>_<43 chars>); make one with"
                             " `mcp-locks keys create --role admin` or leave it unset")  # fmt: skip
        return v

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, v: str | None) -> str | None:
        if v:
            import limits

            limits.parse(v)  # ValueError names the bad text
        return v or None

    @field_validator("store")
    @classmethod
    def _store_kind(cls, v: str) -> str:
        if v in ("sqlite", "memory") or v.startswith(("postgresql://", "postgres://")):
            return v
        raise ValueError("store must be 'sqlite', 'memory' or a postgresql://user@host:port/database URL")

    @property
    def postgres(self) -> bool:
        """Whether the store is a PostgreSQL database shared with other servers."""
        return self.store.startswith(("postgresql://", "postgres://"))

    @property
    def files_dir(self) -> Path:
        """Where workspaces not bound to a folder keep their files."""
        return self.data_dir / "files"

    @property
    def db_path(self) -> Path:
        """The SQLite database file."""
        return self.data_dir / "locks.db"


def load_settings(config: str | os.PathLike[str] | None = None, **flags: object) -> Settings:
    """Settings from ``flags``, then ``MCP_LOCKS_*``, then a TOML config file, then the defaults.

    The file is ``config``, else ``$MCP_LOCKS_CONFIG``, else none; its keys are the setting names
    (``port = 8765``, ``max_file_size = 1073741824``...). A missing file is an error, not silence.
    """
    raw = config if config is not None else os.environ.get("MCP_LOCKS_CONFIG") or None
    if raw is None:
        return Settings(**flags)  # type: ignore[arg-type]
    path = Path(raw)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")

    class ConfigFile(Settings):
        model_config = SettingsConfigDict(env_prefix="MCP_LOCKS_", extra="forbid", toml_file=path)

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    return ConfigFile(**flags)  # type: ignore[arg-type]
