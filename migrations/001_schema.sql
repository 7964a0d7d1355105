-- Tether schema v1: the whole public contract (../shared/CONTRACT.md).
CREATE EXTENSION IF NOT EXISTS timescaledb;

-- Jurisdictions form a tree (province > city > county > township office). `path` holds the ids
-- from the root down to the row itself, so "this jurisdiction and below" is `$1 = ANY(path)`.
CREATE TABLE jurisdictions (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    parent_id   bigint REFERENCES jurisdictions (id),
    timezone    text NOT NULL DEFAULT 'Asia/Shanghai',
    path        bigint[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jurisdictions_path ON jurisdictions USING gin (path);

CREATE FUNCTION jurisdictions_set_path() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.parent_id IS NULL THEN
        NEW.path := ARRAY[NEW.id];
    ELSE
        SELECT path || NEW.id INTO STRICT NEW.path FROM jurisdictions WHERE id = NEW.parent_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER jurisdictions_path BEFORE INSERT ON jurisdictions
    FOR EACH ROW EXECUTE FUNCTION jurisdictions_set_path();
-- A subtree never moves: scoping decisions already made must stay true.
CREATE FUNCTION jurisdictions_freeze_parent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.parent_id IS DISTINCT FROM OLD.parent_id OR NEW.path <> OLD.path THEN
        RAISE EXCEPTION 'a jurisdiction cannot move in the tree';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER jurisdictions_frozen BEFORE UPDATE ON jurisdictions
    FOR EACH ROW EXECUTE FUNCTION jurisdictions_freeze_parent();

CREATE TABLE users (
    id              bigserial PRIMARY KEY,
    username        text NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 100),
    password_hash   text NOT NULL,  -- argon2id
    role            text NOT NULL CHECK (role IN ('admin', 'commander', 'officer')),
    jurisdiction_id bigint REFERENCES jurisdictions (id),
    phone           text,
    email           text,
    notify_webhook  text,
    notify_format   text NOT NULL DEFAULT 'json' CHECK (notify_format IN ('json', 'dingtalk', 'wecom')),
    notify_secret   text,
    disabled        boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (role = 'admin' OR jurisdiction_id IS NOT NULL)
);

CREATE TABLE subjects (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    jurisdiction_id bigint NOT NULL REFERENCES jurisdictions (id),
    officer_id      bigint REFERENCES users (id),
    timezone        text,  -- NULL: the jurisdiction's
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subjects_jurisdiction ON subjects (jurisdiction_id);

CREATE TABLE devices (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    kind        text NOT NULL CHECK (kind IN ('phone', 'wearable', 'victim')),
    subject_id  bigint NOT NULL REFERENCES subjects (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_subject ON devices (subject_id);

CREATE TABLE zones (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    kind            text NOT NULL CHECK (kind IN ('exclusion', 'inclusion')),
    geometry        jsonb NOT NULL,  -- GeoJSON, WGS-84
    radius_m        double precision CHECK (radius_m > 0),
    buffer_m        double precision CHECK (buffer_m >= 0),
    subject_id      bigint REFERENCES subjects (id),
    jurisdiction_id bigint NOT NULL REFERENCES jurisdictions (id),
    schedule        jsonb,  -- NULL: always in force
    created_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz,
    CHECK (buffer_m IS NULL OR kind = 'exclusion')
);
CREATE INDEX zones_jurisdiction ON zones (jurisdiction_id) WHERE deleted_at IS NULL;
CREATE INDEX zones_subject ON zones (subject_id) WHERE deleted_at IS NULL;

CREATE TABLE victims (
    id          bigserial PRIMARY KEY,
    subject_id  bigint NOT NULL REFERENCES subjects (id),
    device_id   text NOT NULL REFERENCES devices (id),
    radius_m    double precision NOT NULL CHECK (radius_m > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (subject_id, device_id)
);

-- Every fix, exactly once per (device, fix_time). No foreign key: the ingest path checks the
-- device against its registry, and a per-row FK check would cost the hot path.
CREATE TABLE fixes (
    device_id    text NOT NULL,
    fix_time     timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    lat          double precision NOT NULL,
    lon          double precision NOT NULL,
    accuracy_m   real,
    altitude_m   real,
    speed_mps    real,
    heading_deg  real,
    battery_pct  smallint,
    source       text,
    datum        text NOT NULL DEFAULT 'wgs84',
    reported_lat double precision,  -- as sent, when datum is not wgs84
    reported_lon double precision,
    mock         boolean,
    seq          bigint,
    outlier      boolean NOT NULL DEFAULT false,
    extra        jsonb,
    PRIMARY KEY (device_id, fix_time)
);
SELECT create_hypertable('fixes', by_range('fix_time', INTERVAL '1 day'));
CREATE INDEX fixes_time_lat_lon ON fixes (fix_time, lat, lon);

CREATE TABLE device_events (
    device_id    text NOT NULL,
    event_time   timestamptz NOT NULL,
    type         text NOT NULL,
    received_at  timestamptz NOT NULL,
    lat          double precision,
    lon          double precision,
    battery_pct  smallint,
    data         jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (device_id, event_time, type)
);
SELECT create_hypertable('device_events', by_range('event_time', INTERVAL '7 days'));

CREATE TABLE alerts (
    id           bigserial PRIMARY KEY,
    type         text NOT NULL,
    severity     text NOT NULL CHECK (severity IN ('critical', 'high', 'medium', 'low')),
    status       text NOT NULL DEFAULT 'open'
                 CHECK (status IN ('open', 'acknowledged', 'resolved')),
    subject_id   bigint NOT NULL REFERENCES subjects (id),
    device_id    text,
    zone_id      bigint REFERENCES zones (id),
    opened_at    timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    position     jsonb,  -- {lat, lon, ts, acc}
    late         boolean NOT NULL DEFAULT false,
    confidence   text CHECK (confidence IN ('confident', 'probable')),
    details      jsonb NOT NULL DEFAULT '{}',
    breach_count integer NOT NULL DEFAULT 1,
    last_seen_at timestamptz,
    cleared_at   timestamptz  -- when the subject returned to compliance
);
CREATE INDEX alerts_subject ON alerts (subject_id, opened_at DESC);
CREATE INDEX alerts_status ON alerts (status, opened_at DESC);
-- One open incident per (subject, type, zone): repeated breaches update it.
CREATE UNIQUE INDEX alerts_one_open_incident ON alerts (subject_id, type, coalesce(zone_id, 0))
    WHERE status <> 'resolved';

CREATE TABLE alert_history (
    id        bigserial PRIMARY KEY,
    alert_id  bigint NOT NULL REFERENCES alerts (id),
    at        timestamptz NOT NULL DEFAULT now(),
    user_id   bigint REFERENCES users (id),
    action    text NOT NULL,
    note      text,
    data      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_history_alert ON alert_history (alert_id, at);

CREATE TABLE ingest_rejects (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    topic        text NOT NULL,
    payload      bytea NOT NULL,  -- at most 64 KiB of the raw message
    reason       text NOT NULL,
    device_id    text
);
CREATE INDEX ingest_rejects_received ON ingest_rejects (received_at);

CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    user_id      bigint REFERENCES users (id),
    action       text NOT NULL,
    object_type  text NOT NULL,
    object_id    text,
    before       jsonb,
    after        jsonb
);
CREATE INDEX audit_log_at ON audit_log (at);
