import path from 'node:path';
import type { Command } from 'commander';
import pkcs11js from 'pkcs11js';
import { AuditLog } from '../audit/audit-log.js';
import { addPrincipal, PRINCIPALS_CHANGED } from '../auth/principals.js';
import { Clock } from '../clock.js';
import { ConfigError, configPathFromEnv, loadConfig, readSecret } from '../config/load.js';
import type { Role } from '../config/schema.js';
import { ChangeFeed } from '../store/change-feed.js';
import { copyStore } from '../store/copy.js';
import { openStore as openConfiguredStore } from '../store/open.js';
import { SqliteStore } from '../store/sqlite/sqlite-store.js';
import { registerByokCommand } from './byok.js';

const ROLES: Role[] = ['admin', 'key-admin', 'crypto-user', 'auditor'];

async function openStore(configFile: string | undefined) {
  const config = loadConfig(configPathFromEnv(configFile));
  const store = await openConfiguredStore(config);
  const feed = new ChangeFeed(store.changeSignal(), store.changes, async () => {});
  await feed.init();
  const close = async () => {
    feed.close();
    await store.close();
  };
  return { config, store, feed, close };
}

function fail(e: unknown): never {
  process.stderr.write(`kmsctl: ${e instanceof ConfigError ? e.message : (e as Error).message}\n`);
  process.exit(e instanceof ConfigError ? 2 : 1);
}

