import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_MANAGER_ADDRESSES, cutConnections, cuttableEndpoints } from '../../plugin/incus-connections.js';
import { canonicalEndpoint, establishedConnections } from '../../src/host/index.js';
import { describeOnHost } from '../support/host.js';

const HEADER = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n';

describe("reading the kernel's TCP tables", () => {
  it('lists established IPv4 connections with their endpoints and socket inodes, and nothing else', () => {
    const table = HEADER
      + '   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 642 1 0000000019a2bfd0 100 0 0 10 0\n'
      + '   1: 0100007F:B0B0 0100007F:480B 01 00000000:00000000 00:00000000 00000000     0        0 5890130 1 00000000ee25954c 20 4 30 10 -1\n'
      + '   2: 0500000A:B0B1 0A00000A:20FB 06 00000000:00000000 00:00000000 00000000     0        0 0 3 00000000ee25954c\n';
    expect(establishedConnections(table)).toEqual([{ local: '127.0.0.1:45232', remote: '127.0.0.1:18443', inode: 5890130 }]);
  });

  it('reads IPv6 addresses word by word in host order, and IPv4-mapped ones as IPv4', () => {
    const table = HEADER
      // [fd42::1]:8443 <- [fd42::2]:40000
      + '   0: 000042FD000000000000000002000000:9C40 000042FD000000000000000001000000:20FB 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 30 10 -1\n'
      // [::ffff:127.0.0.1]:18443
      + '   1: 0000000000000000FFFF00000100007F:9C41 0000000000000000FFFF00000100007F:480B 01 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 20 4 30 10 -1\n';
    expect(establishedConnections(table)).toEqual([
      { local: '[fd42::2]:40000', remote: '[fd42::1]:8443', inode: 777 },
      { local: '127.0.0.1:40001', remote: '127.0.0.1:18443', inode: 778 },
    ]);
  });

  it('spells addresses as Incus lists them the same way', () => {
    expect(canonicalEndpoint('[fd42:0:0::1]:8443')).toBe('[fd42::1]:8443');
    expect(canonicalEndpoint('127.0.0.1:18443')).toBe('127.0.0.1:18443');
    expect(canonicalEndpoint('127.0.0.1:80')).toBe('127.0.0.1:80');
    expect(canonicalEndpoint('example')).toBeUndefined();
  });
});

describe("what the source may name as its incusd's addresses", () => {
  it('takes only IP literals of the host the link came from', () => {
    const { endpoints, ignored } = cuttableEndpoints(['127.0.0.1:18443', 'localhost:18443', '10.0.0.9:8443', 'incus.example:8443', '0.0.0.0:8443'], '127.0.0.1');
    expect(endpoints).toEqual(['127.0.0.1:18443']);
    expect(ignored).toEqual(['localhost:18443', '10.0.0.9:8443', 'incus.example:8443', '0.0.0.0:8443']);
  });

  it('matches a link over IPv6, and an IPv4 peer the socket reports IPv4-mapped', () => {
    expect(cuttableEndpoints(['[fd42:0::1]:8443', '[fd42::2]:8443'], 'fd42::1').endpoints).toEqual(['[fd42::1]:8443']);
    expect(cuttableEndpoints(['192.0.2.7:8443'], '::ffff:192.0.2.7').endpoints).toEqual(['192.0.2.7:8443']);
  });

  it(`takes at most ${MAX_MANAGER_ADDRESSES} of them`, () => {
    const claimed = Array.from({ length: 100 }, (_, at) => `127.0.0.1:${20000 + at}`);
    expect(cuttableEndpoints(claimed, '127.0.0.1').endpoints).toHaveLength(MAX_MANAGER_ADDRESSES);
  });

  it('takes nothing when the link came from nowhere known', () => {
    expect(cuttableEndpoints(['127.0.0.1:18443'], undefined).endpoints).toEqual([]);
  });
});

describeOnHost("cutting a process's connections to a peer", ['root'], () => {
  const cleanups: Array<() => void> = [];
  afterEach(() => cleanups.splice(0).reverse().forEach((cleanup) => cleanup()));

  async function serve(): Promise<{ port: number; accepted: Socket[] }> {
    const accepted: Socket[] = [];
    const server = createServer((socket) => {
      socket.on('error', () => {});
      accepted.push(socket);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanups.push(() => {
      accepted.forEach((socket) => socket.destroy());
      server.close();
    });
    return { port: (server.address() as { port: number }).port, accepted };
  }

  async function dial(port: number): Promise<Socket> {
    const socket = connect(port, '127.0.0.1');
    await once(socket, 'connect');
    cleanups.push(() => socket.destroy());
    return socket;
  }

  it("ends this process's connections to that peer (both ends see it) and leaves others alone", async () => {
    const peer = await serve();
    const other = await serve();
    const doomed = [await dial(peer.port), await dial(peer.port)];
    const kept = await dial(other.port);
    const errors = doomed.map((socket) => once(socket, 'error').then(([error]) => (error as NodeJS.ErrnoException).code));
    const cut = await cutConnections(process.pid, [`127.0.0.1:${peer.port}`]);
    expect(cut.map((connection) => connection.remote)).toEqual([`127.0.0.1:${peer.port}`, `127.0.0.1:${peer.port}`]);
    expect(await Promise.all(errors)).toEqual(['ECONNABORTED', 'ECONNABORTED']);
    expect(kept.destroyed).toBe(false);
    kept.write('still here');
    await expect.poll(() => other.accepted[0]?.read()?.toString()).toBe('still here');
  });

  it('resolves no name: a host name cuts nothing', async () => {
    const peer = await serve();
    const kept = await dial(peer.port);
    expect(await cutConnections(process.pid, [`localhost:${peer.port}`])).toEqual([]);
    kept.write('still here');
    await expect.poll(() => peer.accepted[0]?.read()?.toString()).toBe('still here');
  });
});
