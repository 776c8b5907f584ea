/**
 * The link's throughput on loopback: 1 GiB over one channel, plain and with TLS, against the
 * ceilings it is built on, in the same run: a raw TCP copy of the same bytes, the bare ws library
 * (plain WebSocket messages: the anchor of the plain link) and a bare Node TLS socket (the anchor
 * of the TLS link). The receiving side runs in a child process, as it would on another host, so
 * each side has its own event loop. Every copy runs `--repetitions` times, interleaved. Prints one
 * JSON document.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import WebSocket, { WebSocketServer } from 'ws';
import { dialLink, type ApplicationHandshake, type EndpointOptions, loadOrCreateIdentity, LinkListener, TrustStore } from '../../src/link/index.js';
import { CRC_FREE_KINDS, ChannelKind, openChannel } from '../../proxy/index.js';
import { ratio, spread, type Spread } from './spread.js';

type Mode = 'raw' | 'raw-tls' | 'raw-ws' | 'plain' | 'plain-lazy' | 'tls';
const BLOCK = randomBytes(4 * 1024 * 1024);
const CHUNK = 1024 * 1024;
/**
 * The link alone: an application that says nothing in the handshake and takes any peer, with a
 * migration's channel kinds. 'plain' and 'tls' carry a pre-copy page stream (its data checked by
 * the end digest only, on a plain link too); 'plain-lazy' a lazy push, whose frames a plain link
 * guards with a CRC each, since CRIU takes those pages as they come.
 */
const application: ApplicationHandshake = { hello: Buffer.alloc(0), check: () => undefined, crcFreeKinds: CRC_FREE_KINDS };

async function security(mode: Mode, own: string, peer: string): Promise<Partial<EndpointOptions>> {
  if (mode !== 'tls') return { insecure: true };
  const identity = await loadOrCreateIdentity(own);
  const trust = await TrustStore.open(join(own, 'trust.json'));
  if (trust.list().length === 0) await trust.add('peer', (await loadOrCreateIdentity(peer)).fingerprint);
  return { identity, trust };
}

/** The child: listens, prints its port, counts what arrives, prints the count when the stream ends. */
async function receive(mode: Mode, own: string, peer: string): Promise<void> {
  let received = 0;
  const report = (): void => void process.stdout.write(`done ${received}\n`, () => process.exit(0));
  const count = (chunk: Buffer): void => void (received += chunk.length);
  const announce = (port: number): void => void process.stdout.write(`port ${port}\n`);
  if (mode === 'raw' || mode === 'raw-tls') {
    const onSocket = (socket: NodeJS.ReadableStream): void => void socket.on('data', count).on('end', report).on('error', report);
    const identity = await loadOrCreateIdentity(own);
    const server = mode === 'raw' ? createServer(onSocket) : createTlsServer({ key: identity.key, cert: identity.cert }, onSocket);
    server.listen(0, '127.0.0.1', () => announce((server.address() as { port: number }).port));
    return;
  }
  if (mode === 'raw-ws') {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 2 * CHUNK });
    wss.on('listening', () => announce((wss.address() as { port: number }).port));
    wss.on('connection', (ws) => ws.on('message', count).on('close', report));
    return;
  }
  const listener = await LinkListener.listen('127.0.0.1', 0, { ...(await security(mode, own, peer)), application });
  listener.once('session', (session) =>
    session.once('channel', (channel) =>
      channel.readable.on('data', (chunk: Buffer) => (received += chunk.length)).on('end', () => (report(), void listener.close())),
    ),
  );
  process.stdout.write(`port ${listener.port}\n`);
}

async function writeBytes(writable: Writable, total: number): Promise<void> {
  for (let sent = 0; sent < total; sent += CHUNK) {
    const offset = sent % BLOCK.length;
    if (!writable.write(BLOCK.subarray(offset, offset + CHUNK))) await new Promise((resolve) => writable.once('drain', resolve));
  }
  writable.end();
}

