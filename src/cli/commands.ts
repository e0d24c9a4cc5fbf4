import path from 'node:path';
import type { Command } from 'commander';
import pkcs11js from 'pkcs11js';
import { AuditLog } from '../audit/audit-log.js';
import { addPrincipal, PRINCIPALS_CHANGED } from '../auth/principals.js';
import { Clock } from '../clock.js';
import { ConfigError, configPathFromEnv, loadConfig, readSecret } from '../config/load.js';
import type { Role } from '../config/schema.js';
import { ChangeFeed } from '../store/change-feed.js';
import { Database } from '../store/database.js';
import { KeysRepository } from '../store/keys-repo.js';
import { registerByokCommand } from './byok.js';

const ROLES: Role[] = ['admin', 'key-admin', 'crypto-user', 'auditor'];

async function openStore(configFile: string | undefined) {
  const config = loadConfig(configPathFromEnv(configFile));
  const db = await Database.open(config.dataDir);
  const repo = new KeysRepository(db);
  const feed = new ChangeFeed(path.join(config.dataDir, 'kmsd.generation'), repo, async () => {});
  await feed.init();
  return { config, db, repo, feed };
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
        const { db, repo, feed } = await openStore(o.config);
        const token = await addPrincipal(db, repo, { name: o.name, organisations: o.org, roles: o.role as Role[] });
        await feed.publish();
        await db.close();
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
        const { config, db } = await openStore(o.config);
        const rows = await db.all<Record<string, string>>('SELECT name, organisations, roles, created_at FROM principals ORDER BY name');
        for (const p of config.principals) process.stdout.write(`${p.name}\tconfig\t${p.organisations.join(',')}\t${p.roles.join(',')}\n`);
        for (const r of rows) process.stdout.write(`${r.name}\tstore\t${JSON.parse(r.organisations!).join(',')}\t${JSON.parse(r.roles!).join(',')}\n`);
        await db.close();
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
        const { db, repo, feed } = await openStore(o.config);
        const n = await db.transaction(async (tx) => {
          const r = await tx.run('DELETE FROM principals WHERE name = ?', [o.name]);
          await repo.changed(tx, PRINCIPALS_CHANGED);
          return r.changes;
        });
        await feed.publish();
        await db.close();
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
        const { db, repo } = await openStore(o.config);
        const keys = (await repo.loadAll()).filter((k) => !o.org || k.organisation === o.org);
        if (o.json) process.stdout.write(`${JSON.stringify(keys, null, 2)}\n`);
        else
          for (const k of keys)
            process.stdout.write(
              `${k.identity}\t${k.organisation}\t${k.region}\t${k.project || '-'}\t${k.slug}\t${k.keyType}\t${k.status}\tv${k.latestVersion}\n`,
            );
        await db.close();
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
        const { db } = await openStore(o.config);
        const v = await new AuditLog(db, new Clock()).verify();
        await db.close();
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
        const { db } = await openStore(o.config);
        await db.transaction((tx) => tx.run('SELECT 1')); // make sure no migration is half-applied
        await db.get('VACUUM INTO ?', [path.resolve(o.out)]);
        await db.close();
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
