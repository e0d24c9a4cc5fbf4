-- AWS KMS-compatible API (src/aws/): what AWS knows about a key that kmsd's own model does not.
-- No key material here either. Rows are keyed by the kmsd key identity; a row is written BEFORE
-- the key itself, so no process ever sees an AWS-created key without its AWS attributes.

-- Per-key AWS attributes. Keys created through the native API have no row (their AWS view is
-- derived from the key type). An EXTERNAL key waiting for its material exists only here
-- (state 'PendingImport'): kmsd keys always have a version in the token.
CREATE TABLE aws_keys (
  identity      TEXT PRIMARY KEY,
  organisation  TEXT NOT NULL,
  region        TEXT NOT NULL,
  project       TEXT NOT NULL DEFAULT '',
  key_spec      TEXT NOT NULL,
  key_usage     TEXT NOT NULL,
  origin        TEXT NOT NULL CHECK (origin IN ('AWS_KMS', 'EXTERNAL')),
  description   TEXT NOT NULL DEFAULT '',
  -- 'Created' once the kmsd key exists; 'PendingImport' / 'PendingDeletion' for an EXTERNAL key
  -- that has no material (and so no kmsd key) yet.
  state         TEXT NOT NULL CHECK (state IN ('Created', 'PendingImport', 'PendingDeletion')),
  deletion_at   TEXT,
  created_at    TEXT NOT NULL
);
CREATE INDEX aws_keys_scope ON aws_keys (organisation, region, project, state);

-- Aliases: one name per organisation, region and project, pointing at one key.
CREATE TABLE aws_aliases (
  organisation  TEXT NOT NULL,
  region        TEXT NOT NULL,
  project       TEXT NOT NULL DEFAULT '',
  alias_name    TEXT NOT NULL,
  key_identity  TEXT NOT NULL,
  created_at    TEXT NOT NULL,
  updated_at    TEXT NOT NULL,
  PRIMARY KEY (organisation, region, project, alias_name)
);
CREATE INDEX aws_aliases_by_key ON aws_aliases (key_identity);

-- AWS tags: mutable, kept apart from kmsd's immutable labels.
CREATE TABLE aws_tags (
  key_identity  TEXT NOT NULL,
  tag_key       TEXT NOT NULL,
  tag_value     TEXT NOT NULL,
  PRIMARY KEY (key_identity, tag_key)
);
