import { rotationStatus, type KeyRecord } from '../keys/model.js';
import { versionStatus } from '../keys/version-policy.js';

/** The key resource exactly as the contract and the Thalassa Go client expect it. */
export function keyToWire(k: KeyRecord) {
  const out: Record<string, unknown> = {
    identity: k.identity,
    name: k.name,
    slug: k.slug,
    description: k.description,
    labels: k.labels,
    annotations: k.annotations,
    projectId: k.project,
    keyType: k.keyType,
    status: k.status,
    exportAllowed: k.exportAllowed,
    imported: k.imported,
    allowRotation: k.allowRotation,
    keyRotationEnabled: k.rotationEnabled,
    latestVersion: k.latestVersion,
    minDecryptionVersion: k.minDecryptionVersion,
    versions: k.versions.map((v) => ({ version: v.version, status: versionStatus(k, v), createdAt: v.createdAt })),
    createdAt: k.createdAt,
    updatedAt: k.updatedAt,
    objectVersion: k.objectVersion,
    organisation: { identity: k.organisation, name: k.organisation, slug: k.organisation, description: '', labels: {}, annotations: {} },
    region: k.region,
    rotationStatus: rotationStatus(k),
    lastRotationDate: k.lastRotationAt,
    nextRotationDate: k.rotationEnabled ? k.nextRotationAt : null,
    deletionDate: k.deletionAt,
  };
  // The Go client declares rotationPeriodInDays as an integer or absent: never null.
  if (k.rotationPeriodDays !== null) out.rotationPeriodInDays = k.rotationPeriodDays;
  return out;
}

/**
 * A JSON response body as sent on every path (Express, the fast path, XKS): one line of JSON
 * ending with a newline, so shell one-liners (`curl …; curl …`) do not run together.
 */
export function jsonText(body: unknown): string {
  return `${JSON.stringify(body)}\n`;
}
