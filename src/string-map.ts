/**
 * A prototype-less copy of a client-keyed string map (own keys only, `__proto__` and
 * `constructor` included): labels, annotations, AWS encryption contexts. Plain assignment into
 * `{}` (what z.record does) drops a `__proto__` key, so a map would silently lose an entry.
 */
export function copyStringMap(v: Record<string, string>): Record<string, string> {
  const out = Object.create(null) as Record<string, string>;
  for (const k of Object.keys(v)) out[k] = v[k]!;
  return out;
}
