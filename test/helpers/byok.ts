import { execFileSync } from 'node:child_process';
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { TMP_ROOT } from './paths.js';

/**
 * BYOK material made with the OpenSSL CLI — what a customer without kmsd's code would run —
 * so the formats are checked against an independent implementation, not against node:crypto.
 */
export class OpenSsl {
  readonly dir: string;
  private n = 0;

  constructor() {
    mkdirSync(TMP_ROOT, { recursive: true });
    this.dir = mkdtempSync(path.join(TMP_ROOT, 'openssl-'));
  }

  private file(data?: Buffer | string): string {
    const p = path.join(this.dir, `f${this.n++}`);
    if (data !== undefined) writeFileSync(p, data);
    return p;
  }

  private run(args: string[]): Buffer {
    return execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  }

  private toFile(args: (out: string) => string[]): Buffer {
    const out = this.file();
    this.run(args(out));
    return readFileSync(out);
  }

  /** `openssl rand`: key material and ephemeral keys. */
  rand(bytes: number): Buffer {
    return this.run(['rand', String(bytes)]);
  }

  oaepEncrypt(publicPem: string, data: Buffer, hash = 'sha1'): Buffer {
    const pub = this.file(publicPem);
    const input = this.file(data);
    return this.toFile((out) => [
      'pkeyutl', '-encrypt', '-pubin', '-inkey', pub, '-in', input, '-out', out,
      '-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', `rsa_oaep_md:${hash}`, '-pkeyopt', `rsa_mgf1_md:${hash}`,
    ]);
  }

  oaepDecrypt(privatePem: string, data: Buffer, hash = 'sha1'): Buffer {
    const priv = this.file(privatePem);
    const input = this.file(data);
    return this.toFile((out) => [
      'pkeyutl', '-decrypt', '-inkey', priv, '-in', input, '-out', out,
      '-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', `rsa_oaep_md:${hash}`, '-pkeyopt', `rsa_mgf1_md:${hash}`,
    ]);
  }

  /** RFC 5649 AES key wrap with padding, default IV A65959A6. */
  kwpWrap(kek: Buffer, data: Buffer): Buffer {
    const input = this.file(data);
    return this.toFile((out) => ['enc', '-id-aes256-wrap-pad', '-K', kek.toString('hex'), '-iv', 'A65959A6', '-in', input, '-out', out]);
  }

  kwpUnwrap(kek: Buffer, data: Buffer): Buffer {
    const input = this.file(data);
    return this.toFile((out) => ['enc', '-d', '-id-aes256-wrap-pad', '-K', kek.toString('hex'), '-iv', 'A65959A6', '-in', input, '-out', out]);
  }

  /** RSA-OAEP(ephemeral AES-256 key) ‖ AES-KWP(ephemeral key, material). */
  twoPart(publicPem: string, material: Buffer, hash = 'sha1'): Buffer {
    const ephemeral = this.rand(32);
    return Buffer.concat([this.oaepEncrypt(publicPem, ephemeral, hash), this.kwpWrap(ephemeral, material)]);
  }

  unwrapTwoPart(privatePem: string, blob: Buffer, modulusBytes: number): Buffer {
    const ephemeral = this.oaepDecrypt(privatePem, blob.subarray(0, modulusBytes));
    return this.kwpUnwrap(ephemeral, blob.subarray(modulusBytes));
  }

  /** A private key as PKCS#8 DER from `openssl genpkey`: rsa-2048, ec-P-256, ed25519 … */
  genpkey(kind: string): { der: Buffer; key: KeyObject; publicKey: KeyObject } {
    const [alg, param] = kind.split('-') as [string, string | undefined];
    const opts =
      alg === 'rsa'
        ? ['-algorithm', 'RSA', '-pkeyopt', `rsa_keygen_bits:${param}`]
        : alg === 'ec'
          ? ['-algorithm', 'EC', '-pkeyopt', `ec_paramgen_curve:${kind.slice(3)}`, '-pkeyopt', 'ec_param_enc:named_curve']
          : ['-algorithm', alg];
    const pem = this.file(this.toFile((out) => ['genpkey', ...opts, '-out', out]));
    // OpenSSL 3.0's `genpkey -outform DER` writes the traditional (PKCS#1 / SEC1) form; PKCS#8 needs pkcs8 -topk8.
    const der = this.toFile((out) => ['pkcs8', '-topk8', '-nocrypt', '-in', pem, '-outform', 'DER', '-out', out]);
    const key = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
    return { der, key, publicKey: createPublicKey(key) };
  }

  /** The same key kinds in OpenSSL 3.0's default DER form (PKCS#1 / SEC1, not PKCS#8): what kmsd must refuse. */
  traditionalDer(kind: string): Buffer {
    const [alg, param] = kind.split('-') as [string, string | undefined];
    const opts = alg === 'rsa' ? ['-algorithm', 'RSA', '-pkeyopt', `rsa_keygen_bits:${param}`] : ['-algorithm', 'EC', '-pkeyopt', `ec_paramgen_curve:${kind.slice(3)}`];
    return this.toFile((out) => ['genpkey', ...opts, '-outform', 'DER', '-out', out]);
  }

  /** An RSA pair for a caller of export: PEM private key and SPKI PEM public key. */
  rsaPair(bits: number): { privatePem: string; publicPem: string } {
    const priv = this.toFile((out) => ['genpkey', '-algorithm', 'RSA', '-pkeyopt', `rsa_keygen_bits:${bits}`, '-out', out]);
    const privFile = this.file(priv);
    const pub = this.toFile((out) => ['pkey', '-in', privFile, '-pubout', '-out', out]);
    return { privatePem: priv.toString(), publicPem: pub.toString() };
  }

  cleanup(): void {
    if (!process.env.KMSD_KEEP_TEST_DIRS) rmSync(this.dir, { recursive: true, force: true });
  }
}

export const b64 = (b: Buffer | string) => Buffer.from(b).toString('base64');
export const unb64 = (s: string) => Buffer.from(s, 'base64');

/** The base64 part of a `kms:v<N>:<base64>` string. */
export function versionedPayload(s: string): { version: number; data: Buffer } {
  const m = /^kms:v(\d+):(.+)$/.exec(s);
  if (!m) throw new Error(`not a versioned string: ${s}`);
  return { version: Number(m[1]), data: Buffer.from(m[2]!, 'base64') };
}
