-- Node leases (cluster mode): each kmsd process renews its row while it runs. Reconciliation
-- destroys an unrecorded token object only once no live lease has its creator's process id (a
-- process id alone means nothing across hosts), or after 10 minutes. 002 is left to the
-- aliases/tags migration of the AWS adapter.
CREATE TABLE node_leases (
  node_id       TEXT PRIMARY KEY,
  host          TEXT NOT NULL,
  pid           INTEGER NOT NULL,
  expires_at_ms BIGINT NOT NULL
);
CREATE INDEX node_leases_by_pid ON node_leases (pid);
