import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { acceptOne, acceptOneLocal } from '../../src/criu/page-server/connection.js';
import { canGuardLoopbackPorts, expectPeerProcess, guardLoopbackPort, guardNewLoopbackPort, identify, LoopbackGuardError, pickPrivilegedLoopbackPort, UnexpectedPeerError, type ProcessIdentity } from '../../src/host/index.js';

const processOf = (pid: number): ProcessIdentity => identify(pid)!;
import { describeOnHost } from '../support/host.js';
import { ATTACKER_UID } from '../support/local-attacker.js';

/** Connects to 127.0.0.1:port from a process of its own, as `uid`; resolves with what it saw. */
async function connectFromAnotherProcess(port: number, uid = 0): Promise<{ connected: boolean; pid: number; done: Promise<void> }> {
  const script = `const s = require('node:net').connect(${port}, '127.0.0.1');
s.on('connect', () => { process.stdout.write('connected\\n'); setTimeout(() => process.exit(0), 3000); });
s.on('error', (e) => { process.stdout.write('refused ' + e.code + '\\n'); process.exit(0); });`;
  const child = spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [line] = (await once(child.stdout!, 'data')) as [Buffer];
  return { connected: line.toString().startsWith('connected'), pid: child.pid!, done: once(child, 'exit').then(() => {}) };
}

