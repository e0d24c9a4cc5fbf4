/**
 * Summarises a V8 .cpuprofile (node --cpu-prof): self time per function and per area (kmsd
 * module, a dependency, node internals, native/GC), so "where the time goes" is one table.
 * Also usable alone: node dist/bench/profile.js FILE.cpuprofile
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface CpuProfile {
  nodes: CpuProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface ProfileEntry {
  name: string;
  where: string;
  selfMs: number;
  percent: number;
  /** the nearest JS callers (most self time first), e.g. who calls a native `open` */
  callers: string[];
}

export interface ProfileSummary {
  file: string;
  totalMs: number;
  idlePercent: number;
  functions: ProfileEntry[];
  areas: { area: string; selfMs: number; percent: number }[];
}

function area(url: string, fn: string): string {
  if (!url) return fn.startsWith('(') ? fn : '(native)';
  if (url.startsWith('node:')) return 'node:' + url.slice(5).split('/').slice(0, url.startsWith('node:internal/') ? 2 : 1).join('/');
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + 'node_modules/'.length).split('/');
    return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  const src = url.indexOf('/dist/src/');
  if (src >= 0) return 'kmsd:' + path.dirname(url.slice(src + '/dist/src/'.length));
  return path.basename(url);
}

/** `window`: only samples between these ms after the profile's start (e.g. the measured load). */
export function summariseProfile(file: string, top = 25, window?: { fromMs: number; toMs: number }): ProfileSummary {
  const prof = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const short = (url: string) => url.replace(/^file:\/\//, '').replace(/^.*\/(node_modules|dist)\//, '$1/');
  /** Two nearest callers that are not node internals, as `fn (file:line)`. */
  const callerOf = (id: number): string => {
    const out: string[] = [];
    for (let cur = parent.get(id); cur !== undefined && out.length < 2; cur = parent.get(cur)) {
      const f = byId.get(cur)!.callFrame;
      if (!f.url || f.url.startsWith('node:')) continue;
      out.push(`${f.functionName || '(anonymous)'} (${short(f.url).split('/').slice(-2).join('/')}:${f.lineNumber + 1})`);
    }
    return out.join(' ← ') || '(none)';
  };
  const callerUs = new Map<string, Map<string, number>>();
  const selfUs = new Map<number, number>();
  let at = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    at += prof.timeDeltas[i] ?? 0;
    if (window && (at < window.fromMs * 1000 || at > window.toMs * 1000)) continue;
    selfUs.set(prof.samples[i]!, (selfUs.get(prof.samples[i]!) ?? 0) + (prof.timeDeltas[i] ?? 0));
  }
  const totalUs = [...selfUs.values()].reduce((a, b) => a + b, 0) || 1;
  const fns = new Map<string, ProfileEntry>();
  const areas = new Map<string, number>();
  let idleUs = 0;
  for (const [id, us] of selfUs) {
    const n = byId.get(id)!;
    const { functionName, url, lineNumber } = n.callFrame;
    const name = functionName || '(anonymous)';
    if (name === '(idle)') idleUs += us;
    const where = url ? `${short(url)}:${lineNumber + 1}` : '';
    const key = `${name}@${where}`;
    const e = fns.get(key) ?? { name, where, selfMs: 0, percent: 0, callers: [] };
    e.selfMs += us / 1000;
    fns.set(key, e);
    const cm = callerUs.get(key) ?? new Map<string, number>();
    const c = callerOf(id);
    cm.set(c, (cm.get(c) ?? 0) + us);
    callerUs.set(key, cm);
    const a = area(url, name);
    areas.set(a, (areas.get(a) ?? 0) + us);
  }
  const functions = [...fns.values()].sort((a, b) => b.selfMs - a.selfMs).slice(0, top);
  for (const f of functions) {
    f.percent = (100 * f.selfMs * 1000) / totalUs;
    const cm = callerUs.get(`${f.name}@${f.where}`);
    if (cm && !['(idle)', '(program)', '(garbage collector)', '(root)'].includes(f.name))
      f.callers = [...cm.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 2)
        .map(([c, us]) => `${((100 * us) / totalUs).toFixed(1)} % ← ${c}`);
  }
  return {
    file,
    totalMs: totalUs / 1000,
    idlePercent: (100 * idleUs) / totalUs,
    functions,
    areas: [...areas.entries()]
      .map(([a, us]) => ({ area: a, selfMs: us / 1000, percent: (100 * us) / totalUs }))
      .sort((a, b) => b.selfMs - a.selfMs)
      .slice(0, top),
  };
}

export function formatProfile(s: ProfileSummary): string {
  const lines = [`CPU profile ${s.file}: ${(s.totalMs / 1000).toFixed(1)} s sampled, ${s.idlePercent.toFixed(1)} % idle`, '', 'self time by area:'];
  for (const a of s.areas) lines.push(`  ${a.percent.toFixed(1).padStart(5)} %  ${a.area}`);
  lines.push('', 'top functions by self time:');
  for (const f of s.functions) {
    lines.push(`  ${f.percent.toFixed(1).padStart(5)} %  ${f.name}  ${f.where}`);
    if (!f.where || /pkcs11js|sqlite3/.test(f.where)) for (const c of f.callers) lines.push(`            ${c}`);
  }
  return lines.join('\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url) && process.argv[2]) {
  console.log(formatProfile(summariseProfile(process.argv[2], Number(process.argv[3] ?? 30))));
}
