"""The `tether` command (contract §4). Options override TETHER_* settings."""

from __future__ import annotations

import argparse
import asyncio
import os
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


def _as_dev(s: Settings) -> str:
    """The broker URL for simulators and benches, which publish as any device: the setup's
    `dev` account (made only with TETHER_DEV_BROKER=1, as scripts/test and scripts/demo set
    it), unless the URL names a user; with no such account, the URL as given (an open broker).
    """
    from api.store.credentials import service_url
    return service_url(s.database_url, s.mqtt_url, "dev")


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
    _run(serve(_settings(args), True, True, workers=args.workers))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    s = _settings(args)
    if args.metrics_port or s.metrics_port:
        from prometheus_client import start_http_server
        start_http_server(args.metrics_port or s.metrics_port, addr=s.http_host)
    _run(serve(s, True, False, workers=args.workers))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    _run(serve(_settings(args), False, True))
    return 0


def _fleet_spec(args: argparse.Namespace, s: Settings, api_url: str, username: str,
                password: str):
    from simulators.fleet import FleetSpec
    from simulators.geo import Area
    from simulators.scenarios import Timing, parse_mix
    try:
        area, mix = Area.parse(args.area), parse_mix(args.scenarios)
    except ValueError as e:
        raise SystemExit(f"tether {args.command}: {e}") from e
    timing = Timing(s.separation_dwell_s, s.offline_wearable_s, s.late_after_s,
                    s.tick_interval_s)
    return FleetSpec(api_url, username, password, s.owntracks_root, args.subjects,
                     args.interval, getattr(args, "duration", None), area, mix, timing,
                     args.seed, getattr(args, "prefix", "") or "",
                     progress=not getattr(args, "quiet", False))


def cmd_demo(args: argparse.Namespace) -> int:
    from api.store.demo import add_user
    from ingest.store import migrate

    s = _settings(args)
    migrate(s.database_url, s.migrations_dir)
    password = os.environ.get("TETHER_DEMO_PASSWORD", "tether-demo")
    asyncio.run(add_user(s.database_url, _user_fields("admin", password, "admin", None),
                         exist_ok=True))
    base = f"http://{s.http_host}:{s.http_port}"
    spec = _fleet_spec(args, s, base, "admin", password)
    spec.progress = False
    print(f"Tether demo: {spec.subjects} simulated subjects (phones, wearables, OwnTracks)"
          f" reporting every {args.interval} s, scenarios {args.scenarios}\n"
          f"  map       {base}/\n"
          f"  officer   {base}/officer\n"
          f"  API       {base}/docs\n"
          f"  metrics   {base}/metrics\n"
          f"  login     admin / {password} (TETHER_DEMO_PASSWORD)\n"
          f"  database  psql {s.database_url} -c 'select count(*) from fixes'\n"
          "Ctrl-C stops it.", flush=True)
    _run(serve(s, True, True, (spec, args.interval, _as_dev(s))))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.alerts:  # publishes as devices: the dev login, as the other benches
        from tether.bench.alerts import main as alerts_main
        s = _settings(args)
        return alerts_main(s.model_copy(update={"mqtt_url": _as_dev(s)}), args.breaches)
    if args.correlate:
        from tether.bench.correlate import main as correlate_main
        return correlate_main(_settings(args), args.fixes if args.fixes != 60_000 else 1_000_000)
    if args.engine:
        from geofence.bench import main as engine_main
        return engine_main(args.subjects, args.zones)
    s = _settings(args)
    s = s.model_copy(update={"mqtt_url": _as_dev(s)})
    if args.duration is not None:
        from tether.bench.saturate import main as saturate_main
        return saturate_main(s, args)
    from tether.bench.ingest import main as bench_main
    return bench_main(s, args)


