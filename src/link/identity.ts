import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdir, readFile, rename } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { promisify } from 'node:util';

/** This host's key pair and self-signed certificate, by which peers recognise it. */
export interface Identity {
  readonly key: string;
  readonly cert: string;
  /** sha256 of the certificate (DER), lowercase hex: what a peer pins. */
  readonly fingerprint: string;
}

export function fingerprintOf(certPem: string): string {
  return new X509Certificate(certPem).fingerprint256.replaceAll(':', '').toLowerCase();
}

/** The fingerprint of the certificate the peer on `socket` presented, or undefined if it showed none. */
export function peerFingerprint(socket: TLSSocket): string | undefined {
  const cert = socket.getPeerCertificate?.(true);
  return cert?.raw ? new X509Certificate(cert.raw).fingerprint256.replaceAll(':', '').toLowerCase() : undefined;
}

/** The identity kept in `stateDir`, or undefined where there is none yet; creates nothing. */
export async function loadIdentity(stateDir: string): Promise<Identity | undefined> {
  try {
    const [key, cert] = await Promise.all([readFile(join(stateDir, 'link.key'), 'utf8'), readFile(join(stateDir, 'link.crt'), 'utf8')]);
    return { key, cert, fingerprint: fingerprintOf(cert) };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

/**
 * Loads the identity kept in `stateDir`, or creates it on first use (an EC P-256 key and a ten-year
 * self-signed certificate, made with openssl; the key file is readable by its owner only).
 */
export async function loadOrCreateIdentity(stateDir: string): Promise<Identity> {
  const kept = await loadIdentity(stateDir);
  if (kept) return kept;
  const keyPath = join(stateDir, 'link.key');
  const certPath = join(stateDir, 'link.crt');
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const tmpKey = `${keyPath}.new`;
  const tmpCert = `${certPath}.new`;
  await promisify(execFile)('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '3650',
    '-subj', `/CN=haul@${hostname()}`, '-keyout', tmpKey, '-out', tmpCert,
  ]);
  await rename(tmpKey, keyPath);
  await rename(tmpCert, certPath);
  return loadOrCreateIdentity(stateDir);
}
