import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { Hash } from '@smithy/core/serde';
import { SignatureV4 } from '@smithy/signature-v4';

/** The CN AWS KMS presents for mTLS in us-east-1 (spec, "Authentication"). */
export const KMS_CLIENT_CN = 'cks.kms.us-east-1.amazonaws.com';

export interface XksCredential {
  accessKeyId: string;
  secretAccessKey: string;
}

/** A fresh credential as the spec describes it: 20-30 of A-Z2-7, and a base64 32-byte secret. */
export function newCredential(): XksCredential {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const id = Array.from(randomBytes(26), (b) => alphabet[b % 32]).join('');
  return { accessKeyId: id, secretAccessKey: randomBytes(32).toString('base64') };
}

export interface TestPki {
  dir: string;
  caCert: string;
  serverCert: string;
  serverKey: string;
  /** Client certificates chained to the CA: the right CN, and a wrong one. */
  client: { cert: string; key: string };
  wrongCn: { cert: string; key: string };
  /** Right CN, but issued by another CA. */
  otherCa: { cert: string; key: string };
}

function openssl(args: string[], cwd: string): void {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
}

/** A throwaway PKI made with the openssl CLI: CA, server cert for localhost, client certs. */
export function makePki(dir: string): TestPki {
  mkdirSync(dir, { recursive: true });
  const ca = (name: string) => {
    openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.pem`], dir);
  };
  const leaf = (name: string, cn: string, issuer: string, ext: string) => {
    openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${cn}`, '-keyout', `${name}.key`, '-out', `${name}.csr`], dir);
    writeFileSync(path.join(dir, `${name}.ext`), ext);
    openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${issuer}.pem`, '-CAkey', `${issuer}.key`, '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.pem`], dir);
  };
  ca('test-ca');
  ca('other-ca');
  leaf('server', 'localhost', 'test-ca', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  leaf('client', KMS_CLIENT_CN, 'test-ca', 'extendedKeyUsage=clientAuth\n');
  leaf('wrong-cn', 'cks.kms.evil.example.com', 'test-ca', 'extendedKeyUsage=clientAuth\n');
  leaf('other-ca-client', KMS_CLIENT_CN, 'other-ca', 'extendedKeyUsage=clientAuth\n');
  const p = (f: string) => path.join(dir, f);
  return {
    dir,
    caCert: p('test-ca.pem'),
    serverCert: p('server.pem'),
    serverKey: p('server.key'),
    client: { cert: p('client.pem'), key: p('client.key') },
    wrongCn: { cert: p('wrong-cn.pem'), key: p('wrong-cn.key') },
    otherCa: { cert: p('other-ca-client.pem'), key: p('other-ca-client.key') },
  };
}

export interface XksTarget {
  port: number;
  /** undefined: plain HTTP. */
  tls?: { ca: string; cert?: string; key?: string };
}

export interface XksCallOptions {
  method?: string;
  credential?: XksCredential;
  region?: string;
  service?: string;
  signingDate?: Date;
  /** Send these bytes instead of the signed body (tampering). */
  sendBody?: string;
  /** Extra headers, signed along. */
  headers?: Record<string, string>;
  /** Drop the Authorization header. */
  unsigned?: boolean;
  /** Rewrite the Authorization header before sending. */
  authorization?: (signed: string) => string;
}

export interface XksReply {
  status: number;
  body: any;
  headers: http.IncomingHttpHeaders;
}

/** One XKS request signed by @smithy/signature-v4 (the AWS SDK's signer), sent over node:https. */
export async function xksCall(target: XksTarget, p: string, body: unknown, o: XksCallOptions = {}): Promise<XksReply> {
  const payload = typeof body === 'string' ? body : JSON.stringify(body);
  const host = `localhost:${target.port}`;
  const headers: Record<string, string> = { host, 'content-type': 'application/json', ...o.headers };
  if (o.credential && !o.unsigned) {
    const signer = new SignatureV4({
      service: o.service ?? 'kms-xks-proxy',
      region: o.region ?? 'us-east-1',
      credentials: o.credential,
      sha256: Hash.bind(null, 'sha256'),
      applyChecksum: false,
    });
    const signed = await signer.sign(
      { method: o.method ?? 'POST', protocol: 'https:', hostname: 'localhost', port: target.port, path: p, query: {}, headers, body: payload },
      { signingDate: o.signingDate },
    );
    Object.assign(headers, signed.headers);
    if (o.authorization) headers.authorization = o.authorization(headers.authorization!);
  }
  const sent = o.sendBody ?? payload;
  const opts: https.RequestOptions = {
    host: '127.0.0.1',
    servername: 'localhost',
    port: target.port,
    path: p,
    method: o.method ?? 'POST',
    headers: { ...headers, 'content-length': String(Buffer.byteLength(sent)) },
    agent: false,
  };
  if (target.tls) {
    opts.ca = readFileSync(target.tls.ca);
    if (target.tls.cert) opts.cert = readFileSync(target.tls.cert);
    if (target.tls.key) opts.key = readFileSync(target.tls.key);
  }
  return new Promise((resolve, reject) => {
    const req = (target.tls ? https : http).request(opts, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown = text;
        if ((res.headers['content-type'] ?? '').includes('json') && text) parsed = JSON.parse(text);
        resolve({ status: res.statusCode!, body: parsed, headers: res.headers });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(sent);
  });
}

/**
 * The same request signed and sent by curl's own SigV4 implementation (`--aws-sigv4`), an
 * independent signer, exactly as the spec's Appendix D shows.
 */
export function curlCall(
  target: XksTarget,
  p: string,
  body: unknown,
  credential: XksCredential,
  o: { region?: string; tmpDir: string },
): XksReply {
  const file = path.join(o.tmpDir, `curl-body-${randomBytes(4).toString('hex')}.json`);
  writeFileSync(file, JSON.stringify(body));
  const scheme = target.tls ? 'https' : 'http';
  const args = [
    '-sS',
    '--aws-sigv4',
    `aws:amz:${o.region ?? 'us-east-1'}:kms-xks-proxy`,
    '--user',
    `${credential.accessKeyId}:${credential.secretAccessKey}`,
    '-X',
    'POST',
    '-H',
    'Content-Type:application/json',
    '--data',
    `@${file}`,
    '-w',
    '\n%{http_code}',
    '--resolve',
    `localhost:${target.port}:127.0.0.1`,
  ];
  if (target.tls) {
    args.push('--cacert', target.tls.ca);
    if (target.tls.cert) args.push('--cert', target.tls.cert, '--key', target.tls.key!);
  }
  args.push(`${scheme}://localhost:${target.port}${p}`);
  const r = spawnSync('curl', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`curl failed (${r.status}): ${r.stderr}`);
  const nl = r.stdout.lastIndexOf('\n');
  const text = r.stdout.slice(0, nl);
  return { status: Number(r.stdout.slice(nl + 1)), body: text ? JSON.parse(text) : undefined, headers: {} };
}

/** requestMetadata as AWS KMS sends it, with a fresh kmsRequestId. */
export function requestMetadata(kmsOperation: string, extra: Record<string, string> = {}) {
  return {
    awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice',
    kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab',
    kmsOperation,
    kmsRequestId: `req-${randomBytes(8).toString('hex')}`,
    ...extra,
  };
}
