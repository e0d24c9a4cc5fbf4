import { z } from 'zod';

/** The operator config of ../shared/API.md ("Operator contract"); keys are fixed by the contract. */
const listen = z.strictObject({
  host: z.string().min(1).default('127.0.0.1'),
  port: z.number().int().min(0).max(65535).default(8200),
  tls: z.strictObject({ certFile: z.string().min(1), keyFile: z.string().min(1) }).optional(),
});

const secretSource = <K extends string, F extends string>(envKey: K, fileKey: F) =>
  ({ [envKey]: z.string().min(1).optional(), [fileKey]: z.string().min(1).optional() }) as Record<
    K | F,
    z.ZodOptional<z.ZodString>
  >;

const region = z
  .strictObject({
    name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'region name: lower-case letters, digits and -'),
    pkcs11Module: z.string().min(1),
    tokenLabel: z.string().min(1).max(32),
    ...secretSource('pinEnv', 'pinFile'),
  })
  .refine((r) => Boolean(r.pinEnv) !== Boolean(r.pinFile), {
    message: 'exactly one of pinEnv or pinFile is required (never the PIN itself)',
    path: ['pinEnv'],
  });

const roles = z.enum(['admin', 'key-admin', 'crypto-user', 'auditor']);

/** Principal names and organisation identities go into every audit record: bounded, printable. */
const identifier = z.string().regex(/^[\x21-\x7e]{1,128}$/, '1-128 printable characters without spaces');

const principal = z.strictObject({
  name: identifier,
  tokenSha256: z.string().regex(/^[0-9a-fA-F]{64}$/, 'tokenSha256 must be 64 hex characters'),
  organisations: z.array(identifier).min(1).max(256),
  roles: z.array(roles).min(1),
});

const xksCredential = z
  .strictObject({
    accessKeyId: z.string().regex(/^[A-Z2-7]{20,30}$/, 'accessKeyId: 20-30 characters of A-Z and 2-7'),
    ...secretSource('secretAccessKeyEnv', 'secretAccessKeyFile'),
  })
  .refine((c) => Boolean(c.secretAccessKeyEnv) !== Boolean(c.secretAccessKeyFile), {
    message: 'exactly one of secretAccessKeyEnv or secretAccessKeyFile is required',
    path: ['secretAccessKeyEnv'],
  });

const xks = z.strictObject({
  listen: z.strictObject({
    host: z.string().min(1).default('127.0.0.1'),
    port: z.number().int().min(0).max(65535).default(8443),
  }),
  tls: z
    .strictObject({
      certFile: z.string().min(1),
      keyFile: z.string().min(1),
      clientCaFile: z.string().min(1).optional(),
      clientCommonName: z.string().min(1).optional(),
    })
    .optional(),
  keystores: z
    .array(
      z.strictObject({
        uriPrefix: z
          .string()
          .regex(/^[A-Za-z0-9._~\-/]{0,64}$/, 'uriPrefix: up to 64 characters of [A-Za-z0-9._~-/]')
          .transform((p) => p.replace(/^\/+|\/+$/g, '')),
        organisation: z.string().min(1),
        region: z.string().min(1),
        project: z.string().min(1).optional(),
        sigv4Region: z.string().min(1),
        credentials: z.array(xksCredential).min(1).max(2),
      }),
    )
    .min(1),
});

const awsCredential = z
  .strictObject({
    accessKeyId: z.string().regex(/^[A-Z0-9]{16,128}$/, 'accessKeyId: 16-128 characters of A-Z and 0-9'),
    ...secretSource('secretAccessKeyEnv', 'secretAccessKeyFile'),
    /** A configured principal (config or kmsctl): its roles apply to this credential's requests. */
    principal: z.string().min(1),
    organisation: z.string().min(1),
    /** The kmsd region this credential's keys live in. */
    region: z.string().min(1),
    project: z.string().min(1).optional(),
  })
  .refine((c) => Boolean(c.secretAccessKeyEnv) !== Boolean(c.secretAccessKeyFile), {
    message: 'exactly one of secretAccessKeyEnv or secretAccessKeyFile is required',
    path: ['secretAccessKeyEnv'],
  });

