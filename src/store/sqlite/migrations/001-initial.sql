-- kmsd metadata. No key material, no plaintext: token objects are referenced by CKA_ID only.
CREATE TABLE keys (
  identity               TEXT PRIMARY KEY,
  organisation           TEXT NOT NULL,
  region                 TEXT NOT NULL,
  project                TEXT NOT NULL DEFAULT '',
  name                   TEXT NOT NULL,
  slug                   TEXT NOT NULL,
  description            TEXT NOT NULL DEFAULT '',
  labels                 TEXT NOT NULL DEFAULT '{}',
  annotations            TEXT NOT NULL DEFAULT '{}',
  key_type               TEXT NOT NULL,
  status                 TEXT NOT NULL CHECK (status IN ('active', 'disabled', 'pending_deletion')),
  status_before_deletion TEXT,
  export_allowed         INTEGER NOT NULL DEFAULT 0,
  imported               INTEGER NOT NULL DEFAULT 0,
  allow_rotation         INTEGER NOT NULL DEFAULT 1,
  is_default             INTEGER NOT NULL DEFAULT 0,
  rotation_enabled       INTEGER NOT NULL DEFAULT 0,
  rotation_period_days   INTEGER,
  last_rotation_at       TEXT,
  next_rotation_at       TEXT,
  manual_rotations       INTEGER NOT NULL DEFAULT 0,
  latest_version         INTEGER NOT NULL,
  min_decryption_version INTEGER NOT NULL DEFAULT 1,
  deletion_at            TEXT,
  object_version         INTEGER NOT NULL DEFAULT 1,
  created_at             TEXT NOT NULL,
  updated_at             TEXT NOT NULL,
  -- scheduled-rotation claim (real time, not the testing clock): lets one daemon skip keys
  -- another is already rotating; correctness still rests on the version check at record time.
  claim_owner            TEXT,
  claim_until_ms         INTEGER NOT NULL DEFAULT 0,
  UNIQUE (organisation, region, project, slug)
);
CREATE INDEX keys_rotation_due ON keys (next_rotation_at) WHERE rotation_enabled = 1;
CREATE INDEX keys_deletion_due ON keys (deletion_at) WHERE status = 'pending_deletion';

CREATE TABLE key_versions (
  key_identity TEXT NOT NULL REFERENCES keys (identity) ON DELETE CASCADE,
  version      INTEGER NOT NULL,
  cka_id       TEXT NOT NULL UNIQUE,
  status       TEXT NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
  origin       TEXT NOT NULL CHECK (origin IN ('generated', 'imported')),
  created_at   TEXT NOT NULL,
  PRIMARY KEY (key_identity, version)
);

-- Intent journal for generate-on-token-then-record: a row exists while a token object is
-- being created and not yet recorded; reconciliation uses it to tell in-flight from orphaned.
CREATE TABLE pending_objects (
  cka_id        TEXT PRIMARY KEY,
  region        TEXT NOT NULL,
  purpose       TEXT NOT NULL,
  owner_pid     INTEGER NOT NULL,
  created_at_ms INTEGER NOT NULL
);

-- Every change to a key row bumps this log; other processes on the same data dir replay it to
-- keep their in-memory key view coherent.
CREATE TABLE key_changes (
  seq          INTEGER PRIMARY KEY AUTOINCREMENT,
  key_identity TEXT NOT NULL
);

CREATE TABLE principals (
  name          TEXT PRIMARY KEY,
  token_sha256  TEXT NOT NULL UNIQUE,
  organisations TEXT NOT NULL,
  roles         TEXT NOT NULL,
  created_at    TEXT NOT NULL
);

CREATE TABLE audit_events (
  seq          INTEGER PRIMARY KEY,
  time         TEXT NOT NULL,
  action       TEXT NOT NULL,
  outcome      TEXT NOT NULL,
  region       TEXT,
  key_identity TEXT,
  key_version  TEXT,
  principal    TEXT,
  organisation TEXT,
  request_id   TEXT,
  detail       TEXT,
  prev_hash    TEXT NOT NULL,
  hash         TEXT NOT NULL
);
CREATE INDEX audit_by_key ON audit_events (key_identity, seq);

CREATE TABLE import_tokens (
  token_sha256       TEXT PRIMARY KEY,
  region             TEXT NOT NULL,
  organisation       TEXT NOT NULL,
  project            TEXT NOT NULL DEFAULT '',
  key_type           TEXT NOT NULL,
  wrapping_algorithm TEXT NOT NULL,
  cka_id             TEXT NOT NULL,
  expires_at         TEXT NOT NULL,
  used_at            TEXT,
  created_at         TEXT NOT NULL
);

CREATE TABLE wrapping_keys (
  region         TEXT PRIMARY KEY,
  cka_id         TEXT NOT NULL,
  public_key_pem TEXT NOT NULL,
  created_at     TEXT NOT NULL
);

CREATE TABLE settings (
  name  TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
