import { join } from 'node:path';
import { Client } from 'undici';

/** What the agent reads of an instance (GET /1.0/instances?recursion=2). */
export interface IncusInstance {
  readonly name: string;
  readonly status: string;
  readonly project?: string;
  readonly config: Record<string, string>;
  /** Absent for an instance Incus is still creating or already deleting (a move in progress, or one that failed). */
  readonly expanded_config?: Record<string, string>;
  readonly expanded_devices?: Record<string, Record<string, string>>;
  readonly state?: { readonly pid: number; readonly status: string } | null;
}

/** What the agent reads of an operation (GET /1.0/operations?recursion=1). */
export interface IncusOperation {
  readonly description: string;
  readonly status_code: number;
  readonly created_at: string;
  readonly resources?: { readonly instances?: readonly string[] } | null;
}

/** The instance name at the end of a resource path such as /1.0/instances/c1?project=default. */
export function instanceNameOf(path: string): string {
  return decodeURIComponent(path.replace(/\?.*$/, '').split('/').pop() ?? '');
}

/** Incus said no: its error text, with the request that got it. */
export class IncusError extends Error {
  override readonly name = 'IncusError';
  constructor(
    message: string,
    /** HAUL_INCUS_UNREACHABLE: incusd did not answer; HAUL_INCUS_REFUSED: it answered with an error. */
    readonly code: 'HAUL_INCUS_UNREACHABLE' | 'HAUL_INCUS_REFUSED',
    /** The HTTP status of incusd's answer (its error_code), 0 when there was none. */
    readonly status: number,
    options?: { readonly cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * incusd's REST API over its unix socket (plain HTTP/1.1; the host name is arbitrary). Every
 * response is Incus' envelope {type, status_code, metadata, error}; errors become IncusError.
 */
/**
 * The version of the incusd whose INCUS_DIR is `incusDir`, or '' when it does not answer within
 * `withinMs` (an agent that starts before incusd still runs; its peers' doctor shows '?').
 */
export async function incusVersionAt(incusDir: string, withinMs: number): Promise<string> {
  const incus = new IncusClient(join(incusDir, 'unix.socket'));
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<string>((resolve) => (timer = setTimeout(() => resolve(''), withinMs)));
  try {
    return await Promise.race([incus.version().catch(() => ''), late]);
  } finally {
    clearTimeout(timer);
    // not waited for: a request still out (a hung incusd) would hold it until undici's timeout
    incus.close().catch(() => {});
  }
}

export class IncusClient {
  private readonly client: Client;

  constructor(readonly socketPath: string) {
    this.client = new Client('http://incus', { socketPath, headersTimeout: 30_000, bodyTimeout: 30_000 });
  }

  async get<T>(path: string): Promise<T> {
    return (await this.request<T>('GET', path)).metadata;
  }

  /**
   * A request that changes something; when Incus answers with a background operation, waits for it
   * and fails with its error.
   */
  async change(method: 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown): Promise<void> {
    const answer = await this.request<{ id?: string }>(method, path, body);
    if (answer.type !== 'async' || !answer.metadata?.id) return;
    const operation = await this.get<{ status: string; err?: string }>(`/1.0/operations/${encodeURIComponent(answer.metadata.id)}/wait?timeout=300`);
    if (operation.status !== 'Success') throw new IncusError(`${method} ${path}: ${operation.err || operation.status}`, 'HAUL_INCUS_REFUSED', 0);
  }

  private async request<T>(method: string, path: string, body?: unknown): Promise<{ type: string | undefined; metadata: T }> {
    let response;
    try {
      response = await this.client.request({
        method, path,
        ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
      });
    } catch (error) {
      throw new IncusError(`incusd at ${this.socketPath} did not answer ${method} ${path}: ${error instanceof Error ? error.message : String(error)}`, 'HAUL_INCUS_UNREACHABLE', 0, { cause: error });
    }
    const answer = (await response.body.json()) as { type?: string; error?: string; error_code?: number; metadata?: T };
    if (response.statusCode >= 400 || answer.type === 'error') {
      throw new IncusError(`${method} ${path}: ${answer.error ?? `HTTP ${response.statusCode}`}`, 'HAUL_INCUS_REFUSED', answer.error_code || response.statusCode);
    }
    return { type: answer.type, metadata: answer.metadata as T };
  }

  /** incusd's own pid, and the addresses it listens on for other servers (host:port). */
  async server(): Promise<{ readonly pid: number; readonly addresses: readonly string[] }> {
    const { environment } = await this.get<{ environment: { server_pid: number; addresses?: string[] | null } }>('/1.0');
    return { pid: environment.server_pid, addresses: environment.addresses ?? [] };
  }

  /** incusd's version (server_version), e.g. 6.0.4. */
  async version(): Promise<string> {
    const { environment } = await this.get<{ environment: { server_version?: string } }>('/1.0');
    return environment.server_version ?? '';
  }

  instances(): Promise<IncusInstance[]> {
    return this.get<IncusInstance[]>('/1.0/instances?recursion=2&all-projects=true');
  }

  /** The running instance whose init has this (host) pid, if any. */
  async instanceWithInit(pid: number): Promise<IncusInstance | undefined> {
    return (await this.instances()).find((instance) => instance.state?.pid === pid);
  }

  /** One instance by name (default project), or undefined if there is none. */
  async instance(name: string): Promise<IncusInstance | undefined> {
    try {
      return await this.get<IncusInstance>(`/1.0/instances/${encodeURIComponent(name)}`);
    } catch (error) {
      if (error instanceof IncusError && error.status === 404) return undefined;
      throw error;
    }
  }

  /** The storage driver of a pool (dir, btrfs, zfs, lvm...). */
  async poolDriver(pool: string): Promise<string> {
    return (await this.get<{ driver: string }>(`/1.0/storage-pools/${encodeURIComponent(pool)}`)).driver;
  }

  /** Operations under way or recently ended, whichever list incusd files them in. */
  async operations(): Promise<IncusOperation[]> {
    const found = await this.get<IncusOperation[] | Record<string, IncusOperation[]> | null>('/1.0/operations?recursion=1&all-projects=true');
    if (!found) return [];
    return Array.isArray(found) ? found : Object.values(found).flat();
  }

  /** Operations with this description that concern `instance`, running or recently ended. */
  async operationsOn(instance: string, description: string): Promise<IncusOperation[]> {
    return (await this.operations()).filter((op) => op.description === description && (op.resources?.instances ?? []).some((path) => instanceNameOf(path) === instance));
  }

  /** Whether incusd is creating `instance` right now (an incoming migration, or a create). */
  async isCreating(instance: string): Promise<boolean> {
    return (await this.operationsOn(instance, 'Creating instance').catch(() => [])).some((op) => op.status_code < 200);
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}
