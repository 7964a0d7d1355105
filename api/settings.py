"""The API's settings section (`TETHER_*`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from geofence.rules import RuleSettings
from tether.settings import CommonSettings


class ApiSettings(CommonSettings, RuleSettings):
    """The API shows rule-derived status (online, silent), hence the rules' section too."""

    token_ttl_s: int = Field(1800, ge=60, description="lifetime of an API bearer token")
    login_max_failures: int = Field(5, description="failed logins per user and client before "
                                    "each further one is slowed down")
    login_window_s: float = Field(300, description="... counted over this window")
    login_concurrency: int = Field(2, ge=1, description="password hashes checked at once; "
                                   "more wait, so bogus logins cannot starve ingest")
    trusted_proxies: list[str] = Field(default_factory=list, description="addresses or CIDRs "
                                       "whose X-Forwarded-For is believed (JSON list)")
    tile_url: str | None = Field(None, description="an operator's map tiles ({z}/{x}/{y}); "
                                 "unset: the built-in offline basemap")
    tile_datum: Literal["wgs84", "gcj02"] = Field("wgs84", description="the tiles' datum: "
                                                  "wgs84 (OpenStreetMap, Tianditu) or gcj02 "
                                                  "(AutoNavi, Tencent)")
    tile_attribution: str = ""
    session_recheck_s: float = Field(60.0, gt=0, description="websockets re-check their user "
                                     "this often (and at token expiry)")
