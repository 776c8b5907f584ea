import { parseMode, type Mode } from '../proxy/index.js';
import type { IncusInstance } from './incus-client.js';

/** How the agent moves an instance: a migration mode, or off (Incus' native move). */
export type HaulMode = Mode | 'off';

/** `text` as a mode or off ('precopy' still means pre-copy: parseMode), or undefined. */
export function parseHaulMode(text: string | undefined): HaulMode | undefined {
  return text === 'off' ? 'off' : parseMode(text);
}

/** The instance's user.haul.mode (own or from a profile), else the agent's default. */
export function modeOf(instance: IncusInstance, fallback: HaulMode): HaulMode {
  const value = instance.expanded_config?.['user.haul.mode'];
  return parseHaulMode(value) ?? fallback;
}
