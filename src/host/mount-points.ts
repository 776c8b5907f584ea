import { readFile } from 'node:fs/promises';

/**
 * The mount points a process sees, each as the bytes of its path inside the process's root
 * (/proc/PID/mountinfo's fifth field, proc(5); the kernel writes space, tab, newline and backslash
 * in it as three-digit octal escapes, fs/proc_namespace.c), the root itself included.
 */
export async function mountPointsOf(pid: number): Promise<Buffer[]> {
  const text = await readFile(`/proc/${pid}/mountinfo`);
  const points: Buffer[] = [];
  for (const line of text.toString('latin1').split('\n')) {
    const field = line.split(' ')[4];
    if (field) points.push(Buffer.from(field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8))), 'latin1'));
  }
  return points;
}
