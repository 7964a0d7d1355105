-- Casework (contract §6): change and end what was enrolled, monitoring orders, leave.

-- A password change or disabling moves this forward; tokens issued before it are refused
-- (REST at once, websockets at their next re-check).
ALTER TABLE users ADD COLUMN sessions_valid_after timestamptz;

-- A device taken off a subject stays enrolled (its history is evidence), owned by no one.
ALTER TABLE devices ALTER COLUMN subject_id DROP NOT NULL;

-- A zone edited: `changed_at` is when the current version began; the versions before it are
-- kept here with the time each was in force, so a late fix is judged on the zone as it was.
ALTER TABLE zones ADD COLUMN changed_at timestamptz;
CREATE TABLE zone_versions (
    id          bigserial PRIMARY KEY,
    zone_id     bigint NOT NULL REFERENCES zones (id),
    name        text NOT NULL,
    geometry    jsonb NOT NULL,
    radius_m    double precision,
    buffer_m    double precision,
    schedule    jsonb,
    valid_from  timestamptz NOT NULL,
    valid_to    timestamptz NOT NULL
);
CREATE INDEX zone_versions_zone ON zone_versions (zone_id, valid_to);

-- Monitoring orders (Community Corrections Law art. 29): at most three months at a time.
CREATE TABLE monitoring_orders (
    id          bigserial PRIMARY KEY,
    subject_id  bigint NOT NULL REFERENCES subjects (id),
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    basis       text,
    note        text,
    ended_at    timestamptz,  -- ended early
    renewals    jsonb NOT NULL DEFAULT '[]',  -- [{at, by, from, to, note}]
    created_by  bigint REFERENCES users (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);
CREATE INDEX monitoring_orders_subject ON monitoring_orders (subject_id, starts_at DESC);

-- Leave permits. Once approved, the destination is a zone of its own (kind inclusion,
-- `leave_id` set) in force from the leave's start to its end or return.
CREATE TABLE leaves (
    id            bigserial PRIMARY KEY,
    subject_id    bigint NOT NULL REFERENCES subjects (id),
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL,
    destination   jsonb NOT NULL,
    radius_m      double precision,
    reason        text NOT NULL,
    status        text NOT NULL DEFAULT 'requested'
                  CHECK (status IN ('requested', 'approved', 'rejected', 'cancelled',
                                    'returned')),
    requested_by  bigint REFERENCES users (id),
    decided_by    bigint REFERENCES users (id),
    decided_at    timestamptz,
    returned_at   timestamptz,
    zone_id       bigint REFERENCES zones (id),
    history       jsonb NOT NULL DEFAULT '[]',  -- [{at, by, action, note}]
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);
CREATE INDEX leaves_subject ON leaves (subject_id, starts_at DESC);
ALTER TABLE zones ADD COLUMN leave_id bigint REFERENCES leaves (id);

-- Reports from a device while its subject had no order in force: counted, not kept.
CREATE TABLE unmonitored_reports (
    device_id  text NOT NULL,
    day        date NOT NULL,
    n          bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, day)
);

CREATE TRIGGER monitoring_orders_changed AFTER INSERT OR UPDATE OR DELETE ON monitoring_orders
    FOR EACH STATEMENT EXECUTE FUNCTION tether_world_changed();
CREATE TRIGGER leaves_changed AFTER INSERT OR UPDATE OR DELETE ON leaves
    FOR EACH STATEMENT EXECUTE FUNCTION tether_world_changed();
CREATE TRIGGER zone_versions_changed AFTER INSERT OR UPDATE OR DELETE ON zone_versions
    FOR EACH STATEMENT EXECUTE FUNCTION tether_world_changed();

CREATE INDEX audit_log_object ON audit_log (object_type, object_id);
