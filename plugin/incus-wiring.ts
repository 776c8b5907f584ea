import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access, mkdir, readdir, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { promisify } from 'node:util';
import { findRealCriu, installHook, uninstallHook } from './criu-hook.js';

/**
 * How incusd on this host was packaged, which decides how the hook gets ahead of the real CRIU:
 * - zabbly: /opt/incus/lib/systemd/incusd, a wrapper that puts /opt/incus/bin first on the PATH,
 *   where Zabbly ships its own CRIU. No PATH set in a unit gets ahead of it, so haul diverts that
 *   CRIU (dpkg-divert: package upgrades then write to the diverted name) and puts the hook there.
 * - systemd: an incus.service unit (Debian's reads EnvironmentFile=-/etc/default/incus, which sets
 *   PATH, and systemd applies EnvironmentFile= after Environment=, so a drop-in's Environment=
 *   loses); a drop-in adds an EnvironmentFile read after Debian's, with the hook's dir first.
 * - by-hand: neither, or systemd does not run this host; incusd must be started with the hook's dir
 *   first on its PATH.
 */
export type IncusPackaging = 'zabbly' | 'systemd' | 'by-hand';

/** What `haul agent install` did, kept so that `haul agent uninstall` undoes exactly that. */
export interface HookWiring {
  readonly packaging: IncusPackaging;
  /** The hook incusd's liblxc finds as `criu`. */
  readonly hook: string;
  /** The CRIU the hook runs: the one incusd would have run. */
  readonly realCriu: string;
  /** Files haul wrote for the wiring besides the hook (host paths). */
  readonly files: readonly string[];
  /** Directories that install made (host paths, deepest first), removed again when empty. */
  readonly directories?: readonly string[];
  /** zabbly: the package's CRIU, moved aside by dpkg-divert. */
  readonly diversion?: { readonly path: string; readonly divertedTo: string };
  /** Whether incusd must be restarted to find the hook (a PATH is read at its start). */
  readonly needsRestart: boolean;
}

const ZABBLY_WRAPPER = '/opt/incus/lib/systemd/incusd';
const ZABBLY_CRIU = '/opt/incus/bin/criu';
const UNIT_DIRS = ['/etc/systemd/system', '/usr/lib/systemd/system', '/lib/systemd/system'];
const DROP_IN = '/etc/systemd/system/incus.service.d/haul.conf';
const PATH_FILE = '/etc/haul/incusd-path.env';
/** systemd's PATH for services when nothing sets one (systemd.exec(5), "Environment variables in spawned processes"). */
const SYSTEMD_DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

const exists = (path: string): Promise<boolean> => access(path, constants.F_OK).then(() => true, () => false);

/** The directories of `paths` (host paths) not there yet, deepest first: what an install will make. */
async function missingDirectories(root: string, paths: readonly string[]): Promise<string[]> {
  const missing = new Set<string>();
  for (const path of paths) {
    for (let dir = path; dir !== '/' && !(await exists(join(root, dir))); dir = dirname(dir)) missing.add(dir);
  }
  return [...missing].sort((a, b) => b.length - a.length);
}

/** `root`: where the host's / is (a test's scratch tree; / on a host). */
export async function detectIncusPackaging(root = '/'): Promise<IncusPackaging> {
  if (await exists(join(root, ZABBLY_WRAPPER))) return 'zabbly';
  // a unit counts only where systemd runs the host (sd_booted(3)): elsewhere incusd is started by hand
  if (!(await exists(join(root, '/run/systemd/system')))) return 'by-hand';
  for (const dir of UNIT_DIRS) if (await exists(join(root, dir, 'incus.service'))) return 'systemd';
  return 'by-hand';
}

/**
 * The PATH incus.service gives incusd without haul: the last PATH its Environment= and
 * EnvironmentFile= lines set (Debian: /etc/default/incus), in the unit and then its drop-ins in
 * name order (haul's own left out), else systemd's default. Read from the files, as systemd would
 * at its next daemon-reload.
 */
