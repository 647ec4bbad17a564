"""Dashboard settings: pydantic-settings classes, environment variables with the ``MTC_DASHBOARD_`` prefix.

:class:`DashboardSettings` is what one browser session needs (where the facade is, how often to poll);
:class:`ServerSettings` is how ``python -m dashboard`` serves the page and who may open it. Both read the
same prefix, so one ``.env`` file configures the whole dashboard. A variable set to an empty string counts
as unset (compose's ``${VAR:-}``), so an empty password never means "no password" silently: it means no
login, which beyond loopback is refused.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "MTC_DASHBOARD_"
MIN_PASSWORD_LENGTH = 12
MIN_COOKIE_SECRET_LENGTH = 32


class DashboardSettings(BaseSettings):
    """Where the facade is and how the page talks to it (read once per browser session)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", env_ignore_empty=True)

    api_url: str = Field("http://127.0.0.1:8080", description="Base URL of the facade's REST API")
    api_key: SecretStr | None = Field(
        None, description="Bearer key sent to the facade (needed only when the facade sets MTC_API_API_KEYS)"
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Timeout of one request to the facade or to storage")
    health_interval_s: float = Field(5.0, gt=0, description="How often the page checks that the facade is up")
    stats_interval_s: float = Field(5.0, gt=0, description="How often the Monitoring tab refreshes")
    default_top_k: int = Field(
        3, ge=1, description="How many labels an image tab lists at first (at most the task's label count)"
    )
    prometheus_url: str | None = Field(
        None,
        description="Prometheus (http://host:9090) holding the platform's recording rules: the Monitoring tab's live "
        "charts come from it (the last 15 minutes, whenever the page was opened); unset or unreachable: from the "
        "page's own samples of the facade",
    )


class ServerSettings(BaseSettings):
    """How ``python -m dashboard`` serves the page, and who may open it.

    Login is Panel's built-in basic auth: a login form, then a signed cookie. It is on whenever a password
    is set; beyond loopback the launcher refuses to start without it unless ``allow_anonymous`` is set.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", env_ignore_empty=True)

    address: str = Field("127.0.0.1", description="Address the page is served on; anything but loopback needs a login")
    port: int = Field(5006, ge=1, le=65535, description="Port the page is served on (at /app)")
    origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "host:port values a browser reaches the page at, comma-separated (Bokeh refuses websocket "
            "connections from other origins). Default: the address and localhost at the port."
        ),
    )
    username: str | None = Field(None, min_length=1, description="The login's user name (set with the password)")
    password: SecretStr | None = Field(
        None, description=f"The login's password, at least {MIN_PASSWORD_LENGTH} characters; turns the login on"
    )
    cookie_secret: SecretStr | None = Field(
        None,
        description=(
            f"Key that signs the login cookie, at least {MIN_COOKIE_SECRET_LENGTH} characters. Default: a random "
            "key per start (logins do not survive a restart)."
        ),
    )
    allow_anonymous: bool = Field(
        False, description="Serve the page beyond loopback without a login (anyone who reaches it can use it)"
    )

    @field_validator("origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("password", "cookie_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        minimum = MIN_PASSWORD_LENGTH if info.field_name == "password" else MIN_COOKIE_SECRET_LENGTH
        if value is not None and len(value.get_secret_value()) < minimum:
            raise ValueError(f"must be at least {minimum} characters")
        return value

    @model_validator(mode="after")
    def _user_and_password_together(self) -> ServerSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError(f"set both {ENV_PREFIX}USERNAME and {ENV_PREFIX}PASSWORD, or neither")
        return self

    @property
    def login(self) -> bool:
        """Whether the page asks for the user name and password."""
        return self.password is not None
