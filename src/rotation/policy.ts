import { addDays } from '../clock.js';
import type { KeyRecord } from '../keys/model.js';

export const MIN_PERIOD_DAYS = 1;
export const MAX_PERIOD_DAYS = 3650;

/** nextRotationDate = lastRotationDate + period (Alibaba/Thalassa); null when rotation is off. */
export function nextRotationAt(k: Pick<KeyRecord, 'lastRotationAt' | 'createdAt'>, enabled: boolean, periodDays: number | null): string | null {
  if (!enabled || !periodDays) return null;
  return addDays(k.lastRotationAt ?? k.createdAt, periodDays);
}

/** Due means: rotation on, key active (else suspended) and the date reached. */
export function isDue(k: KeyRecord, nowIso: string): boolean {
  return k.rotationEnabled && k.status === 'active' && k.nextRotationAt !== null && k.nextRotationAt <= nowIso;
}

export function canRotate(k: KeyRecord): boolean {
  return !k.imported || k.allowRotation;
}
