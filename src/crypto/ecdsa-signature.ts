/**
 * ECDSA signature encodings. The token produces raw r‖s (PKCS#11 CKM_ECDSA); OpenSSL and
 * node:crypto verify the DER SEQUENCE { INTEGER r, INTEGER s }. node:crypto has no public
 * converter for signatures, so this one small, well-tested pair of functions does it.
 */
function derInteger(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  let v = b.subarray(i);
  if (v[0]! & 0x80) v = Buffer.concat([Buffer.from([0]), v]);
  return Buffer.concat([Buffer.from([0x02]), derLength(v.length), v]);
}

function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  if (n < 0x100) return Buffer.from([0x81, n]);
  return Buffer.from([0x82, n >> 8, n & 0xff]);
}

export function rawToDer(raw: Buffer): Buffer {
  const half = raw.length / 2;
  const body = Buffer.concat([derInteger(raw.subarray(0, half)), derInteger(raw.subarray(half))]);
  return Buffer.concat([Buffer.from([0x30]), derLength(body.length), body]);
}

/** DER → raw r‖s with each half `size` bytes; undefined if it is not a well-formed signature. */
export function derToRaw(der: Buffer, size: number): Buffer | undefined {
  let off = 0;
  const readLen = (): number | undefined => {
    const first = der[off++];
    if (first === undefined) return undefined;
    if (first < 0x80) return first;
    const n = first & 0x7f;
    if (n < 1 || n > 2 || off + n > der.length) return undefined;
    const len = der.readUIntBE(off, n);
    off += n;
    return len;
  };
  if (der[off++] !== 0x30) return undefined;
  const seqLen = readLen();
  if (seqLen === undefined || off + seqLen !== der.length) return undefined;
  const out = Buffer.alloc(size * 2);
  for (let i = 0; i < 2; i++) {
    if (der[off++] !== 0x02) return undefined;
    const len = readLen();
    if (len === undefined || len < 1 || off + len > der.length) return undefined;
    let v = der.subarray(off, off + len);
    off += len;
    while (v.length > 1 && v[0] === 0) v = v.subarray(1);
    if (v.length > size) return undefined;
    v.copy(out, i * size + (size - v.length));
  }
  return off === der.length ? out : undefined;
}
