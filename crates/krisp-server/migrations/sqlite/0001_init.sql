-- Krisp backend schema (SQLite). Times are Unix seconds; ids are random text.
CREATE TABLE accounts (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    plan          TEXT NOT NULL,           -- 'trial' | 'paid'
    plan_ends_at  INTEGER,                 -- trial end; NULL for paid
    seats         INTEGER NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE orgs (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    admin_id          TEXT NOT NULL REFERENCES accounts(id),
    seats             INTEGER NOT NULL,
    enrol_token_hash  TEXT UNIQUE,
    created_at        INTEGER NOT NULL
);

CREATE TABLE org_members (
    org_id      TEXT NOT NULL REFERENCES orgs(id),
    email       TEXT NOT NULL,
    account_id  TEXT REFERENCES accounts(id),  -- set once the invitee signs in
    role        TEXT NOT NULL,                 -- 'admin' | 'member'
    invited_at  INTEGER NOT NULL,
    PRIMARY KEY (org_id, email)
);
CREATE INDEX org_members_email ON org_members(email);
CREATE INDEX org_members_account ON org_members(account_id);

-- One live code per address: a new request replaces the old one.
CREATE TABLE login_codes (
    email       TEXT PRIMARY KEY,
    code_hash   TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);

CREATE TABLE sessions (
    id                 TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL REFERENCES accounts(id),
    refresh_hash       TEXT NOT NULL UNIQUE,
    prev_refresh_hash  TEXT,      -- the one rotated out: presenting it again means theft
    access_hash        TEXT NOT NULL UNIQUE,
    access_expires_at  INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    created_at         INTEGER NOT NULL
);
CREATE INDEX sessions_account ON sessions(account_id);
CREATE INDEX sessions_prev_refresh ON sessions(prev_refresh_hash);

-- A device uses a seat of its account's plan (org_id NULL), of an organisation it is a
-- member of (both set), or was enrolled by the organisation's token (account_id NULL).
CREATE TABLE devices (
    id            TEXT PRIMARY KEY,
    device_id     TEXT NOT NULL,
    account_id    TEXT REFERENCES accounts(id),
    org_id        TEXT REFERENCES orgs(id),
    name          TEXT NOT NULL,
    os            TEXT NOT NULL,
    token_hash    TEXT UNIQUE,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX devices_account_device ON devices(account_id, device_id) WHERE account_id IS NOT NULL;
CREATE UNIQUE INDEX devices_org_enrolled ON devices(org_id, device_id) WHERE account_id IS NULL;
CREATE INDEX devices_org ON devices(org_id);

CREATE TABLE rate_limits (
    key           TEXT PRIMARY KEY,
    window_start  INTEGER NOT NULL,
    hits          INTEGER NOT NULL,
    banned_until  INTEGER NOT NULL DEFAULT 0
);

-- Security events. Never holds codes, tokens or hashes of them.
CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    at          INTEGER NOT NULL,
    event       TEXT NOT NULL,
    account_id  TEXT,
    org_id      TEXT,
    ip          TEXT,
    subject     TEXT,     -- e-mail address an admin action was about (erased with it)
    detail      TEXT NOT NULL
);
CREATE INDEX audit_log_account ON audit_log(account_id);
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX audit_log_subject ON audit_log(subject);
