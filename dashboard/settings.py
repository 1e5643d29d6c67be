"""The dashboard's settings: the shared connections plus a ``[dashboard]`` section."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from forewarn.settings import ServiceSettings

__all__ = ["DashboardOptions", "DashboardSettings"]


class DashboardOptions(BaseModel):
    """Where the dashboard listens, where it keeps its store and how much it keeps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    port: int = Field(8501, ge=1, le=65535, description="HTTP port of the dashboard")
    address: str = Field("127.0.0.1", description="address the dashboard listens on; another than a loopback "
                         "address needs a users file (or --allow-unauthenticated)")
    users_file: Path | None = Field(None, description="TOML file of dashboard users (role, display name, Argon2id "
                                    "hash), kept by `forewarn dashboard users`; when set, every page needs a "
                                    "signed-in user")
    allow_unauthenticated: bool = Field(False, description="allow a non-loopback address without a users file: "
                                        "anyone who reaches it acts as the local admin")
    store: str = Field(":memory:", description="DuckDB file of the embedded store; ':memory:' keeps it in RAM")
    group_id: str = Field("forewarn-dashboard", min_length=1,
                          description="Kafka group id the dashboard commits its positions under (for lag)")
    consume: bool = Field(True, description="run the background Kafka consumer (off: show the store "
                            "only)")
    refresh_s: float = Field(2.0, ge=0.5, le=300, description="seconds between page refreshes")
    retention_hours: float = Field(168.0, gt=0, description="span kept in the store, in hours of arrival time "
                                 "(when the pipeline received a record)")
    max_predictions: int = Field(2_000_000, ge=1000, description="most predictions kept (oldest dropped first)")
    max_telemetry_rows: int = Field(2_000_000, ge=1000, description="most sampled sensor values kept")
    max_alert_events: int = Field(500_000, ge=1000, description="most alert events kept")
    telemetry_sample_every: int = Field(5, ge=1, description="keep every n-th reading of a machine (by seq) for the "
                                        "sensor charts and drift")
    drift_window: int = Field(20_000, ge=100, description="recent sensor values per asset type used for drift")
    lag_every_s: float = Field(10.0, gt=0, description="how often consumer-group lag is sampled, in seconds")
    prune_every_s: float = Field(30.0, gt=0, description="how often retention is enforced, in seconds")
    poll_batch: int = Field(5000, ge=1, description="records read per poll")

    @property
    def store_path(self) -> Path | None:
        return None if self.store == ":memory:" else Path(self.store)


class DashboardSettings(ServiceSettings):
    """Settings of ``forewarn dashboard``."""

    dashboard: DashboardOptions = DashboardOptions()
