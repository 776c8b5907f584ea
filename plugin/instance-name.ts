import { checkedName } from '../src/name-grammars.js';

// Incus' internal/instance ValidName for a non-snapshot name is shared/validate IsHostname: 1-63
// characters, letters, digits and '-', not starting with a digit or '-', not ending with '-'.
const INSTANCE_NAME = /^[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

/** `value` if Incus would take it as an instance name, else BadNameError. */
export function instanceName(value: unknown): string {
  return checkedName('instance name', value, INSTANCE_NAME, "an Incus instance name is 1-63 letters, digits and '-', starting with a letter and not ending with '-'");
}
