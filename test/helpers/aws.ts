import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { Hash } from '@smithy/core/serde';
import { SignatureV4 } from '@smithy/signature-v4';
import { KMSClient } from '@aws-sdk/client-kms';
import { ROOT } from './paths.js';

export interface AwsTestCredential {
  accessKeyId: string;
  secretAccessKey: string;
}

/** A fresh access key as AWS makes them: 20 of [A-Z0-9] starting AKIA, and a 40-character secret. */
export function newAwsCredential(): AwsTestCredential {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
  const id = `AKIA${Array.from(randomBytes(16), (b) => alphabet[b % 36]).join('')}`;
  return { accessKeyId: id, secretAccessKey: randomBytes(30).toString('base64') };
}

/** The real AWS SDK v3 KMS client pointed at kmsd's AWS listener (no retries: errors surface at once). */
export function kmsClient(port: number, credentials: AwsTestCredential, region = 'us-east-1'): KMSClient {
  return new KMSClient({ endpoint: `http://127.0.0.1:${port}`, region, credentials, maxAttempts: 1 });
}

export const AWS_CLI = path.join(ROOT, 'tmp', 'awscli-venv', 'bin', 'aws');

/** Installs the AWS CLI into tmp/awscli-venv when missing (scripts/lib.sh ensure_awscli; pip from PyPI). */
export function ensureAwsCli(): void {
  if (existsSync(AWS_CLI)) return;
  const r = spawnSync('bash', ['-c', `source "${path.join(ROOT, 'scripts', 'lib.sh')}" && ensure_awscli`], { encoding: 'utf8', stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0 || !existsSync(AWS_CLI)) throw new Error('could not install the AWS CLI (pip install awscli)');
}

export interface CliResult {
  status: number;
  json: any;
  stdout: string;
  stderr: string;
}

/** `aws kms …` against kmsd (--endpoint-url), credentials from the environment as users set them. */
export function awsCli(port: number, cred: AwsTestCredential, args: string[], cwd: string): CliResult {
  const r = spawnSync(AWS_CLI, ['kms', ...args, '--endpoint-url', `http://127.0.0.1:${port}`, '--output', 'json'], {
    cwd,
    encoding: 'utf8',
    env: {
      PATH: process.env.PATH,
      HOME: cwd,
      AWS_ACCESS_KEY_ID: cred.accessKeyId,
      AWS_SECRET_ACCESS_KEY: cred.secretAccessKey,
      AWS_DEFAULT_REGION: 'us-east-1',
      AWS_CONFIG_FILE: path.join(cwd, 'no-aws-config'),
      AWS_SHARED_CREDENTIALS_FILE: path.join(cwd, 'no-aws-credentials'),
      AWS_MAX_ATTEMPTS: '1',
    },
  });
  let json: unknown;
  try {
    json = r.stdout.trim() ? JSON.parse(r.stdout) : undefined;
  } catch {
    json = undefined;
  }
  return { status: r.status ?? -1, json, stdout: r.stdout, stderr: r.stderr };
}

export interface RawReply {
  status: number;
  body: any;
  headers: http.IncomingHttpHeaders;
}

/** One awsJson1_1 request signed by @smithy/signature-v4 for service kms, for protocol-level checks. */
export async function rawAwsCall(
  port: number,
  target: string,
  body: unknown,
  o: { credential: AwsTestCredential; region?: string; service?: string; signingDate?: Date; method?: string },
): Promise<RawReply> {
  const payload = JSON.stringify(body);
  const headers: Record<string, string> = {
    host: `127.0.0.1:${port}`,
    'content-type': 'application/x-amz-json-1.1',
    'x-amz-target': target,
  };
  const signer = new SignatureV4({
    service: o.service ?? 'kms',
    region: o.region ?? 'us-east-1',
    credentials: o.credential,
    sha256: Hash.bind(null, 'sha256'),
  });
  const signed = await signer.sign(
    { method: o.method ?? 'POST', protocol: 'http:', hostname: '127.0.0.1', port, path: '/', query: {}, headers, body: payload },
    { signingDate: o.signingDate },
  );
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: '/', method: o.method ?? 'POST', headers: { ...signed.headers, 'content-length': String(Buffer.byteLength(payload)) }, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode!, body: text ? JSON.parse(text) : undefined, headers: res.headers });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/** Runs openssl; returns its exit status and output (assertions decide what a failure means). */
export function openssl(args: string[], cwd: string, input?: Buffer): { status: number; stdout: Buffer; stderr: string } {
  const r = spawnSync('openssl', args, { cwd, input });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr.toString() };
}

/** Writes bytes to a fresh file in `dir` and returns its path. */
export function writeTemp(dir: string, name: string, data: Buffer | string): string {
  const file = path.join(dir, `${name}-${randomBytes(3).toString('hex')}`);
  writeFileSync(file, data);
  return file;
}
