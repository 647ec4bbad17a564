"""Dashboard settings: one pydantic-settings class, environment variables with the ``MTC_DASHBOARD_`` prefix."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class DashboardSettings(BaseSettings):
    """Where the facade is and how the page talks to it."""

    model_config = SettingsConfigDict(env_prefix="MTC_DASHBOARD_", env_file=".env", extra="ignore")

    api_url: str = Field("http://127.0.0.1:8080", description="Base URL of the facade's REST API")
    api_key: SecretStr | None = Field(
        None, description="Bearer key sent to the facade (needed only when the facade sets MTC_API_API_KEYS)"
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Timeout of one request to the facade or to storage")
    health_interval_s: float = Field(5.0, gt=0, description="How often the page checks that the facade is up")
    stats_interval_s: float = Field(5.0, gt=0, description="How often the Monitoring tab refreshes")
    max_texts: int = Field(64, gt=0, description="Most texts sent in one Classify click (one per line)")
    max_image_mb: float = Field(10.0, gt=0, description="Largest image file the Pose tab uploads")
    default_top_k: int = Field(3, ge=1, le=15, description="How many actions the Pose tab shows by default")
