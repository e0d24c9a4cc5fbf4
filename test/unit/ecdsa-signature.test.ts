import { expect } from 'chai';
import fc from 'fast-check';
import { generateKeyPairSync, sign, verify } from 'node:crypto';
import { derToRaw, rawToDer } from '../../src/crypto/ecdsa-signature.js';

const SIZES = { 'P-256': 32, 'P-384': 48, 'P-521': 66 } as const;

describe('unit: ECDSA signature DER ⇄ raw r‖s', () => {
  for (const [curve, size] of Object.entries(SIZES))
    it(`${curve}: raw → DER → raw is the identity for any r, s (property)`, () => {
      fc.assert(
        fc.property(fc.uint8Array({ minLength: size * 2, maxLength: size * 2 }), (raw) => {
          const der = rawToDer(Buffer.from(raw));
          expect(der[0]).to.equal(0x30);
          expect(Buffer.compare(derToRaw(der, size)!, Buffer.from(raw))).to.equal(0);
        }),
        { numRuns: 500 },
      );
    });

  it('handles the edge values: zero, leading zero bytes, high bit set (0x00 pad), all 0xff', () => {
    for (const size of [32, 48, 66]) {
      for (const fill of [0x00, 0x01, 0x7f, 0x80, 0xff]) {
        const raw = Buffer.alloc(size * 2, fill);
        expect(derToRaw(rawToDer(raw), size)!.equals(raw), `${size} ${fill}`).to.equal(true);
      }
      const mixed = Buffer.concat([Buffer.alloc(size - 1), Buffer.from([0x80]), Buffer.alloc(size, 0xff)]);
      const der = rawToDer(mixed);
      expect(der.subarray(2, 5).toString('hex'), 'r = INTEGER 0x80 needs a 0x00 pad').to.equal('020200');
      expect(derToRaw(der, size)!.equals(mixed)).to.equal(true);
    }
  });

  for (const [curve, size] of Object.entries(SIZES))
    it(`${curve}: agrees with node:crypto (ieee-p1363 ⇄ der) and node verifies the converted signature`, () => {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: curve });
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 64 }), (msg) => {
          const raw = sign('sha256', msg, { key: privateKey, dsaEncoding: 'ieee-p1363' });
          expect(raw.length).to.equal(size * 2);
          const der = rawToDer(raw);
          expect(verify('sha256', msg, { key: publicKey, dsaEncoding: 'der' }, der)).to.equal(true);
          const nodeDer = sign('sha256', msg, { key: privateKey, dsaEncoding: 'der' });
          const back = derToRaw(nodeDer, size)!;
          expect(verify('sha256', msg, { key: publicKey, dsaEncoding: 'ieee-p1363' }, back)).to.equal(true);
          // DER is canonical: converting node's DER back and forth gives node's DER
          expect(rawToDer(back).equals(nodeDer)).to.equal(true);
        }),
        { numRuns: 50 },
      );
    });

  it('derToRaw returns undefined (never throws) for malformed input (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 150 }), fc.constantFrom(32, 48, 66), (bytes, size) => {
        const out = derToRaw(Buffer.from(bytes), size);
        if (out !== undefined) expect(out.length).to.equal(size * 2);
      }),
      { numRuns: 3000 },
    );
    const good = rawToDer(Buffer.alloc(64, 0x11));
    const cases = [
      Buffer.alloc(0),
      Buffer.from([0x30]),
      Buffer.from([0x31, ...good.subarray(1)]),
      good.subarray(0, good.length - 1),
      Buffer.concat([good, Buffer.from([0])]),
      Buffer.from([0x30, 0x06, 0x02, 0x01, 0x01, 0x03, 0x01, 0x01]),
      Buffer.from([0x30, 0x04, 0x02, 0x00, 0x02, 0x00]),
      rawToDer(Buffer.alloc(96, 0x11)),
    ];
    for (const c of cases) expect(derToRaw(c, 32), c.toString('hex')).to.equal(undefined);
  });
});
