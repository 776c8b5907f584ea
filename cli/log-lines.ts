import { fstatSync } from 'node:fs';
import type { LogLevel } from '../plugin/index.js';

/** syslog priorities, which journald reads from a `<N>` prefix (sd-daemon(3)). */
const PRIORITY: Record<LogLevel, number> = { error: 3, warning: 4, info: 6 };

/**
 * Whether stdout is the journal: systemd sets JOURNAL_STREAM to the device and inode of the stream
 * it connected, which a redirect elsewhere no longer matches (systemd.exec(5)).
 */
function stdoutIsJournal(): boolean {
  const [device, inode] = (process.env['JOURNAL_STREAM'] ?? '').split(':');
  if (!device || !inode) return false;
  try {
    const stat = fstatSync(1, { bigint: true });
    return String(stat.dev) === device && String(stat.ino) === inode;
  } catch {
    return false;
  }
}

/**
 * How a long-running command's log lines look: under systemd, a priority prefix and no timestamp
 * (the journal stamps each line itself); elsewhere an ISO timestamp first.
 */
export function logLineFormat(journal = stdoutIsJournal()): (line: string, level?: LogLevel) => string {
  return journal ? (line, level = 'info') => `<${PRIORITY[level]}>${line}` : (line, level = 'info') => `${new Date().toISOString()} ${level === 'info' ? '' : `${level}: `}${line}`;
}
