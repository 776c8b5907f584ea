import type { Mode } from './mode.js';

/**
 * The migration failed and the source process keeps running (CRIU resumed it): nothing moved.
 * `cause` is what failed first (the link's reason when it went down, else the step's error).
 */
export class MigrationFailedError extends Error {
  override readonly name = 'MigrationFailedError';
  readonly code = 'HAUL_MIGRATION_FAILED';
  constructor(
    readonly mode: Mode,
    readonly sourcePid: number,
    cause: unknown,
  ) {
    super(`${mode} migration of ${sourcePid} failed, the source process keeps running: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }
}

/**
 * The source ended its copy on the destination's report of a restore, and then the link failed
 * before the destination confirmed it let its copy run: the destination keeps that copy stopped.
 */
export class MigrationInDoubtError extends Error {
  override readonly name = 'MigrationInDoubtError';
  readonly code = 'HAUL_MIGRATION_IN_DOUBT';
  constructor(
    readonly mode: Mode,
    readonly sourcePid: number,
    readonly destinationPid: number,
    cause: unknown,
  ) {
    super(
      `${mode} migration of ${sourcePid}: the source copy has ended, but the link failed before the destination confirmed it runs its copy (pid ${destinationPid} there, kept stopped until confirmed): check it on the destination and run it with kill -CONT; ${cause instanceof Error ? cause.message : String(cause)}`,
      { cause },
    );
  }
}
