import type { KeyType } from './key-types.js';

export type KeyStatus = 'active' | 'disabled' | 'pending_deletion';
export type VersionStatus = 'enabled' | 'disabled';

export interface KeyVersion {
  version: number;
  /** CKA_ID of the version's token object(s), as stored (UTF-8 text). */
  ckaId: string;
  status: VersionStatus;
  origin: 'generated' | 'imported';
  createdAt: string;
}

/** A key as kmsd knows it: metadata from SQLite, material only in the token. */
export interface KeyRecord {
  identity: string;
  organisation: string;
  region: string;
  project: string;
  name: string;
  slug: string;
  description: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  keyType: KeyType;
  status: KeyStatus;
  statusBeforeDeletion: KeyStatus | null;
  exportAllowed: boolean;
  imported: boolean;
  allowRotation: boolean;
  isDefault: boolean;
  rotationEnabled: boolean;
  rotationPeriodDays: number | null;
  lastRotationAt: string | null;
  nextRotationAt: string | null;
  manualRotations: number;
  latestVersion: number;
  minDecryptionVersion: number;
  deletionAt: string | null;
  objectVersion: number;
  createdAt: string;
  updatedAt: string;
  versions: KeyVersion[];
}

/** `slug` rule of the contract: lower-case, runs outside [a-z0-9] → '-', trimmed. */
export function slugify(name: string): string {
  return name
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
}

export function findVersion(key: KeyRecord, version: number): KeyVersion | undefined {
  // versions are kept sorted and contiguous from 1, so this is an index, not a search.
  const v = key.versions[version - 1];
  return v && v.version === version ? v : key.versions.find((x) => x.version === version);
}

export function rotationStatus(key: KeyRecord): 'enabled' | 'disabled' | 'suspended' {
  if (!key.rotationEnabled) return 'disabled';
  return key.status === 'active' ? 'enabled' : 'suspended';
}

export const SCOPE_SEPARATOR = '\u0000';
export function scopeKey(organisation: string, region: string, project: string, slug: string): string {
  return [organisation, region, project, slug].join(SCOPE_SEPARATOR);
}
