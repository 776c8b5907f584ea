#!/usr/bin/env node
// What the CRIU hook runs to ask the agent: `node hook-client.js --socket PATH -- CRIU-ARGS...`.
// It prints the arguments to exec CRIU with, as shell words; exits REFUSED_EXIT when the agent says
// the call must fail. Kept apart from the haul command line, and importing nothing heavy, because it
// runs inside every move (once on each host), partly while the container is frozen.
import { REFUSED_EXIT, shellWords } from './criu-hook.js';
import { askAgent } from './hook-protocol.js';

const HOOK_TIMEOUT_MS: Record<string, number> = { dump: 30_000, restore: 6 * 60_000 };

async function main(argv: readonly string[]): Promise<void> {
  const separator = argv.indexOf('--');
  const socket = argv[argv.indexOf('--socket') + 1];
  if (argv.indexOf('--socket') < 0 || !socket || separator < 0) {
    process.stderr.write('usage: hook-client --socket PATH -- CRIU-ARGS...\n');
    process.exit(2);
  }
  const args = argv.slice(separator + 1);
  const call = args[0] === 'dump' || args[0] === 'restore' ? args[0] : undefined;
  if (!call) return void process.stdout.write(`${shellWords(args)}\n`);
  let reply;
  try {
    reply = await askAgent(socket, { call, args, pid: process.pid }, HOOK_TIMEOUT_MS[call]!);
  } catch (error) {
    // no agent: the move goes on natively
    process.stderr.write(`haul hook: ${error instanceof Error ? error.message : String(error)}; running criu ${call} unchanged\n`);
    return void process.stdout.write(`${shellWords(args)}\n`);
  }
  if ('error' in reply) {
    process.stderr.write(`${reply.error}\n`);
    process.exit(REFUSED_EXIT);
  }
  process.stdout.write(`${shellWords(reply.args)}\n`);
}

void main(process.argv.slice(2));
