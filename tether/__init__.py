"""Tether's shared kernel and entry point.

Kernel (imported by every package except `geofence` and `simulators`): `settings` (the common
settings section), `logs`, `retry`, `supervise`, `db` (pool and error types).
Entry point (imports everything, imported by nothing): `cli` (the `tether` command), `config`
(all settings sections composed), `serve` (process wiring), `bench` (benchmarks).
"""
