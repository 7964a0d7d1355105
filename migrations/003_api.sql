-- Secrets shared by every API process (the JWT signing key is generated on first start).
CREATE TABLE app_secrets (
    name        text PRIMARY KEY,
    value       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Failed logins, counted per user name and per client address to slow password guessing.
CREATE TABLE login_failures (
    id        bigserial PRIMARY KEY,
    username  text NOT NULL,
    client    text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_user ON login_failures (username, at);
CREATE INDEX login_failures_client ON login_failures (client, at);

CREATE INDEX alerts_subject_status ON alerts (subject_id, status);
