"""A breach fix published to MQTT becomes one alert on the case officer's phone (/ws/alerts),
and nothing on the phone of an officer in another county. The whole system runs: broker,
ingest worker, rules, database, API server with its websocket hub."""

from __future__ import annotations

from tether.bench.alerts import measure
from tether.config import Settings


async def test_breach_reaches_the_case_officer_and_no_one_else(base_settings: Settings) -> None:
    r = await measure(base_settings, n=5)
    assert r["n"] == 5  # each of the five alerts arrived on officer A's socket, in order
    assert r["other_county_received"] == 0
