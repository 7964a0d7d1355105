"""Ingest: MQTT messages in, fixes and events stored, latest device state published."""
