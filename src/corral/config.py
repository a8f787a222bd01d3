"""Settings: every default in one place, overridable by ``CORRAL_*`` variables and
by command-line flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
KILL_GRACE_SECONDS = 10.0


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "corral"


class Settings(BaseSettings):
    """Server settings (``corral serve``)."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_")

    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    data_dir: Path = default_data_dir()
    db: str | None = None
    """Database URL; default ``sqlite:///<data_dir>/corral.db``."""
    executor: Literal["local", "none"] = "local"
    cpus: float | None = Field(None, ge=0)
    """Schedulable CPUs; default: this machine's."""
    memory_mb: int | None = Field(None, ge=0)
    """Schedulable memory; default: this machine's."""
    gpus: int | None = Field(None, ge=0)
    """Schedulable GPUs; default: counted by ``nvidia-smi``, else 0."""
    kill_grace_seconds: float = Field(KILL_GRACE_SECONDS, ge=0)
    max_body_bytes: int = Field(1 << 20, ge=1)

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.data_dir / 'corral.db'}"
