import type { z } from 'zod';
import { validation } from '../errors.js';

/**
 * Validates a body or query against its schema; the error names the offending field. `at`
 * names where the value sits inside a larger body (e.g. `batch[3]`) and prefixes every field.
 */
export function parse<S extends z.ZodType>(schema: S, value: unknown, where = 'body', at = ''): z.output<S> {
  if (value === undefined || value === null) value = {};
  if (typeof value !== 'object' || Array.isArray(value)) throw validation(`${at || where}: expected a JSON object`);
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  // An unknown field is the clearest thing to report (e.g. PATCH {description} names description,
  // not the missing minDecryptionVersion).
  const issue = r.error.issues.find((i) => i.code === 'unrecognized_keys') ?? r.error.issues[0]!;
  const path = [at, ...issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : String(p)))].filter(Boolean).join('.').replace(/\.\[/g, '[');
  if (issue.code === 'unrecognized_keys') {
    const keys = (issue as { keys: string[] }).keys.map((k) => (path ? `${path}.${k}` : k));
    throw validation(`unknown field${keys.length > 1 ? 's' : ''}: ${keys.join(', ')}`);
  }
  if (issue.code === 'invalid_type' && issue.message.includes('received undefined')) throw validation(`${path}: is required`);
  throw validation(`${path || where}: ${issue.message}`);
}

/**
 * Validates a query against its schema. A parameter the schema knows must come once, as
 * `name=value`: the extended query parser turns `a=1&a=2` into an array and `a[x]=1` into an
 * object, and dropping those silently listed every key for `status=active&status=disabled` and
 * scheduled a 30-day deletion for `pendingWindowInDays=7&pendingWindowInDays=30` → 400 instead.
 * Parameters the schema does not know are ignored, as before.
 */
export function parseQuery<S extends z.ZodObject>(schema: S, query: Record<string, unknown>): z.output<S> {
  const known: Record<string, string> = {};
  for (const [k, v] of Object.entries(query)) {
    if (!Object.hasOwn(schema.shape, k)) continue;
    if (typeof v !== 'string') throw validation(`query: ${k}: give it once, as ${k}=value`);
    known[k] = v;
  }
  return parse(schema, known, 'query');
}
