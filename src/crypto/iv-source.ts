import { randomFillSync } from 'node:crypto';

/**
 * Fresh 96-bit GCM IVs from the CSPRNG, drawn 4 KiB at a time so the hot path does not pay
 * a syscall per request. Every IV is random (not a counter), so processes sharing a key
 * never coordinate.
 */
export class IvSource {
  private pool = Buffer.alloc(0);
  private offset = 0;

  next(): Buffer {
    if (this.offset + 12 > this.pool.length) {
      this.pool = randomFillSync(Buffer.allocUnsafe(4092));
      this.offset = 0;
    }
    const iv = this.pool.subarray(this.offset, this.offset + 12);
    this.offset += 12;
    return iv;
  }
}
