-- Which database this is. Rule state in Redis carries this id in its key prefix
-- (ingest/state.py), so a database that is recreated (ids start again) never inherits another
-- database's subject states, due times or alert hysteresis from a Redis it shares.
CREATE TABLE tether_instance (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tether_instance DEFAULT VALUES;

-- Tether's own broker logins (the broker admin that manages device logins, the ingest account
-- that alone may read the device trees). Written by the setup (scripts/broker.sh via
-- api.store.credentials.provision); read by Tether's processes at start, so that a plain
-- TETHER_MQTT_URL without a user keeps working (contract section 4). Kept in clear because the
-- processes must present them; whoever can read this table can already rewrite every fix.
CREATE TABLE broker_accounts (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z]{1,32}$'),
    username    text NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 64),
    password    text NOT NULL CHECK (length(password) BETWEEN 16 AND 200),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Device logins issued by POST /api/devices/{id}/credentials. The password itself lives only in
-- the broker (hashed by its dynamic-security plugin) and in the one answer that showed it.
-- One username per device and one device per username: an OwnTracks user maps to exactly one
-- device, so `owntracks/a/b.c` and `owntracks/a.b/c` cannot both speak for `a.b.c`.
CREATE TABLE device_credentials (
    device_id   text PRIMARY KEY REFERENCES devices (id),
    username    text NOT NULL UNIQUE,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    issued_by   bigint REFERENCES users (id)
);
