import { existsSync, mkdirSync } from 'node:fs';
import { expect, it } from 'vitest';
import { CriuError, runCriu, startCriu } from '../../src/criu/run/criu-process.js';
import { criuVersion } from '../../src/criu/run/criu-version.js';
import { describeOnHost } from '../support/host.js';
import { CRIU_VERSION } from '../support/paths.js';
import { freePort, scratchDir } from '../support/scratch.js';

describeOnHost('running CRIU', ['root', 'criu'], () => {
  it("reports the version of the CRIU it runs (this pass of the matrix's)", async () => {
    const [major, minor, patch] = CRIU_VERSION.split('.').map(Number);
    expect(await criuVersion()).toEqual({ major, minor, patch });
  });

  it('fails with an error that quotes the Error lines of CRIU\'s log, and keeps the log', async () => {
    const scratch = scratchDir('criu-error');
    try {
      const empty = `${scratch.path}/empty`;
      mkdirSync(empty);
      const failure = runCriu('restore', ['-D', empty], { logFile: `${scratch.path}/restore.log` });
      await expect(failure).rejects.toBeInstanceOf(CriuError);
      await expect(failure).rejects.toThrow(/criu restore failed \(1\); .*restore\.log says:\n.*Error \(criu\//);
      expect(existsSync(`${scratch.path}/restore.log`)).toBe(true);
    } finally {
      scratch.remove();
    }
  });

  it('is ready when CRIU says so on --status-fd, and not before', async () => {
    const scratch = scratchDir('criu-ready');
    const port = await freePort();
    const server = startCriu('page-server', ['--images-dir', scratch.path, '--address', '127.0.0.1', '--port', String(port)], {
      logFile: `${scratch.path}/page-server.log`,
      statusFd: true,
    });
    try {
      await server.ready;
      // listening by now: a connection is accepted (and, closed without CLOSE, fails the page server)
      const { connect } = await import('node:net');
      await new Promise<void>((resolve, reject) => connect(port, '127.0.0.1', resolve).once('error', reject).end());
      await expect(server.exited).rejects.toThrow(/not flushed|closed/);
    } finally {
      server.child.kill('SIGKILL');
      scratch.remove();
    }
  });
});
