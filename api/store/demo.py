"""The demo fleet's jurisdictions, subjects and devices (idempotent)."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb


def seed_demo(database_url: str, device_ids: list[str],
              center: tuple[float, float] = (31.2304, 121.4737)) -> None:
    """A demo jurisdiction tree with one subject per simulated device (idempotent)."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        row = conn.execute("SELECT id FROM jurisdictions WHERE name = 'Demo Province'"
                           " AND parent_id IS NULL").fetchone()
        if row:
            province = row[0]
        else:
            province = conn.execute("INSERT INTO jurisdictions (name) VALUES ('Demo Province')"
                                    " RETURNING id").fetchone()[0]
        row = conn.execute("SELECT id FROM jurisdictions WHERE parent_id = %s", (province,))
        county = (row.fetchone() or [None])[0]
        if county is None:
            county = conn.execute("INSERT INTO jurisdictions (name, parent_id)"
                                  " VALUES ('Demo County', %s) RETURNING id",
                                  (province,)).fetchone()[0]
        if not conn.execute("SELECT 1 FROM zones WHERE jurisdiction_id = %s",
                            (province,)).fetchone():
            # A school in the middle of the fleet: some trackers start inside it, so alerts
            # show at once; the ring warns those walking towards it.
            conn.execute("INSERT INTO zones (name, kind, geometry, radius_m, buffer_m,"
                         " jurisdiction_id, created_at) VALUES ('Demo school', 'exclusion',"
                         " %s, 800, 200, %s, now() - interval '1 day')",
                         (Jsonb({"type": "Point", "coordinates": [center[1], center[0]]}),
                          province))
        known = {r[0] for r in conn.execute("SELECT id FROM devices WHERE id = ANY(%s)",
                                            (device_ids,))}
        for device_id in device_ids:
            if device_id in known:
                continue
            subject = conn.execute("INSERT INTO subjects (name, jurisdiction_id) VALUES (%s, %s)"
                                   " RETURNING id", (f"Subject {device_id}", county)).fetchone()[0]
            conn.execute("INSERT INTO devices (id, kind, subject_id) VALUES (%s, 'wearable', %s)",
                         (device_id, subject))


async def add_user(database_url: str, fields: dict, exist_ok: bool = False) -> dict | None:
    """For `tether user add` and the demo: no caller, so the audit row names none."""
    from api.store import ApiStore, UniqueViolation
    from api.store.accounts import create_user

    store = ApiStore(database_url)
    await store.open()
    try:
        async with store.write() as cur:
            return await create_user(cur, None, fields)
    except UniqueViolation:
        if exist_ok:
            return None
        raise
    finally:
        await store.close()
