import { Client } from 'undici';

/** What the agent reads of an instance (GET /1.0/instances?recursion=2). */
export interface IncusInstance {
  readonly name: string;
  readonly status: string;
  readonly project?: string;
  readonly config: Record<string, string>;
  readonly expanded_config: Record<string, string>;
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

/** Incus said no: its error text, with the request that got it. */
export class IncusError extends Error {
  override readonly name = 'IncusError';
}

/**
 * incusd's REST API over its unix socket (plain HTTP/1.1; the host name is arbitrary). Every
 * response is Incus' envelope {type, status_code, metadata, error}; errors become IncusError.
 */
export class IncusClient {
  private readonly client: Client;

  constructor(readonly socketPath: string) {
    this.client = new Client('http://incus', { socketPath, headersTimeout: 30_000, bodyTimeout: 30_000 });
  }

  async get<T>(path: string): Promise<T> {
    let response;
    try {
      response = await this.client.request({ method: 'GET', path });
    } catch (error) {
      throw new IncusError(`incusd at ${this.socketPath} did not answer GET ${path}: ${error instanceof Error ? error.message : String(error)}`);
    }
    const body = (await response.body.json()) as { type?: string; error?: string; metadata?: T };
    if (response.statusCode >= 400 || body.type === 'error') throw new IncusError(`GET ${path}: ${body.error ?? `HTTP ${response.statusCode}`}`);
    return body.metadata as T;
  }

  instances(): Promise<IncusInstance[]> {
    return this.get<IncusInstance[]>('/1.0/instances?recursion=2&all-projects=true');
  }

  /** The running instance whose init has this (host) pid, if any. */
  async instanceWithInit(pid: number): Promise<IncusInstance | undefined> {
    return (await this.instances()).find((instance) => instance.state?.pid === pid);
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

  async close(): Promise<void> {
    await this.client.close();
  }
}
