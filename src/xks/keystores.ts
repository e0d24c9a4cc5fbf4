import { ConfigError, readSecret } from '../config/load.js';
import type { XksConfig } from '../config/schema.js';
import type { Scope } from '../keys/key-service.js';
import { SigV4Verifier } from './sigv4.js';

/** One configured external key store: where its keys live and who may sign for it. */
export interface Keystore {
  prefix: string;
  organisation: string;
  region: string;
  scope: Scope;
  verifier: SigV4Verifier;
}

/**
 * Builds the keystores from the validated `xks` block, reading each secret access key from
 * its env variable or file. Duplicate prefixes or access key ids would make a request's
 * keystore or secret ambiguous (spec, Appendix A), so they stop the daemon at start.
 */
export function loadKeystores(config: XksConfig): Map<string, Keystore> {
  const out = new Map<string, Keystore>();
  config.keystores.forEach((ks, i) => {
    const where = `xks.keystores[${i}]`;
    if (out.has(ks.uriPrefix)) throw new ConfigError(`${where}.uriPrefix: duplicate prefix "${ks.uriPrefix}"`);
    const seen = new Set<string>();
    const credentials = ks.credentials.map((c, j) => {
      if (seen.has(c.accessKeyId)) throw new ConfigError(`${where}.credentials[${j}].accessKeyId: duplicate ${c.accessKeyId}`);
      seen.add(c.accessKeyId);
      const secretAccessKey = readSecret(c.secretAccessKeyEnv, c.secretAccessKeyFile, `${where}.credentials[${j}] secret access key`);
      return { accessKeyId: c.accessKeyId, secretAccessKey };
    });
    out.set(ks.uriPrefix, {
      prefix: ks.uriPrefix,
      organisation: ks.organisation,
      region: ks.region,
      scope: { organisation: ks.organisation, region: ks.region, project: ks.project ?? '' },
      verifier: new SigV4Verifier(credentials, ks.sigv4Region),
    });
  });
  return out;
}
