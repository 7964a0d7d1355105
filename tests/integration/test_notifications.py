"""Notifications through real receivers: exactly once after an outage, signed, escalated."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import uuid
from collections import Counter
from datetime import timedelta

import psycopg
import pytest

from alerts.deliver import Deliverer
from alerts.settings import AlertSettings
from alerts.store import OutboxStore
from tests.integration.conftest import count, eventually
from tests.integration.receivers import Hook, free_port, http_receiver, smtp_receiver
from tether.config import Settings


def people(db: psycopg.Connection, hook_url: str | None, fmt: str = "json",
           email: str | None = None) -> dict:
    tag = uuid.uuid4().hex[:6]

    def one(sql: str, *a: object) -> int:
        return db.execute(sql, a).fetchone()[0]

    city = one("INSERT INTO jurisdictions (name) VALUES (%s) RETURNING id", f"city-{tag}")
    county = one("INSERT INTO jurisdictions (name, parent_id) VALUES (%s, %s) RETURNING id",
                 f"county-{tag}", city)
    officer = one("INSERT INTO users (username, password_hash, role, jurisdiction_id,"
                  " notify_webhook, notify_format, notify_secret, email) VALUES (%s, 'x',"
                  " 'officer', %s, %s, %s, 'hook-secret', %s) RETURNING id",
                  f"off-{tag}", county, hook_url, fmt, email)
    boss = one("INSERT INTO users (username, password_hash, role, jurisdiction_id,"
               " notify_webhook) VALUES (%s, 'x', 'commander', %s, %s) RETURNING id",
               f"boss-{tag}", city, hook_url)
    subject = one("INSERT INTO subjects (name, jurisdiction_id, officer_id) VALUES"
                  " ('s', %s, %s) RETURNING id", county, officer)
    return {"officer": officer, "boss": boss, "subject": subject, "county": county}


def raise_alert(db: psycopg.Connection, subject: int, type_: str = "exclusion_entry",
                severity: str = "critical") -> int:
    """What the rules do, in one transaction: the alert and its outbox."""
    with db.transaction():
        aid = db.execute("INSERT INTO alerts (type, severity, subject_id, position) VALUES"
                         " (%s, %s, %s, '{\"lat\": 31.2, \"lon\": 121.4}') RETURNING id",
                         (type_, severity, subject)).fetchone()[0]
        db.execute("SELECT tether_notify(%s, 'opened')", (aid,))
    return aid


@contextlib.asynccontextmanager
async def delivering(settings: Settings, **kw):
    store = OutboxStore(settings.database_url)
    await store.open()
    renamed = {"timeout_s": "delivery_timeout_s", "concurrency": "delivery_concurrency",
               "lease_s": "delivery_lease_s"}
    d = Deliverer(store, AlertSettings(delivery_poll_s=0.05,
                                       **{renamed.get(k, k): v for k, v in kw.items()}))
    task = asyncio.create_task(d.run(), name="test-deliverer")
    try:
        yield d
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await d.close()
        await store.close()


async def test_receiver_down_then_up_each_notification_arrives_once(settings, db) -> None:
    port = free_port()
    p = people(db, f"http://127.0.0.1:{port}/hook")
    alerts = [raise_alert(db, p["subject"], t) for t in ("exclusion_entry", "sos", "curfew")]
    hook = Hook()
    # Short escalation would add notifications of its own; keep it out of this test.
    async with delivering(settings, escalate_after_s=3600):
        await eventually(lambda: count(db, "SELECT count(*) FROM delivery_attempts a JOIN"
                                       " notifications n ON n.id = a.notification_id WHERE"
                                       " n.alert_id = ANY(%s) AND NOT a.ok", alerts) >= 3,
                         what="failed attempts while the receiver is down")
        db.execute("UPDATE notifications SET next_attempt_at = now() WHERE alert_id = ANY(%s)",
                   (alerts,))  # skip the backoff wait; the attempts already failed
        async with http_receiver(hook, port):
            await eventually(lambda: count(db, "SELECT count(*) FROM notifications WHERE"
                                           " alert_id = ANY(%s) AND status = 'delivered'",
                                           alerts) == 3, what="3 deliveries")
            await asyncio.sleep(0.5)  # anything more would be a duplicate
    keys = Counter(r["headers"]["idempotency-key"] for r in hook.received)
    assert len(keys) == 3 and set(keys.values()) == {1}
    bodies = [json.loads(r["body"]) for r in hook.received]
    assert sorted(b["id"] for b in bodies) == sorted(alerts)
    assert {b["event"] for b in bodies} == {"opened"}
    for r in hook.received:
        mac = hmac.new(b"hook-secret", r["body"], hashlib.sha256).hexdigest()
        assert r["headers"]["x-tether-signature"] == f"sha256={mac}"


async def test_a_5xx_answer_is_retried(settings, db) -> None:
    port = free_port()
    p = people(db, f"http://127.0.0.1:{port}/hook", fmt="wecom")
    aid = raise_alert(db, p["subject"], severity="high")
    hook = Hook(fail_with=503)
    async with http_receiver(hook, port), delivering(settings):
        await eventually(lambda: len(hook.received) >= 1, what="a first attempt")
        hook.fail_with = None
        db.execute("UPDATE notifications SET next_attempt_at = now() WHERE alert_id = %s",
                   (aid,))
        await eventually(lambda: count(db, "SELECT count(*) FROM notifications WHERE"
                                       " alert_id = %s AND status = 'delivered'", aid) == 1,
                         what="delivered on retry")
    assert json.loads(hook.received[-1]["body"])["msgtype"] == "markdown"
    outcomes = [r[0] for r in db.execute(
        "SELECT a.ok FROM delivery_attempts a JOIN notifications n ON n.id = a.notification_id"
        " WHERE n.alert_id = %s ORDER BY a.id", (aid,))]
    assert outcomes[0] is False and outcomes[-1] is True


async def test_email_through_smtp(settings, db) -> None:
    port = free_port()
    p = people(db, None, email="officer@example.test")
    raise_alert(db, p["subject"], "strap_tamper")
    with smtp_receiver(port) as box:
        async with delivering(settings, smtp_url=f"smtp://127.0.0.1:{port}"):
            await eventually(lambda: len(box.messages) == 1, what="an e-mail")
    msg = box.messages[0]
    assert msg.rcpt_tos == ["officer@example.test"]
    assert b"strap_tamper" in msg.content and b"Subject: " in msg.content


@pytest.mark.parametrize("acknowledged", [False, True])
async def test_escalation_fires_after_its_time_unless_acknowledged(settings, db,
                                                                   acknowledged) -> None:
    port = free_port()
    p = people(db, f"http://127.0.0.1:{port}/hook")
    aid = raise_alert(db, p["subject"])
    if acknowledged:
        db.execute("UPDATE alerts SET status = 'acknowledged' WHERE id = %s", (aid,))
    hook = Hook()
    async with http_receiver(hook, port), delivering(settings, escalate_after_s=1.0):
        await asyncio.sleep(2.5)
    events = [(json.loads(r["body"])["event"]) for r in hook.received]
    boss_got = count(db, "SELECT count(*) FROM notifications WHERE alert_id = %s AND"
                     " user_id = %s AND event = 'escalated'", aid, p["boss"])
    if acknowledged:
        assert boss_got == 0 and "escalated" not in events
    else:
        assert boss_got == 1 and events.count("escalated") == 1
        assert count(db, "SELECT count(*) FROM alert_history WHERE alert_id = %s"
                     " AND action = 'escalated'", aid) == 1


async def test_sent_notifications_are_pruned_after_retention(settings, db) -> None:
    p = people(db, "http://127.0.0.1:9/never")
    aid = raise_alert(db, p["subject"])
    db.execute("UPDATE notifications SET status = 'delivered', created_at = now() -"
               " interval '100 days' WHERE alert_id = %s", (aid,))
    fresh = raise_alert(db, p["subject"], "sos")
    db.execute("UPDATE notifications SET status = 'delivered' WHERE alert_id = %s", (fresh,))
    store = OutboxStore(settings.database_url)
    await store.open()
    try:
        assert await store.prune(timedelta(days=90)) >= 1
    finally:
        await store.close()
    assert count(db, "SELECT count(*) FROM notifications WHERE alert_id = %s", aid) == 0
    assert count(db, "SELECT count(*) FROM notifications WHERE alert_id = %s", fresh) > 0
