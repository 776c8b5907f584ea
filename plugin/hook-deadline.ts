/** What the agent knows of the hook's wait for a dump's answer (see HookRequest.answer_within_ms). */
export interface HookCall {
  /** When the agent must have answered (Date.now() time). */
  readonly deadline: number;
  /** Aborted when the hook closed its socket before the answer: it runs CRIU unchanged. */
  readonly gaveUp: AbortSignal;
}

export const HOOK_GAVE_UP = "the source's CRIU hook gave up waiting for its agent";
/** A peer is asked only with at least this long left before the hook's deadline. */
const LEAST_OFFER_MS = 1_000;

/** Why no (further) peer may be asked, or undefined while there is time. */
export function tooLateToOffer(hook: HookCall): string | undefined {
  if (hook.gaveUp.aborted) return HOOK_GAVE_UP;
  if (hook.deadline - Date.now() < LEAST_OFFER_MS) return "the CRIU hook's wait for an answer is nearly over";
  return undefined;
}

/**
 * `work`, unless the hook's deadline passes or it gives up first (then rejects); what `work`
 * yields too late goes to `discard` (a session nobody will use).
 */
export async function withinHookDeadline<T>(work: Promise<T>, hook: HookCall, discard: (late: T) => void = () => {}): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const cutShort = new Promise<never>((_, reject) => {
    if (Number.isFinite(hook.deadline)) timer = setTimeout(() => reject(new Error("no answer before the CRIU hook's wait for one was nearly over")), Math.max(0, hook.deadline - Date.now()));
    onAbort = () => reject(new Error(HOOK_GAVE_UP));
    if (hook.gaveUp.aborted) onAbort();
    else hook.gaveUp.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([work, cutShort]);
  } catch (error) {
    void work.then(discard, () => {});
    throw error;
  } finally {
    clearTimeout(timer);
    hook.gaveUp.removeEventListener('abort', onAbort!);
  }
}
