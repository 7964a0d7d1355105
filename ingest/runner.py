"""Builds and runs an ingest worker from settings: the edges wired to the pipeline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ingest.live import LivePublisher
from ingest.mqtt import Broker, MqttSource
from ingest.pipeline import Ingest, subscriptions
from ingest.rules_runner import Rules
from ingest.settings import IngestSettings
from ingest.state import DeviceState, SubjectStates
from ingest.store import IngestStore
from tether.supervise import Health


@asynccontextmanager
async def ingest_worker(settings: IngestSettings, health: Health | None = None
                        ) -> AsyncIterator[Ingest]:
    """`health`: the process's, so that /healthz names a failing ingest part."""
    store = IngestStore(settings.database_url, severity=settings.severity)
    state = DeviceState(settings.redis_url, settings.redis_prefix)
    rules = Rules(settings, store, SubjectStates(state))
    source = MqttSource(Broker.from_url(settings.mqtt_url), settings.mqtt_client_id,
                        subscriptions(settings))
    await store.open()
    try:
        yield Ingest(settings, source, store, state, rules, health, LivePublisher(state))
    finally:
        await state.close()
        await store.close()