async function unitPath(root: string): Promise<string> {
  let unit: string | undefined;
  for (const dir of UNIT_DIRS) {
    unit = await readFile(join(root, dir, 'incus.service'), 'utf8').catch(() => undefined);
    if (unit !== undefined) break;
  }
  if (unit === undefined) return SYSTEMD_DEFAULT_PATH;
  const dropIns: string[] = [];
  for (const dir of [...UNIT_DIRS, '/run/systemd/system']) {
    const names = await readdir(join(root, dir, 'incus.service.d')).catch(() => [] as string[]);
    for (const name of names) if (name.endsWith('.conf') && join(dir, 'incus.service.d', name) !== DROP_IN) dropIns.push(join(dir, 'incus.service.d', name));
  }
  dropIns.sort((a, b) => (a.split('/').pop()! < b.split('/').pop()! ? -1 : 1));
  let path: string | undefined;
  for (const text of [unit, ...(await Promise.all(dropIns.map((file) => readFile(join(root, file), 'utf8').catch(() => ''))))]) {
    for (const line of text.split('\n')) {
      const environment = /^\s*Environment=(.*)$/.exec(line);
      const fromSetting = environment ? /(?:^|\s)"?PATH=([^"\s]+)/.exec(environment[1]!) : null;
      if (fromSetting) path = fromSetting[1];
      const file = /^\s*EnvironmentFile=-?(\S+)/.exec(line);
      if (!file) continue;
      const content = await readFile(join(root, file[1]!), 'utf8').catch(() => '');
      for (const setting of content.matchAll(/^\s*PATH=["']?([^"'\s]+)/gm)) path = setting[1];
    }
  }
  return path ?? SYSTEMD_DEFAULT_PATH;
}

const dpkgDivert = (root: string, args: readonly string[]): Promise<unknown> =>
  promisify(execFile)('dpkg-divert', [...(root === '/' ? [] : ['--instdir', root, '--admindir', join(root, 'var/lib/dpkg')]), '--package', 'haul', ...args]);

/**
 * Puts the hook where incusd finds it first, as this host's packaging allows (see IncusPackaging),
 * running `realCriu`, or the CRIU incusd would have run. Writes nothing for a by-hand incusd but
 * the hook in `hookDir`.
 */
export async function wireHook(options: { readonly hookDir: string; readonly realCriu?: string; readonly root?: string }): Promise<HookWiring> {
  const root = options.root ?? '/';
  if (!isAbsolute(options.hookDir)) throw new Error(`the hook's directory must be an absolute path, not ${JSON.stringify(options.hookDir)}: it goes on incusd's PATH as given`);
  const packaging = await detectIncusPackaging(root);
  if (packaging === 'zabbly') {
    const divertedTo = `${ZABBLY_CRIU}.haul-real`;
    const diverted = await exists(join(root, divertedTo));
    // a second install keeps the diversion it made; the package's CRIU is then the diverted one
    if (!diverted) {
      // checked before anything moves: a named CRIU that cannot be the real one leaves the host as it was
      if (options.realCriu !== undefined && (!isAbsolute(options.realCriu) || options.realCriu === ZABBLY_CRIU)) throw new Error(`on Zabbly's packages the hook takes ${ZABBLY_CRIU}'s place: name another CRIU, by an absolute path, or none (the package's, diverted)`);
      await dpkgDivert(root, ['--divert', divertedTo, '--rename', '--add', ZABBLY_CRIU]);
    }
    const realCriu = options.realCriu ?? divertedTo;
    try {
      await installHook(join(root, dirname(ZABBLY_CRIU)), realCriu, root);
    } catch (error) {
      // the package's CRIU goes back where it was, unless an earlier install had moved it
      if (!diverted) await dpkgDivert(root, ['--rename', '--remove', ZABBLY_CRIU]).catch(() => {});
      throw error;
    }
    return { packaging, hook: ZABBLY_CRIU, realCriu, files: [], diversion: { path: ZABBLY_CRIU, divertedTo }, needsRestart: false };
  }
  if (packaging === 'systemd') {
    const directories = await missingDirectories(root, [options.hookDir, dirname(PATH_FILE), dirname(DROP_IN)]);
    const path = await unitPath(root);
    const realCriu = options.realCriu ?? (await findRealCriu(path.split(':').filter(Boolean).map((dir) => join(root, dir, 'criu'))))?.slice(root === '/' ? 0 : root.length);
    if (!realCriu) throw new Error(`no CRIU on incusd's PATH (${path}): install one, or name it with --criu`);
    await installHook(join(root, options.hookDir), realCriu, root);
    const hookFirst = [options.hookDir, ...path.split(':').filter((dir) => dir && dir !== options.hookDir)].join(':');
    await mkdir(dirname(join(root, PATH_FILE)), { recursive: true });
    await writeFile(join(root, PATH_FILE), `# written by haul agent install, removed by haul agent uninstall\nPATH=${hookFirst}\n`);
    await mkdir(dirname(join(root, DROP_IN)), { recursive: true });
    // "-": should the PATH file go without the drop-in (an admin's hand), incusd still starts
    await writeFile(join(root, DROP_IN), `# written by haul agent install, removed by haul agent uninstall: haul's CRIU hook first on\n# incusd's PATH (read after the unit's own EnvironmentFile=, so that this PATH wins)\n[Service]\nEnvironmentFile=-${PATH_FILE}\n`);
    await reloadSystemd(root);
    return { packaging, hook: join(options.hookDir, 'criu'), realCriu, files: [DROP_IN, PATH_FILE], directories, needsRestart: true };
  }
  const realCriu = options.realCriu ?? (await findRealCriu());
  if (!realCriu) throw new Error('no CRIU found: install one, or name it with --criu');
  const directories = await missingDirectories(root, [options.hookDir]);
  await installHook(join(root, options.hookDir), realCriu, root);
  return { packaging, hook: join(options.hookDir, 'criu'), realCriu, files: [], directories, needsRestart: true };
}

/** systemd reads a unit's drop-ins at daemon-reload: without it a restart would start incusd as before. */
async function reloadSystemd(root: string): Promise<void> {
  if (root === '/' && (await exists('/run/systemd/system'))) await promisify(execFile)('systemctl', ['daemon-reload']);
}

/** Undoes `wiring` exactly: the hook, the files, the diversion (the package's CRIU back in place). */
export async function unwireHook(wiring: HookWiring, root = '/'): Promise<void> {
  await uninstallHook(join(root, dirname(wiring.hook)));
  for (const file of wiring.files) await rm(join(root, file), { force: true });
  // the directories install made go too, where what haul put there was all they held
  for (const dir of wiring.directories ?? []) await rmdir(join(root, dir)).catch(() => {});
  if (wiring.diversion) await dpkgDivert(root, ['--rename', '--remove', wiring.diversion.path]);
  if (wiring.files.includes(DROP_IN)) await reloadSystemd(root);
}
