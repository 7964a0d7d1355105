-- One definition of an alert's JSON, for REST (GET /api/alerts, ack, resolve), the websockets
-- and the outbox alike. REST used to build its own shape, whose history entries also carried
-- `data`; this definition is that union, so no reader loses a field.

-- From the row: REST lists read many alerts and already hold each row.
CREATE FUNCTION alert_json(a alerts) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', a.id, 'type', a.type, 'severity', a.severity, 'status', a.status,
        'subject_id', a.subject_id, 'device_id', a.device_id, 'zone_id', a.zone_id,
        'opened_at', a.opened_at, 'updated_at', a.updated_at, 'position', a.position,
        'late', a.late, 'confidence', a.confidence, 'details', a.details,
        'breach_count', a.breach_count, 'last_seen_at', a.last_seen_at,
        'cleared_at', a.cleared_at, 'escalated_at', a.escalated_at,
        'history', coalesce((SELECT jsonb_agg(jsonb_build_object('at', h.at, 'action', h.action,
                              'user_id', h.user_id, 'note', h.note, 'data', h.data)
                              ORDER BY h.id)
                             FROM alert_history h WHERE h.alert_id = a.id), '[]'::jsonb))
$$;

-- By id (tether_notify and the websockets' feed call this one): the same definition.
CREATE OR REPLACE FUNCTION alert_json(p_alert bigint) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT alert_json(a) FROM alerts a WHERE a.id = p_alert
$$;
