"""Process settings: where things are, read once from the environment at start.

Nothing on a request path reads `os.environ`; services receive a `Settings`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

from services.kernel.config import (
    REGION_NAME,
    Catalog,
    ConfigError,
    GatewayConfig,
    build_catalog,
    load_config,
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a service needs to start, resolved from config file and environment."""

    config: GatewayConfig
    catalog: Catalog
    master_key: str = dataclasses.field(repr=False)
    data_dir: Path
    redis_url: str | None = None
    database_url: str | None = dataclasses.field(default=None, repr=False)
    auth_url: str | None = None
    classifier_url: str | None = None
    cache_url: str | None = None
    analytics_url: str | None = None
    log_level: str = "INFO"
    region: str | None = None  # this process's region: GATEWAY_REGION, else region.name

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        path = Path(env.get("GATEWAY_CONFIG", "gateway.yaml"))
        config = load_config(path, env)
        key_env = config.auth.master_key_env
        master_key = env.get(key_env, "")
        if not master_key:
            raise ConfigError(
                f"{path}: auth.master_key_env names {key_env}, which is not set in the environment"
            )
        if len(master_key) < 8:
            raise ConfigError(f"{key_env} is too short: use at least 8 characters")
        region = env.get("GATEWAY_REGION") or config.region.name
        if region is not None:
            if not re.fullmatch(REGION_NAME, region):
                raise ConfigError(
                    f"GATEWAY_REGION {region[:80]!r} is not a region name"
                    " (lower-case letters, digits and dashes)"
                )
            if config.region.names and region not in config.region.names:
                raise ConfigError(
                    f"GATEWAY_REGION {region!r} is not in region.names {list(config.region.names)} of {path}"
                )
        return cls(
            config=config,
            catalog=build_catalog(config, env),
            master_key=master_key,
            data_dir=Path(env.get("GATEWAY_DATA_DIR", "data")),
            redis_url=env.get("REDIS_URL") or None,
            database_url=env.get("DATABASE_URL") or None,
            auth_url=env.get("AUTH_URL") or None,
            classifier_url=env.get("CLASSIFIER_URL") or None,
            cache_url=env.get("CACHE_URL") or None,
            analytics_url=env.get("ANALYTICS_URL") or None,
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            region=region,
        )

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
