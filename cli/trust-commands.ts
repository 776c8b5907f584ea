import { readFile } from 'node:fs/promises';
import { Command } from 'commander';
import { fingerprintOf, loadOrCreateIdentity } from '../src/link/index.js';
import { formatOf, withFormat, type OutputFormat } from './output-format.js';
import { openTrustStore, stateDirOf } from './state-dir.js';

async function fingerprintFrom(argument: string): Promise<string> {
  if (/^[0-9a-fA-F:]{64,95}$/.test(argument)) return argument;
  let pem: string;
  try {
    pem = await readFile(argument, 'utf8');
  } catch {
    throw new Error(`"${argument}" is neither a sha256 fingerprint nor a readable certificate file`);
  }
  return fingerprintOf(pem);
}

/** `haul identity` and `haul trust add|list|remove`: which peers this host will link with. */
export function addTrustCommands(program: Command, out: (line: string) => void): void {
  program
    .command('identity')
    .description("print this host's certificate fingerprint (created on first use), for the peer's `haul trust add`")
    .action(async (_options, command: Command) => {
      const identity = await loadOrCreateIdentity(stateDirOf(command));
      out(identity.fingerprint);
    });

  const trust = program.command('trust').description('the peers this host links with, pinned by certificate fingerprint');
  trust
    .command('add')
    .description('trust a peer: its fingerprint (from its `haul identity`) or its certificate file')
    .argument('<name>', 'a name for the peer')
    .argument('<fingerprint-or-certificate>')
    .action(async (name: string, what: string, _options, command: Command) => {
      const store = await openTrustStore(stateDirOf(command));
      const peer = await store.add(name, await fingerprintFrom(what));
      out(`trusted ${peer.name} ${peer.fingerprint}`);
    });
  withFormat(trust.command('list').description('list trusted peers'), 'one JSON array of {name, fingerprint, added}')
    .action(async (options: { format: OutputFormat; json?: boolean }, command: Command) => {
      const store = await openTrustStore(stateDirOf(command));
      const peers = store.list();
      if (formatOf(options) === 'json') return out(JSON.stringify(peers.map(({ name, fingerprint, added }) => ({ name, fingerprint, added }))));
      if (peers.length === 0) out('no trusted peers');
      for (const peer of peers) out(`${peer.name}\t${peer.fingerprint}\t${peer.added}`);
    });
  trust
    .command('remove')
    .description('stop trusting a peer, by name or fingerprint')
    .argument('<name-or-fingerprint>')
    .action(async (which: string, _options, command: Command) => {
      const store = await openTrustStore(stateDirOf(command));
      if (!(await store.remove(which))) throw new Error(`no trusted peer named ${which}`);
      out(`removed ${which}`);
    });
}
