"""The simulators' own MQTT publisher: they talk to Tether as real devices do, over the broker,
and import no project package (so they can judge Tether from the outside)."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiomqtt


class Publisher:
    def __init__(self, mqtt_url: str, client_id: str = "", inflight: int = 1000) -> None:
        u = urlsplit(mqtt_url)
        if u.scheme not in ("mqtt", "tcp"):
            raise ValueError(f"an MQTT URL is mqtt://host:port, not {mqtt_url!r}")
        self._client = aiomqtt.Client(u.hostname or "127.0.0.1", u.port or 1883,
                                      identifier=client_id or None, username=u.username,
                                      password=u.password,
                                      protocol=aiomqtt.ProtocolVersion.V311,
                                      max_inflight_messages=inflight)
        # A fleet keeps many QoS 1 publishes in flight on purpose.
        self._client.pending_calls_threshold = 10_000

    async def __aenter__(self) -> Publisher:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(*exc)

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1,
                      retain: bool = False) -> None:
        await self._client.publish(topic, payload, qos=qos, retain=retain)
