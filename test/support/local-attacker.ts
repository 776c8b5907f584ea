import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, encodeHeader } from '../../src/criu/page-server/protocol.js';

/** The uid the attacker runs as: any local user who is not root. */
export const ATTACKER_UID = 65534;

export interface AttackReport {
  /** Loopback ports that began listening while the attacker watched. */
  readonly portsSeen: number[];
  /** Connections the attacker got through (and sent its commands on). */
  readonly connected: number;
  /** Connections refused or reset before it could send anything. */
  readonly refused: number;
}

// Plain JavaScript run by node as another user: watches the kernel's TCP tables (readable by
// everyone) for loopback listeners that were not there when it started, connects to each as fast
// as it can and sends CRIU page-server commands: CLOSE (CRIU then counts a lazy migration done and
// ends the source) and a GET (a page server would answer it with a container's memory).
const ATTACKER = String.raw`
const { readFileSync } = require('node:fs');
const { connect } = require('node:net');
const payload = Buffer.from(process.argv[2], 'hex');
const listeners = () => {
  const ports = new Set();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try { text = readFileSync(table, 'utf8'); } catch { continue; }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[3] !== '0A') continue;
      const [address, port] = f[1].split(':');
      if (address === '0100007F' || address === '00000000' || /0{24}01000000$/.test(address) || /^0+$/.test(address)) ports.add(parseInt(port, 16));
    }
  }
  return ports;
};
const initial = listeners();
const seen = new Set();
const pending = new Set();
let connected = 0, refused = 0;
// every listener that was not there at the start, again and again while it listens (one attempt
// at a time per port), so that a listener that closes and comes back on the same port is raced too
const attack = (port) => {
  pending.add(port);
  const socket = connect(port, '127.0.0.1');
  socket.on('connect', () => { connected++; socket.write(payload); });
  socket.on('error', () => { if (!socket.bytesWritten) refused++; });
  socket.on('data', () => {});
  socket.on('close', () => pending.delete(port));
  setTimeout(() => socket.destroy(), 500).unref();
};
const watch = () => {
  for (const port of listeners()) {
    if (initial.has(port) || pending.has(port)) continue;
    seen.add(port);
    attack(port);
  }
  setImmediate(watch);
};
process.on('SIGTERM', () => {
  process.stdout.write(JSON.stringify({ portsSeen: [...seen], connected, refused }) + '\n');
  process.exit(0);
});
process.stdout.write('watching\n');
watch();
`;

/**
 * A local user (uid 65534) racing haul to every loopback listener that appears while it runs.
 * `stop()` ends it and says what it saw and did.
 */
export class LocalAttacker {
  private constructor(
    private readonly child: ChildProcess,
    private readonly dir: string,
  ) {}

  static async start(): Promise<LocalAttacker> {
    const dir = mkdtempSync(join(tmpdir(), 'haul-attacker-'));
    chmodSync(dir, 0o755);
    const script = join(dir, 'attacker.cjs');
    writeFileSync(script, ATTACKER, { mode: 0o644 });
    const commands = Buffer.concat([
      encodeHeader({ cmd: Command.CLOSE, nrPages: 0n, vaddr: 0n, dstId: 0n }, 'criu-4.1'),
      encodeHeader({ cmd: Command.GET, nrPages: 1n, vaddr: 0x400000n, dstId: 0n }, 'criu-4.1'),
    ]);
    // favoured by the scheduler (set as root, before it drops to the user): CRIU's lazy page server
    // listens only from its status-ready action until haul's client is accepted, a few ms, and an
    // attacker on a busy 2-core machine could sleep through it; one with cores to spin on would not
    const child = spawn('nice', ['-n', '-10', 'setpriv', `--reuid=${ATTACKER_UID}`, `--regid=${ATTACKER_UID}`, '--clear-groups', process.execPath, script, commands.toString('hex')], {
      stdio: ['ignore', 'pipe', 'inherit'],
      cwd: dir,
    });
    await new Promise<void>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`the attacker exited (${code}) before it watched`)));
      child.stdout!.once('data', () => resolve());
    });
    child.removeAllListeners('exit');
    return new LocalAttacker(child, dir);
  }

  async stop(): Promise<AttackReport> {
    let output = '';
    this.child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.kill('SIGTERM');
    await exited;
    rmSync(this.dir, { recursive: true, force: true });
    return JSON.parse(output.trim().split('\n').pop()!) as AttackReport;
  }
}
