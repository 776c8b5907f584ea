import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO } from '../support/paths.js';

// the hook and the restore log's gatekeeper are perl (Debian's perl-base is Essential): a syntax
// error there would show only inside a move
describe("haul's perl programs", () => {
  const programs = ['src', 'proxy', 'plugin', 'cli'].flatMap((dir) =>
    readdirSync(join(REPO, dir), { recursive: true, encoding: 'utf8' })
      .filter((name) => name.endsWith('.pl'))
      .map((name) => join(dir, name)),
  );

  it("are the hook, the gatekeeper, the wait for a held action, the line told to haul and the trust store's lock", () => {
    expect(programs.sort()).toEqual(['plugin/criu-hook.pl', 'plugin/restore-log-keeper.pl', 'src/criu/run/hold-answer.pl', 'src/criu/run/tell-haul.pl', 'src/link/hold-lock.pl']);
  });

  it.each(programs)('%s compiles under strict (perl -c)', (program) => {
    expect(readFileSync(join(REPO, program), 'utf8')).toMatch(/^use strict;$/m);
    const said = execFileSync('/usr/bin/perl', ['-c', join(REPO, program)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(said).toBe('');
  });
});