/** Sends `total` bytes to a receiver child; seconds from the first byte to the receiver's last. */
async function measure(mode: Mode, total: number, dirs: [string, string]): Promise<number> {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--receive', mode, '--own', dirs[1], '--peer', dirs[0]], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const port = Number(/^port (\d+)$/.exec(String((await lines.next()).value))?.[1]);
  const started = process.hrtime.bigint();
  if (mode === 'raw' || mode === 'raw-tls') {
    const socket = mode === 'raw' ? connect(port, '127.0.0.1') : tlsConnect({ port, host: '127.0.0.1', rejectUnauthorized: false });
    // the receiver exits once it has counted the last byte, and its end may reset this socket then;
    // a reset before that shows as a count short of the total
    socket.on('error', () => {});
    await new Promise((resolve) => socket.once(mode === 'raw' ? 'connect' : 'secureConnect', resolve));
    await writeBytes(socket, total);
  } else if (mode === 'raw-ws') {
    const ws = new WebSocket(`ws://127.0.0.1:${port}`, { generateMask: (mask: Buffer) => void mask.fill(0) });
    await new Promise((resolve) => ws.once('open', resolve));
    let inFlight = 0;
    for (let sent = 0; sent < total; sent += CHUNK) {
      while (inFlight >= 8 * CHUNK) await new Promise((resolve) => setImmediate(resolve));
      inFlight += CHUNK;
      ws.send(BLOCK.subarray(sent % BLOCK.length, (sent % BLOCK.length) + CHUNK), { binary: true }, () => (inFlight -= CHUNK));
    }
    ws.close();
  } else {
    const { session } = await dialLink(`${mode === 'tls' ? 'wss' : 'ws'}://127.0.0.1:${port}`, { ...(await security(mode, dirs[0], dirs[1])), application });
    const channel = mode === 'plain-lazy' ? openChannel(session, ChannelKind.LAZY_PUSH, 'lazy-push') : openChannel(session, ChannelKind.PAGES, 'pages');
    await writeBytes(channel.writable, total);
  }
  const done = String((await lines.next()).value);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await new Promise((resolve) => child.once('exit', resolve));
  if (done !== `done ${total}`) throw new Error(`${mode}: the receiver said "${done}" for ${total} bytes`);
  return seconds;
}

async function main(): Promise<void> {
  const options = new Command('link')
    .option('--mib <n>', 'bytes to send, in MiB', (v) => Number.parseInt(v, 10), 1024)
    .option('--repetitions <n>', 'copies of each kind', (v) => Number.parseInt(v, 10), 5)
    .option('--receive <mode>')
    .option('--own <dir>')
    .option('--peer <dir>')
    .parse()
    .opts<{ mib: number; repetitions: number; receive?: Mode; own?: string; peer?: string }>();
  if (options.receive) return receive(options.receive, options.own!, options.peer!);

  const total = options.mib * 1024 * 1024;
  const dirs: [string, string] = [mkdtempSync(join(tmpdir(), 'haul-bench-src-')), mkdtempSync(join(tmpdir(), 'haul-bench-dst-'))];
  try {
    const modes: Mode[] = ['raw', 'raw-ws', 'raw-tls', 'plain', 'plain-lazy', 'tls'];
    const seconds = new Map<Mode, number[]>(modes.map((mode) => [mode, []]));
    for (let repetition = 0; repetition < options.repetitions; repetition++) {
      for (const mode of modes) seconds.get(mode)!.push(await measure(mode, total, dirs));
    }
    const rate = (mode: Mode) => spread(seconds.get(mode)!.map((s) => total / s / 1e6));
    const [raw, rawWs, rawTls, plain, plainLazy, tls] = modes.map(rate) as [Spread, Spread, Spread, Spread, Spread, Spread];
    const result = {
      benchmark: 'link',
      description: 'one channel over the haul link on loopback beside raw TCP, bare ws messages and a bare Node TLS socket, same run, receiver in a second process; MB/s, median and spread',
      date: new Date().toISOString(),
      bytes: total,
      repetitions: options.repetitions,
      rawTcpMBps: raw,
      bareWebSocketMBps: rawWs,
      bareTlsMBps: rawTls,
      linkPlainMBps: plain,
      linkPlainLazyPushMBps: plainLazy,
      linkTlsMBps: tls,
      linkPlainVsBareWebSocket: ratio(plain.median, rawWs.median),
      linkTlsVsBareTls: ratio(tls.median, rawTls.median),
      linkPlainVsRawTcp: ratio(plain.median, raw.median),
      linkPlainLazyPushVsBareWebSocket: ratio(plainLazy.median, rawWs.median),
      targets: { linkPlainVsBareWebSocket: 0.8, linkTlsVsBareTls: 0.8 },
    };
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } finally {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`link benchmark failed: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