export function registerCommands(program: Command): void {
  const principal = program.command('principal').description('API principals (bearer tokens)');
  principal
    .command('add')
    .description('create a principal and print its token once (only its SHA-256 is stored)')
    .option('-c, --config <file>', 'kmsd config (default $KMSD_CONFIG)')
    .requiredOption('--name <name>', 'principal name')
    .requiredOption('--org <org...>', 'organisation identities')
    .requiredOption('--role <role...>', `roles: ${ROLES.join(', ')}`)
    .action(async (o: { config?: string; name: string; org: string[]; role: string[] }) => {
      try {
        const bad = o.role.filter((r) => !ROLES.includes(r as Role));
        if (bad.length) throw new Error(`unknown role ${bad.join(', ')}; roles are ${ROLES.join(', ')}`);
        const { store, feed, close } = await openStore(o.config);
        const token = await addPrincipal(store, { name: o.name, organisations: o.org, roles: o.role as Role[] });
        await feed.publish();
        await close();
        process.stdout.write(`${token}\n`);
        process.stderr.write(`principal ${o.name} created; the token above is shown only this once\n`);
      } catch (e) {
        fail(e);
      }
    });
  principal
    .command('list')
    .option('-c, --config <file>')
    .action(async (o: { config?: string }) => {
      try {
        const { config, store, close } = await openStore(o.config);
        const rows = await store.principals.list();
        for (const p of config.principals) process.stdout.write(`${p.name}\tconfig\t${p.organisations.join(',')}\t${p.roles.join(',')}\n`);
        for (const r of rows) process.stdout.write(`${r.name}\tstore\t${r.organisations.join(',')}\t${r.roles.join(',')}\n`);
        await close();
      } catch (e) {
        fail(e);
      }
    });
  principal
    .command('remove')
    .option('-c, --config <file>')
    .requiredOption('--name <name>')
    .action(async (o: { config?: string; name: string }) => {
      try {
        const { store, feed, close } = await openStore(o.config);
        const n = await store.transaction(async (tx) => {
          const removed = await tx.principals.remove(o.name);
          await tx.changes.record(PRINCIPALS_CHANGED);
          return removed;
        });
        await feed.publish();
        await close();
        if (!n) throw new Error(`no stored principal ${o.name}`);
      } catch (e) {
        fail(e);
      }
    });

  program
    .command('keys')
    .description('list keys recorded in the metadata store')
    .option('-c, --config <file>')
    .option('--org <org>', 'only this organisation')
    .option('--json', 'JSON output')
    .action(async (o: { config?: string; org?: string; json?: boolean }) => {
      try {
        const { store, close } = await openStore(o.config);
        const keys = (await store.keys.loadAll()).filter((k) => !o.org || k.organisation === o.org);
        if (o.json) process.stdout.write(`${JSON.stringify(keys, null, 2)}\n`);
        else
          for (const k of keys)
            process.stdout.write(
              `${k.identity}\t${k.organisation}\t${k.region}\t${k.project || '-'}\t${k.slug}\t${k.keyType}\t${k.status}\tv${k.latestVersion}\n`,
            );
        await close();
      } catch (e) {
        fail(e);
      }
    });

  program
    .command('migrate-store')
    .description('copy a single-host SQLite installation into an empty PostgreSQL store (cluster mode); token objects stay where they are')
    .requiredOption('--from-config <file>', 'config of the SQLite installation (no store.postgres)')
    .requiredOption('--to-config <file>', 'config naming the target store.postgres')
    .action(async (o: { fromConfig: string; toConfig: string }) => {
      try {
        const fromConfig = loadConfig(o.fromConfig);
        const toConfig = loadConfig(o.toConfig);
        if (fromConfig.store?.postgres) throw new Error('--from-config must be a SQLite installation (it has store.postgres)');
        if (!toConfig.store?.postgres) throw new Error('--to-config must name store.postgres');
        const from = await openConfiguredStore(fromConfig);
        const to = await openConfiguredStore(toConfig);
        try {
          const counts = await copyStore(from, to);
          const clock = new Clock();
          clock.setOffset(Number((await to.settings.get('clock_offset_ms')) ?? 0));
          const log = new AuditLog(to.audit, clock);
          await log.record({ action: 'kms.store.migrate', outcome: 'success', principal: 'kmsctl', detail: { from: 'sqlite', to: 'postgres', ...counts } });
          await log.close();
          const v = await log.verify();
          process.stdout.write(`${JSON.stringify({ ...counts, auditChain: v })}\n`);
          if (!v.valid) process.exit(1);
        } finally {
          await Promise.all([from.close(), to.close()]);
        }
      } catch (e) {
        fail(e);
      }
    });

  const audit = program.command('audit').description('audit trail');
  audit
    .command('verify')
    .description('recompute the hash chain; exit 1 if any record was edited, inserted or deleted')
    .option('-c, --config <file>')
    .action(async (o: { config?: string }) => {
      try {
        const { store, close } = await openStore(o.config);
        const v = await new AuditLog(store.audit, new Clock()).verify();
        await close();
        process.stdout.write(`${JSON.stringify(v)}\n`);
        if (!v.valid) process.exit(1);
      } catch (e) {
        fail(e);
      }
    });

  program
    .command('backup')
    .description('consistent online copy of the metadata database (no key material: that stays in the token)')
    .option('-c, --config <file>')
    .requiredOption('--out <file>', 'destination SQLite file (must not exist)')
    .action(async (o: { config?: string; out: string }) => {
      try {
        const { store, close } = await openStore(o.config);
        if (!(store instanceof SqliteStore)) throw new Error('backup copies the SQLite store; back up PostgreSQL with pg_dump or its replication');
        await store.backupTo(path.resolve(o.out));
        await close();
        process.stderr.write(`metadata backed up to ${o.out}\n`);
      } catch (e) {
        fail(e);
      }
    });

  program
    .command('token-init')
    .alias('token')
    .description('initialise a PKCS#11 token in a free slot and set its user PIN (C_InitToken + C_InitPIN)')
    .requiredOption('--module <path>', 'PKCS#11 library')
    .requiredOption('--label <label>', 'token label')
    .option('--pin-env <name>', 'env var with the user PIN', 'KMSD_PIN')
    .option('--so-pin-env <name>', 'env var with the SO PIN', 'KMSD_SO_PIN')
    .action((o: { module: string; label: string; pinEnv: string; soPinEnv: string }) => {
      try {
        const pin = readSecret(o.pinEnv, undefined, 'user PIN');
        const soPin = readSecret(o.soPinEnv, undefined, 'SO PIN');
        const p11 = new pkcs11js.PKCS11();
        p11.load(o.module);
        p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
        try {
          const slot = p11.C_GetSlotList(true).find((s) => !(p11.C_GetTokenInfo(s).flags & pkcs11js.CKF_TOKEN_INITIALIZED));
          if (!slot) throw new Error('no free (uninitialised) slot');
          p11.C_InitToken(slot, soPin, o.label);
          const fresh = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === o.label)!;
          const s = p11.C_OpenSession(fresh, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
          p11.C_Login(s, pkcs11js.CKU_SO, soPin);
          p11.C_InitPIN(s, pin);
          p11.C_Logout(s);
          p11.C_CloseSession(s);
          process.stderr.write(`token ${o.label} initialised\n`);
        } finally {
          p11.C_Finalize();
        }
      } catch (e) {
        fail(e);
      }
    });

  registerByokCommand(program);
}