describeOnHost('who may connect to the loopback listeners of a migration', ['root'], () => {
  const servers: Server[] = [];
  const sockets: Socket[] = [];
  afterEach(() => {
    servers.splice(0).forEach((server) => server.close());
    sockets.splice(0).forEach((socket) => socket.destroy());
  });
  const listening = async (): Promise<{ server: Server; port: number; accepted: Socket[] }> => {
    const accepted: Socket[] = [];
    const server = createServer((socket) => void accepted.push(socket));
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return { server, port: (server.address() as { port: number }).port, accepted };
  };

  it('a guarded port refuses every local user but root, until released', async () => {
    const { port } = await listening();
    const guard = await guardLoopbackPort(port);
    try {
      expect((await connectFromAnotherProcess(port, ATTACKER_UID)).connected).toBe(false);
      expect((await connectFromAnotherProcess(port, 0)).connected).toBe(true);
    } finally {
      await guard.release();
    }
    expect((await connectFromAnotherProcess(port, ATTACKER_UID)).connected).toBe(true);
  });

  it("once a port admits only the guard's own clients, even root's other sockets are reset, and the guard's client gets in", async () => {
    // root's other sockets: Incus' forkproxy, for one, connects from the host as root for a container
    const { port, accepted } = await listening();
    const guard = await guardLoopbackPort(port);
    try {
      expect((await connectFromAnotherProcess(port, 0)).connected).toBe(true);
      await guard.admitOnlyOwnClients();
      expect((await connectFromAnotherProcess(port, 0)).connected).toBe(false);
      expect((await connectFromAnotherProcess(port, ATTACKER_UID)).connected).toBe(false);
      const own = await guard.connect();
      sockets.push(own);
      expect(own.localPort).toBeLessThan(1024);
      await expect.poll(() => accepted.map((socket) => socket.remotePort), { timeout: 10_000 }).toContain(own.localPort);
    } finally {
      await guard.release();
    }
    expect((await connectFromAnotherProcess(port, 0)).connected).toBe(true);
  });

  it("admits its first own client when it is set up, and releases every element in one nft run, or one at a time where one is gone", async () => {
    // inside a lazy migration's freeze: CRIU listens, haul connects and lets the guard go; each nft
    // run there was some 30 ms before the restore's first fault could be answered
    const dir = mkdtempSync(join(tmpdir(), 'haul-nft-'));
    const calls = join(dir, 'calls');
    const nft = join(dir, 'nft');
    writeFileSync(nft, `#!/bin/sh\necho "$*" >> ${calls}\nexec nft "$@"\n`);
    chmodSync(nft, 0o755);
    const runs = (): string[] => readFileSync(calls, 'utf8').trim().split('\n');
    const elementsOf = async (port: number): Promise<number> => {
      const listing = await new Promise<string>((resolve, reject) => {
        const child = spawn('nft', ['list', 'table', 'inet', 'haul'], { stdio: ['ignore', 'pipe', 'inherit'] });
        let text = '';
        child.stdout!.on('data', (chunk: Buffer) => (text += chunk.toString()));
        child.on('error', reject).on('exit', () => resolve(text));
      });
      return listing.split(/[\s,{}]+/).filter((word) => word === String(port)).length;
    };
    try {
      for (const goneFirst of [false, true]) {
        writeFileSync(calls, '');
        const { port, accepted } = await listening();
        const guard = await guardLoopbackPort(port, { nft, ownClientsOnly: true });
        try {
          expect(runs()).toHaveLength(1);
          // admitted ahead, the client port lets no other root socket in
          expect((await connectFromAnotherProcess(port, 0)).connected).toBe(false);
          const own = await guard.connect();
          sockets.push(own);
          expect(runs()).toHaveLength(1);
          await expect.poll(() => accepted.map((socket) => socket.remotePort), { timeout: 10_000 }).toContain(own.localPort);
          expect(await elementsOf(port)).toBe(3);
          if (goneFirst) await new Promise((resolve) => spawn('nft', ['delete', 'element', 'inet', 'haul', 'own_clients_only_ports', `{ ${port} }`]).on('exit', resolve));
        } finally {
          await Promise.all([guard.release(), guard.release()]);
        }
        expect(runs()).toHaveLength(goneFirst ? 2 + 3 : 2);
        expect(await elementsOf(port)).toBe(0);
        expect((await connectFromAnotherProcess(port, 0)).connected).toBe(true);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('never lets two guards share a port: the second is refused, a new guard picks another, and one release leaves the other', async () => {
    const first = await guardNewLoopbackPort();
    try {
      await expect(guardLoopbackPort(first.port)).rejects.toBeInstanceOf(LoopbackGuardError);
      const second = await guardNewLoopbackPort();
      try {
        expect(second.port).not.toBe(first.port);
        expect(first.port % 2).toBe(0); // listeners' ports are even, clients' odd: never each other's
        await second.release();
        const server = createServer((socket) => socket.on('error', () => {}));
        servers.push(server);
        await new Promise<void>((resolve) => server.listen(first.port, '127.0.0.1', resolve));
        expect((await connectFromAnotherProcess(first.port, ATTACKER_UID)).connected).toBe(false);
      } finally {
        await second.release();
      }
    } finally {
      await first.release();
    }
  });

  it("on a host where every user may bind low ports, still guards, and its own client still gets in (from a root socket)", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'haul-sysctl-'));
    try {
      writeFileSync(join(dir, 'start'), '0\n');
      const guard = await guardNewLoopbackPort({ ownClientsOnly: true, unprivilegedPortStart: join(dir, 'start') });
      try {
        expect(guard.bindableByAnyone).toMatch(/ip_unprivileged_port_start is 0/);
        const server = createServer((socket) => socket.on('error', () => {}));
        servers.push(server);
        await new Promise<void>((resolve) => server.listen(guard.port, '127.0.0.1', resolve));
        expect((await connectFromAnotherProcess(guard.port, 0)).connected).toBe(false);
        const own = await guard.connect();
        sockets.push(own);
        expect(own.remotePort).toBe(guard.port);
      } finally {
        await guard.release();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('keeps connections made before the port admitted only its own clients', async () => {
    const { port, accepted } = await listening();
    const guard = await guardLoopbackPort(port);
    try {
      const early = connect(port, '127.0.0.1');
      sockets.push(early);
      await once(early, 'connect');
      await guard.admitOnlyOwnClients();
      await expect.poll(() => accepted.length, { timeout: 10_000 }).toBe(1);
      const received = once(accepted[0]!, 'data');
      early.write('still here');
      const [data] = (await received) as [Buffer];
      expect(data.toString()).toBe('still here');
    } finally {
      await guard.release();
    }
  });

  it('picks ports for CRIU that no local user but root may bind', async () => {
    const picked = await pickPrivilegedLoopbackPort('listener');
    expect(picked.bindableByAnyone).toBeUndefined();
    expect(picked.port).toBeLessThan(Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8')));
    const script = `require('node:net').createServer().once('error', (e) => { process.stdout.write(e.code); process.exit(0); }).listen(${picked.port}, '127.0.0.1', () => { process.stdout.write('bound'); process.exit(0); });`;
    const child = spawn('setpriv', [`--reuid=${ATTACKER_UID}`, `--regid=${ATTACKER_UID}`, '--clear-groups', process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const [output] = (await once(child.stdout!, 'data')) as [Buffer];
    expect(output.toString()).toBe('EACCES');
    // a host that lets everyone bind low ports gets a port all the same, and is told
    const dir = mkdtempSync(join(tmpdir(), 'haul-sysctl-'));
    try {
      writeFileSync(join(dir, 'start'), '0\n');
      const open = await pickPrivilegedLoopbackPort('listener', { unprivilegedPortStart: join(dir, 'start') });
      expect(open.bindableByAnyone).toMatch(/ip_unprivileged_port_start is 0/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('says with a stable code when nftables is missing, and checks without changing anything', async () => {
    await expect(canGuardLoopbackPorts()).resolves.toBeUndefined();
    const missing = await guardLoopbackPort(1234, { nft: '/nonexistent/nft' }).catch((error: unknown) => error);
    expect(missing).toBeInstanceOf(LoopbackGuardError);
    expect((missing as LoopbackGuardError).code).toBe('HAUL_LOOPBACK_GUARD');
  });

  it('tells the process holding the other end of a connection from any other', async () => {
    const { port, accepted } = await listening();
    const peer = await connectFromAnotherProcess(port);
    await expect.poll(() => accepted.length, { timeout: 10_000 }).toBe(1);
    const socket = accepted[0]!;
    await expect(expectPeerProcess(socket, processOf(peer.pid))).resolves.toBeUndefined();
    const refusal = await expectPeerProcess(socket, processOf(process.pid)).catch((error: unknown) => error);
    expect(refusal).toBeInstanceOf(UnexpectedPeerError);
    expect((refusal as UnexpectedPeerError).code).toBe('HAUL_UNEXPECTED_PEER');
  });

  it('as a client, waits for the listener to accept, and refuses a port someone else listens on', async () => {
    const { port } = await listening(); // "someone else": this process, not the one expected
    const socket = connect(port, '127.0.0.1');
    sockets.push(socket);
    await once(socket, 'connect');
    await expect(expectPeerProcess(socket, processOf(process.pid))).resolves.toBeUndefined();
    await expect(expectPeerProcess(socket, processOf(1))).rejects.toBeInstanceOf(UnexpectedPeerError);
    // the pid of the process expected, but that process ended and another took its pid
    await expect(expectPeerProcess(socket, { pid: process.pid, startTime: '1' })).rejects.toThrow(/another process now/);
  });

  it("a page server's listener drops connections that fail its check unread, and goes on to take the right one", async () => {
    const impostor = connect; // this test's own connections stand for the impostor and for CRIU
    let expected = -1;
    const refused: unknown[] = [];
    const listener = await acceptOne('127.0.0.1', 0, async () => {
      if (expected !== 1) throw new Error('not the one');
    }, (error) => refused.push(error));
    const first = impostor(listener.port, '127.0.0.1');
    sockets.push(first);
    first.on('error', () => {});
    await once(first, 'close');
    expect(refused).toHaveLength(1);
    expected = 1;
    const second = connect(listener.port, '127.0.0.1');
    sockets.push(second);
    const taken = await listener.connection;
    sockets.push(taken);
    second.write('hello');
    taken.resume(); // taken paused, as CRIU's page server needs it: its reader pulls
    const [data] = (await once(taken, 'data')) as [Buffer];
    expect(data.toString()).toBe('hello');
  });

  it('listens on a unix socket only in a directory no one else may enter', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'haul-local-'));
    try {
      chmodSync(dir, 0o755);
      await expect(acceptOneLocal(join(dir, 'ps.sock'))).rejects.toThrow(/no one else may enter/);
      chmodSync(dir, 0o700);
      const listener = await acceptOneLocal(join(dir, 'ps.sock'));
      listener.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
