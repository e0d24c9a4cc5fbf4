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
