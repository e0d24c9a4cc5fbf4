import type { Command } from 'commander';

/** `kmsctl byok` (issue 9): import a key from another PKCS#11 token through kmsd. */
export function registerByokCommand(_program: Command): void {}
