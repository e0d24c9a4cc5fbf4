import { createPublicKey } from 'node:crypto';
import type { Logger } from 'winston';
import type { Clock } from '../clock.js';
import type { Database } from '../store/database.js';
import { rsaPublicKeyObject, spkiPem } from '../token/public-key.js';
import type { RegionRegistry } from '../token/regions.js';
import { unwrapKeyPairTemplate } from '../token/templates.js';
import { newByokObjectId, REGIONAL_WRAPPING_BITS, WRAPPING_KEY_PREFIX } from './formats.js';

export interface RegionalWrappingKey {
  region: string;
  ckaId: Buffer;
  publicKeyPem: string;
  /** RSA part of the two-part format is exactly this long. */
  modulusBytes: number;
}

interface Row {
  cka_id: string;
  public_key_pem: string;
}

/**
 * The regional BYOK wrapping key (Thalassa `GetWrappingKey`): an RSA-4096 pair generated in
 * the region's token on first use (private half non-extractable, CKA_UNWRAP only) and kept.
 * SQLite's wrapping_keys row decides which pair is the region's: when two requests or daemons
 * race, the first INSERT wins and every loser destroys the pair it generated.
 */
export class WrappingKeys {
  /** One lookup/generation per region at a time in this process (RSA-4096 generation is slow). */
  private readonly pending = new Map<string, Promise<RegionalWrappingKey>>();
  private readonly known = new Map<string, RegionalWrappingKey>();

  constructor(
    private readonly db: Database,
    private readonly regions: RegionRegistry,
    private readonly clock: Clock,
    private readonly log: Logger,
  ) {}

  get(region: string): Promise<RegionalWrappingKey> {
    const known = this.known.get(region);
    if (known) return Promise.resolve(known);
    let p = this.pending.get(region);
    if (!p) {
      p = this.load(region).finally(() => this.pending.delete(region));
      this.pending.set(region, p);
    }
    return p;
  }

  private async load(region: string): Promise<RegionalWrappingKey> {
    const token = this.regions.require(region);
    const row = await this.db.get<Row>('SELECT cka_id, public_key_pem FROM wrapping_keys WHERE region = ?', [region]);
    if (row) {
      if (token.exists(Buffer.from(row.cka_id), 'private')) return this.remember(region, row);
      // The row outlived its token object (token re-initialised): a wrapping key that cannot
      // unwrap is useless, so it is replaced — callers fetch the public key before each import.
      this.log.warn('regional wrapping key missing from the token; generating a new one', { region, ckaId: row.cka_id });
      await this.db.transaction((tx) => tx.run('DELETE FROM wrapping_keys WHERE region = ? AND cka_id = ?', [region, row.cka_id]));
    }

    const ckaId = newByokObjectId(WRAPPING_KEY_PREFIX, region);
    const t = unwrapKeyPairTemplate(REGIONAL_WRAPPING_BITS, { ckaId: Buffer.from(ckaId), label: `kmsd-wrapping-key/${region}`, extractable: false });
    const pair = await token.generateKeyPairRaw(t.mechanism, t.publicTemplate, t.privateTemplate, Buffer.from(ckaId));
    let inserted = 0;
    try {
      const pem = spkiPem(rsaPublicKeyObject(token.readPublicKeyByHandle(pair.publicKey)));
      inserted = await this.db.transaction(async (tx) => {
        const r = await tx.run(
          'INSERT INTO wrapping_keys (region, cka_id, public_key_pem, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (region) DO NOTHING',
          [region, ckaId, pem, this.clock.nowIso()],
        );
        return r.changes;
      });
    } finally {
      if (!inserted) await token.destroy(Buffer.from(ckaId)).catch((e) => this.log.warn('could not destroy a losing wrapping key pair', { region, ckaId, error: String(e) }));
    }
    const winner = await this.db.get<Row>('SELECT cka_id, public_key_pem FROM wrapping_keys WHERE region = ?', [region]);
    if (!winner) throw new Error(`wrapping key row for region ${region} vanished`);
    if (inserted) this.log.info('generated the regional wrapping key', { region, ckaId });
    return this.remember(region, winner);
  }

  private remember(region: string, row: Row): RegionalWrappingKey {
    const bits = createPublicKey(row.public_key_pem).asymmetricKeyDetails?.modulusLength ?? REGIONAL_WRAPPING_BITS;
    const k: RegionalWrappingKey = {
      region,
      ckaId: Buffer.from(row.cka_id),
      publicKeyPem: row.public_key_pem,
      modulusBytes: Math.ceil(bits / 8),
    };
    this.known.set(region, k);
    return k;
  }
}