def cmd_simulate(args: argparse.Namespace) -> int:
    import json

    from simulators.fleet import simulate

    s = _settings(args)
    if args.rate:
        args.interval = max(args.subjects / args.rate, 0.2)
    password = args.password or os.environ.get("TETHER_SIM_PASSWORD", "")
    spec = _fleet_spec(args, s, args.api_url or f"http://{s.http_host}:{s.http_port}",
                       args.username, password)
    print(f"tether simulate: {spec.subjects} subjects, one fix each every {args.interval:g} s,"
          f" {args.duration:g} s, scenarios {dict(spec.mix) or 'none'}", file=sys.stderr)
    import httpx

    from simulators.rest import ApiError
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        out = runner(simulate(spec, _as_dev(s), s.mqtt_root))
    except (ApiError, httpx.TransportError) as e:  # a wrong login or URL: say so, plainly
        print(f"tether simulate: {e}", file=sys.stderr)
        return 2
    summary = {**out.summary(), "messages": out.fixes_sent}
    print(f"ground truth: expected {out.expected}, raised {out.raised}, "
          f"missed {len(out.missed)}, spurious {len(out.spurious)}")
    if out.skipped:
        print(f"  not run (longer than the run allows): {', '.join(out.skipped)}")
    for m in out.matched:
        print(f"  ok       {m['type']:<18} {m['subject']}  due {m['due_s']} s,"
              f" opened {m['opened_s']} s{'  late' if m['late'] else ''}")
    for m in out.missed:
        print(f"  MISSED   {m['type']:<18} {m['subject']}  due {m['due_s']} s")
    for m in out.spurious:
        print(f"  SPURIOUS {m['type']:<18} {m['subject']}  alert {m['id']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**summary, "matched": out.matched, "missed_list": out.missed,
                       "spurious_list": out.spurious}, f, indent=2)
    return 0 if not out.missed and not out.spurious else 1


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


def _fleet_args(sp: argparse.ArgumentParser, subjects: int, interval: float,
                scenarios: str) -> None:
    sp.add_argument("--subjects", "--devices", type=int, default=subjects)
    sp.add_argument("--interval", type=float, default=interval,
                    help="seconds between one device's fixes")
    sp.add_argument("--scenarios", default=scenarios,
                    help="scripted violations: 'all', 'all=2', 'exclusion=3,near_miss=5', ''")
    sp.add_argument("--area", default="31.2304,121.4737,8000", help="lat,lon,radius_m")
    sp.add_argument("--seed", type=int, default=1)


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
        sp.add_argument("--workers", type=int, default=1,
                        help="(serve, ingest) this many ingest processes on the shared "
                             "subscription")
    sp = add("demo", cmd_demo, "seed a demo fleet and run everything")
    _fleet_args(sp, subjects=200, interval=5.0, scenarios="all")
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp = add("simulate", cmd_simulate, "run a simulated fleet against a running Tether and "
             "check its scripted violations against GET /api/alerts")
    _fleet_args(sp, subjects=100, interval=5.0, scenarios="all")
    sp.add_argument("--rate", type=float, help="fixes per second in all (sets --interval)")
    sp.add_argument("--duration", type=float, default=120.0, help="seconds")
    sp.add_argument("--prefix", default="", help="device id prefix (default: random)")
    sp.add_argument("--api-url", help="default http://TETHER_HTTP_HOST:TETHER_HTTP_PORT")
    sp.add_argument("--username", default="admin")
    sp.add_argument("--password", help="default $TETHER_SIM_PASSWORD")
    sp.add_argument("--json", help="write the ground-truth check here")
    sp.add_argument("--quiet", action="store_true", help="no progress display")
    sp = add("bench", cmd_bench, "measure ingest throughput against raw baselines")
    sp.add_argument("--fixes", type=int, default=60_000)
    sp.add_argument("--batch", type=int, default=50,
                    help="also measure with this many fixes per MQTT message (a batch array)")
    sp.add_argument("--devices", type=int, default=1000)
    sp.add_argument("--json", nargs="?", const="-", metavar="PATH",
                    help="write the numbers as JSON to PATH (alone: print them)")
    sp.add_argument("--duration", type=float, help="rise to saturation, then hold the highest "
                    "sustained rate this many seconds, with zones, truth and baselines "
                    "(docs/bench.md); without it, the drain bench of --fixes/--batch")
    sp.add_argument("--workers", type=int, default=2, help="(--duration) tether ingest "
                    "processes on the shared subscription")
    sp.add_argument("--generators", type=int, default=2, help="(--duration) load processes")
    sp.add_argument("--start-rate", type=float, default=2000.0)
    sp.add_argument("--max-rate", type=float, default=40_000.0)
    sp.add_argument("--step-s", type=float, default=8.0, help="(--duration) per rise step")
    sp.add_argument("--baseline-s", type=float, default=8.0)
    sp.add_argument("--near-misses", type=int, default=20)
    sp.add_argument("--copy-rows", type=int, default=200_000)
    sp.add_argument("--settle-s", type=float, default=3.0)
    sp.add_argument("--hold-fraction", type=float, default=0.9,
                    help="(--duration) the hold offers this fraction of the highest rate that "
                    "kept up during the rise")
    sp.add_argument("--metrics-port", type=int, default=19400,
                    help="(--duration) first of the workers' metrics ports")
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
