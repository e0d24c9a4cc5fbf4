-- kmsd metadata on PostgreSQL (cluster mode): the same tables as the SQLite store, so that
-- kmsctl migrate-store copies rows as they are. No key material, no plaintext: token objects
-- are referenced by CKA_ID only. Times are ISO-8601 text compared byte-wise (COLLATE "C").
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
  last_rotation_at       TEXT COLLATE "C",
  next_rotation_at       TEXT COLLATE "C",
  manual_rotations       INTEGER NOT NULL DEFAULT 0,
  latest_version         INTEGER NOT NULL,
  min_decryption_version INTEGER NOT NULL DEFAULT 1,
  deletion_at            TEXT COLLATE "C",
  object_version         INTEGER NOT NULL DEFAULT 1,
  created_at             TEXT NOT NULL,
  updated_at             TEXT NOT NULL,
  -- scheduled-rotation claim (real time): lets one node skip keys another is already rotating;
  -- correctness still rests on the version check at record time.
  claim_owner            TEXT,
  claim_until_ms         BIGINT NOT NULL DEFAULT 0,
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

-- Every change to cluster-wide state gets a sequence number; nodes replay it after a NOTIFY
-- (and after every reconnect of their LISTEN connection, so a missed notification is harmless).
CREATE TABLE key_changes (
  seq          BIGSERIAL PRIMARY KEY,
  key_identity TEXT NOT NULL
);

CREATE TABLE principals (
  name          TEXT PRIMARY KEY,
  token_sha256  TEXT NOT NULL UNIQUE,
  organisations TEXT NOT NULL,
  roles         TEXT NOT NULL,
  created_at    TEXT NOT NULL
);

-- One hash chain per cluster: appended under pg_advisory_xact_lock, see postgres-store.ts.
CREATE TABLE audit_events (
  seq          BIGINT PRIMARY KEY,
  time         TEXT COLLATE "C" NOT NULL,
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
CREATE INDEX audit_by_org ON audit_events (organisation, seq);

CREATE TABLE import_tokens (
  token_sha256       TEXT PRIMARY KEY,
  region             TEXT NOT NULL,
  organisation       TEXT NOT NULL,
  project            TEXT NOT NULL DEFAULT '',
  key_type           TEXT NOT NULL,
  wrapping_algorithm TEXT NOT NULL,
  cka_id             TEXT NOT NULL,
  expires_at         TEXT COLLATE "C" NOT NULL,
  used_at            TEXT,
  created_at         TEXT NOT NULL
);
CREATE INDEX import_tokens_by_cka_id ON import_tokens (cka_id);

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
