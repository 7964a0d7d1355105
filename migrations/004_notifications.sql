-- Transactional outbox: whatever changes an alert calls tether_notify() in the same
-- transaction, so the alert and the notifications it owes commit together or not at all.

ALTER TABLE alerts ADD COLUMN escalated_at timestamptz;

CREATE TABLE notifications (
    id               bigserial PRIMARY KEY,
    idempotency_key  uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    alert_id         bigint NOT NULL REFERENCES alerts (id),
    user_id          bigint NOT NULL REFERENCES users (id),
    channel          text NOT NULL CHECK (channel IN ('webhook', 'email')),
    event            text NOT NULL,
    payload          jsonb NOT NULL,  -- the alert as it was, plus "event"
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';

CREATE TABLE delivery_attempts (
    id               bigserial PRIMARY KEY,
    notification_id  bigint NOT NULL REFERENCES notifications (id),
    at               timestamptz NOT NULL DEFAULT now(),
    ok               boolean NOT NULL,
    status_code      integer,
    error            text,
    duration_ms      integer
);
CREATE INDEX delivery_attempts_notification ON delivery_attempts (notification_id);

CREATE FUNCTION alert_json(p_alert bigint) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', a.id, 'type', a.type, 'severity', a.severity, 'status', a.status,
        'subject_id', a.subject_id, 'device_id', a.device_id, 'zone_id', a.zone_id,
        'opened_at', a.opened_at, 'updated_at', a.updated_at, 'position', a.position,
        'late', a.late, 'confidence', a.confidence, 'details', a.details,
        'breach_count', a.breach_count, 'last_seen_at', a.last_seen_at,
        'cleared_at', a.cleared_at, 'escalated_at', a.escalated_at,
        'history', coalesce((SELECT jsonb_agg(jsonb_build_object('at', h.at, 'action', h.action,
                              'user_id', h.user_id, 'note', h.note) ORDER BY h.id)
                             FROM alert_history h WHERE h.alert_id = a.id), '[]'::jsonb))
    FROM alerts a WHERE a.id = p_alert
$$;

-- Routing: the subject's case officer; an escalation goes to the commanders of the parent
-- jurisdiction (of the same one at the top of the tree). One notification per channel the
-- user has (webhook, e-mail). With p_outbox false only the live channel (websockets) hears it.
CREATE FUNCTION tether_notify(p_alert bigint, p_event text, p_outbox boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    body jsonb := alert_json(p_alert) || jsonb_build_object('event', p_event);
BEGIN
    IF p_outbox THEN
        INSERT INTO notifications (alert_id, user_id, channel, event, payload)
        SELECT p_alert, u.id, ch.channel, p_event, body
        FROM alerts a
        JOIN subjects s ON s.id = a.subject_id
        JOIN jurisdictions j ON j.id = s.jurisdiction_id
        JOIN users u ON NOT u.disabled AND CASE WHEN p_event = 'escalated'
            THEN u.role = 'commander' AND u.jurisdiction_id = coalesce(j.parent_id, j.id)
            ELSE u.id = s.officer_id END
        CROSS JOIN LATERAL (VALUES ('webhook', u.notify_webhook IS NOT NULL),
                                   ('email', u.email IS NOT NULL)) ch (channel, wanted)
        WHERE a.id = p_alert AND ch.wanted;
    END IF;
    -- Delivered to listeners only when the transaction commits.
    PERFORM pg_notify('tether_alerts', jsonb_build_object('alert_id', p_alert,
                                                          'event', p_event)::text);
END $$;
