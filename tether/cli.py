"""The `tether` command (contract §4). Options override TETHER_* settings."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys

from tether import logs
from tether.config import Settings
from tether.serve import serve

log = logs.get("tether")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in {
        "database_url": getattr(args, "database_url", None),
        "mqtt_url": getattr(args, "mqtt_url", None),
        "redis_url": getattr(args, "redis_url", None),
        "http_host": getattr(args, "host", None),
        "http_port": getattr(args, "port", None),
        "mqtt_client_id": getattr(args, "client_id", None),
    }.items() if v is not None}
    settings = Settings(**overrides)
    logs.configure(settings.log_level, settings.log_json)
    return settings


def _run(coro) -> None:
    try:
        import uvloop  # faster event loop where available
        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)
    except KeyboardInterrupt:
        pass


def cmd_migrate(args: argparse.Namespace) -> int:
    from ingest.store import migrate
    s = _settings(args)
    applied = migrate(s.database_url, s.migrations_dir)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _run(serve(_settings(args), True, True))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    s = _settings(args)
    if args.metrics_port or s.metrics_port:
        from prometheus_client import start_http_server
        start_http_server(args.metrics_port or s.metrics_port, addr=s.http_host)
    _run(serve(s, True, False))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    _run(serve(_settings(args), False, True))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from api.store.demo import add_user, seed_demo
    from ingest.store import migrate
    from simulators.fleet import make_fleet

    s = _settings(args)
    migrate(s.database_url, s.migrations_dir)
    devices = make_fleet("demo-", args.devices, (31.2304, 121.4737), 5000, random.Random(7))
    seed_demo(s.database_url, [d.device_id for d in devices])
    password = os.environ.get("TETHER_DEMO_PASSWORD", "tether-demo")
    asyncio.run(add_user(s.database_url, _user_fields("admin", password, "admin", None),
                         exist_ok=True))
    print(f"Tether demo: {len(devices)} simulated trackers reporting every {args.interval} s\n"
          f"  API       http://{s.http_host}:{s.http_port}/docs\n"
          f"  metrics   http://{s.http_host}:{s.http_port}/metrics\n"
          f"  login     admin / {password} (POST /api/auth/token; TETHER_DEMO_PASSWORD)\n"
          f"  database  psql {s.database_url} -c 'select count(*) from fixes'\n"
          "Ctrl-C stops it.", flush=True)
    _run(serve(s, True, True, (devices, args.interval)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.alerts:
        from tether.bench.alerts import main as alerts_main
        return alerts_main(_settings(args), args.breaches)
    if args.correlate:
        from tether.bench.correlate import main as correlate_main
        return correlate_main(_settings(args), args.fixes if args.fixes != 60_000 else 1_000_000)
    if args.engine:
        from geofence.bench import main as engine_main
        return engine_main(args.subjects, args.zones)
    from tether.bench.ingest import main as bench_main
    s = _settings(args)
    return bench_main(s, args)


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulators.fleet import make_fleet, run_fleet

    s = _settings(args)
    devices = make_fleet(args.prefix, args.devices, (31.2304, 121.4737), 5000,
                         random.Random(args.seed))
    _run(run_fleet(s.mqtt_url, s.mqtt_root, devices, args.interval,
                   args.duration, args.seed))
    return 0


def _user_fields(name: str, password: str, role: str, jurisdiction: int | None) -> dict:
    from pydantic import ValidationError

    from api.auth import hash_password
    from api.models import UserIn
    try:
        body = UserIn(username=name, password=password, role=role, jurisdiction_id=jurisdiction)
    except ValidationError as e:
        raise SystemExit(f"tether user add: {e.errors()[0]['msg']}") from e
    fields = body.model_dump(exclude={"password"})
    fields["password_hash"] = hash_password(password)
    return fields


def cmd_user_add(args: argparse.Namespace) -> int:
    from api.store import UniqueViolation
    from api.store.demo import add_user

    s = _settings(args)
    fields = _user_fields(args.name, args.password, args.role, args.jurisdiction)
    try:
        row = asyncio.run(add_user(s.database_url, fields))
    except UniqueViolation:
        print(f"tether user add: user {args.name!r} exists already", file=sys.stderr)
        return 1
    print(f"created {row['role']} {row['username']} (id {row['id']})")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tether", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--database-url")
        sp.add_argument("--mqtt-url")
        sp.add_argument("--redis-url")
        sp.set_defaults(fn=fn)
        return sp

    add("migrate", cmd_migrate, "apply database migrations")
    for name, fn, help_ in (("serve", cmd_serve, "ingest, API and timers in one process"),
                            ("ingest", cmd_ingest, "an ingest worker"),
                            ("api", cmd_api, "the HTTP API")):
        sp = add(name, fn, help_)
        sp.add_argument("--host")
        sp.add_argument("--port", type=int)
        sp.add_argument("--client-id", help="MQTT client id of this worker (one per worker)")
        sp.add_argument("--metrics-port", type=int, help="(ingest) serve /metrics here")
    sp = add("demo", cmd_demo, "seed a demo fleet and run everything")
    sp.add_argument("--devices", type=int, default=200)
    sp.add_argument("--interval", type=float, default=5.0)
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp = add("simulate", cmd_simulate, "run a simulated fleet against the broker")
    sp.add_argument("--devices", type=int, default=100)
    sp.add_argument("--interval", type=float, default=60.0)
    sp.add_argument("--duration", type=float)
    sp.add_argument("--prefix", default="sim-")
    sp.add_argument("--seed", type=int, default=1)
    sp = add("bench", cmd_bench, "measure ingest throughput against raw baselines")
    sp.add_argument("--fixes", type=int, default=60_000)
    sp.add_argument("--batch", type=int, default=50,
                    help="also measure with this many fixes per MQTT message (a batch array)")
    sp.add_argument("--devices", type=int, default=1000)
    sp.add_argument("--json", action="store_true", help="also print the raw numbers as JSON")
    sp.add_argument("--engine", action="store_true",
                    help="the rules engine alone (no I/O): --subjects against --zones")
    sp.add_argument("--correlate", action="store_true",
                    help="crime-scene correlation over --fixes (default 1,000,000) seeded fixes")
    sp.add_argument("--alerts", action="store_true",
                    help="time from an MQTT breach to the alert on /ws/alerts (--breaches)")
    sp.add_argument("--breaches", type=int, default=50)
    sp.add_argument("--subjects", type=int, default=10_000)
    sp.add_argument("--zones", type=int, default=5_000)
    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    ua = user.add_parser("add", help="create a user")
    ua.add_argument("name")
    ua.add_argument("--database-url")
    ua.add_argument("--password", required=True)
    ua.add_argument("--role", choices=["admin", "commander", "officer"], required=True)
    ua.add_argument("--jurisdiction", type=int)
    ua.set_defaults(fn=cmd_user_add)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
