"""Builds and runs an ingest worker from settings: the edges wired to the pipeline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ingest.mqtt import Broker, MqttSource
from ingest.pipeline import Ingest, subscriptions
from ingest.settings import Settings
from ingest.state import DeviceState
from ingest.store import IngestStore


@asynccontextmanager
async def ingest_worker(settings: Settings) -> AsyncIterator[Ingest]:
    store = IngestStore(settings.database_url)
    state = DeviceState(settings.redis_url, settings.redis_prefix)
    source = MqttSource(Broker.from_url(settings.mqtt_url), settings.mqtt_client_id,
                        subscriptions(settings))
    await store.open()
    try:
        yield Ingest(settings, source, store, state)
    finally:
        await state.close()
        await store.close()
