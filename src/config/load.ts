import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { configSchema, type Config } from './schema.js';

export class ConfigError extends Error {}

/** Reads, parses and validates the config file; relative paths in it are resolved against its folder. */
export function loadConfig(file: string): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read config file ${file}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (e) {
    throw new ConfigError(`config file ${file} is not valid YAML/JSON: ${(e as Error).message}`);
  }
  const parsed = configSchema.safeParse(raw ?? {});
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${formatPath(i.path) || '(root)'}: ${i.message}${unquotedHint(i, raw)}`);
    throw new ConfigError(`invalid config ${file}:\n${lines.join('\n')}`);
  }
  const cfg = parsed.data;
  const base = path.dirname(path.resolve(file));
  cfg.dataDir = path.resolve(base, cfg.dataDir);
  for (const r of cfg.regions) if (r.pinFile) r.pinFile = path.resolve(base, r.pinFile);
  const pg = cfg.store?.postgres;
  if (pg?.passwordFile) pg.passwordFile = path.resolve(base, pg.passwordFile);
  if (cfg.listen.tls) {
    cfg.listen.tls.certFile = path.resolve(base, cfg.listen.tls.certFile);
    cfg.listen.tls.keyFile = path.resolve(base, cfg.listen.tls.keyFile);
  }
  if (cfg.xks?.tls) {
    const t = cfg.xks.tls;
    t.certFile = path.resolve(base, t.certFile);
    t.keyFile = path.resolve(base, t.keyFile);
    if (t.clientCaFile) t.clientCaFile = path.resolve(base, t.clientCaFile);
  }
  for (const ks of cfg.xks?.keystores ?? [])
    for (const c of ks.credentials) if (c.secretAccessKeyFile) c.secretAccessKeyFile = path.resolve(base, c.secretAccessKeyFile);
  return cfg;
}

/**
 * YAML reads unquoted digits (a tokenSha256 of 64 zeros, a PIN-like label) as a number and
 * true/false as booleans; where the schema wants a string, say so and how to fix it.
 */
function unquotedHint(issue: { code: string; path: readonly PropertyKey[]; expected?: unknown }, raw: unknown): string {
  if (issue.code !== 'invalid_type' || issue.expected !== 'string') return '';
  let v: unknown = raw;
  for (const p of issue.path) v = v && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[p] : undefined;
  if (typeof v !== 'number' && typeof v !== 'boolean') return '';
  return ` (YAML read the unquoted value as a ${typeof v}: put it in quotes, e.g. "…")`;
}

function formatPath(p: readonly PropertyKey[]): string {
  return p.map((s, i) => (typeof s === 'number' ? `[${s}]` : (i ? '.' : '') + String(s))).join('');
}

/** Resolves a secret named by `<x>Env` or `<x>File`; config/ is the only place that reads env and files. */
export function readSecret(envName: string | undefined, file: string | undefined, what: string): string {
  if (envName) {
    const v = process.env[envName];
    if (!v) throw new ConfigError(`${what}: environment variable ${envName} is not set`);
    return v;
  }
  if (file) {
    try {
      return readFileSync(file, 'utf8').trim();
    } catch (e) {
      throw new ConfigError(`${what}: cannot read ${file}: ${(e as Error).message}`);
    }
  }
  throw new ConfigError(`${what}: no secret source configured`);
}

export function configPathFromEnv(cliValue: string | undefined): string {
  const p = cliValue ?? process.env.KMSD_CONFIG;
  if (!p) throw new ConfigError('no config file: pass --config FILE or set KMSD_CONFIG');
  return p;
}

