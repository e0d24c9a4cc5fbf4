#!/usr/bin/env node
/** kmsctl — operator CLI: principals, key listing, audit verification, token init, backup, BYOK. */
import { Command } from 'commander';
import { registerCommands } from '../cli/commands.js';

const program = new Command().name('kmsctl').description('kmsd operator CLI');
registerCommands(program);
await program.parseAsync();