/** (kmsd) The AWS KMS-compatible API listener (API.md "AWS KMS-compatible API"). */
const aws = z.strictObject({
  listen: z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: z.number().int().min(0).max(65535).default(4599),
    })
    .default({ host: '127.0.0.1', port: 4599 }),
  tls: z.strictObject({ certFile: z.string().min(1), keyFile: z.string().min(1) }).optional(),
  sigv4Region: z.string().regex(/^[a-z0-9-]{1,64}$/, 'sigv4Region: lower-case letters, digits and -').default('us-east-1'),
  accountId: z.string().regex(/^\d{12}$/, 'accountId: 12 digits').default('111122223333'),
  credentials: z.array(awsCredential).min(1),
});

export const configSchema = z
  .strictObject({
    listen: listen.default({ host: '127.0.0.1', port: 8200 }),
    dataDir: z.string().min(1).default('./data'),
    mongodbUri: z.string().regex(/^mongodb(\+srv)?:\/\//, 'mongodbUri must be a mongodb:// URI'),
    regions: z.array(region).min(1),
    organisations: z
      .array(z.strictObject({ identity: z.string().min(1).max(128), kmsEnabled: z.boolean().default(true) }))
      .default([]),
    principals: z.array(principal).default([]),
    rotation: z
      .strictObject({
        evaluationIntervalSeconds: z.number().positive().max(86400).default(3600),
        maxManualRotations: z.number().int().min(0).default(10),
      })
      .default({ evaluationIntervalSeconds: 3600, maxManualRotations: 10 }),
    limits: z
      .strictObject({
        maxBodyBytes: z.number().int().min(1024).max(64 * 1024 * 1024).default(65536),
        maxBatchItems: z.number().int().min(1).max(100000).default(1000),
        /** Unexpired, unused import tokens one organisation may hold (each is an RSA-3072 pair on a token). */
        maxOpenImportTokens: z.number().int().min(1).max(100000).default(50),
      })
      .default({ maxBodyBytes: 65536, maxBatchItems: 1000, maxOpenImportTokens: 50 }),
    export: z.strictObject({ allowPlaintext: z.boolean().default(false) }).default({ allowPlaintext: false }),
    testing: z.strictObject({ clockControl: z.boolean().default(false) }).default({ clockControl: false }),
    /** (kmsd) absent = SQLite in dataDir (one host); postgres = cluster mode. */
    store: z
      .strictObject({
        postgres: z
          .strictObject({
            uri: z.string().regex(/^postgres(ql)?:\/\//, 'store.postgres.uri must be a postgresql:// URI'),
            passwordEnv: z.string().min(1).optional(),
            passwordFile: z.string().min(1).optional(),
          })
          .refine((p) => !(p.passwordEnv && p.passwordFile), { message: 'give passwordEnv or passwordFile, not both', path: ['passwordEnv'] }),
      })
      .optional(),
    xks: xks.optional(),
    aws: aws.optional(),
    /** (kmsd) processes serving the API; 0 = one per CPU core. */
    workers: z.number().int().min(0).max(64).default(1),
    /** (kmsd) winston level. */
    logLevel: z.enum(['error', 'warn', 'info', 'debug']).default('info'),
  })
  .superRefine((c, ctx) => {
    const names = new Set<string>();
    c.regions.forEach((r, i) => {
      if (names.has(r.name)) ctx.addIssue({ code: 'custom', path: ['regions', i, 'name'], message: `duplicate region ${r.name}` });
      names.add(r.name);
    });
    c.xks?.keystores.forEach((k, i) => {
      if (!names.has(k.region))
        ctx.addIssue({ code: 'custom', path: ['xks', 'keystores', i, 'region'], message: `unknown region ${k.region}` });
    });
    c.aws?.credentials.forEach((k, i) => {
      if (!names.has(k.region))
        ctx.addIssue({ code: 'custom', path: ['aws', 'credentials', i, 'region'], message: `unknown region ${k.region}` });
    });
  });

export type Config = z.infer<typeof configSchema>;
export type RegionConfig = Config['regions'][number];
export type Role = z.infer<typeof roles>;
export type XksConfig = NonNullable<Config['xks']>;
export type AwsConfig = NonNullable<Config['aws']>;
