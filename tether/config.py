"""All settings sections composed: what the `tether` command builds once at start-up.

Every package receives this object typed as its own section (each is a base class here), so
a package reads only its own fields and those of `CommonSettings`.
"""

from __future__ import annotations

from api.settings import ApiSettings
from ingest.settings import IngestSettings


class Settings(IngestSettings, ApiSettings):
    """Ingest (with the rules' and alerts' sections) and the API, for `tether serve`."""
