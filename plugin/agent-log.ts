/** How much a line of the agent's log matters: the journal's priorities err, warning, info. */
export type LogLevel = 'info' | 'warning' | 'error';

/**
 * Where the agent says what it does. 'error': a migration failed, or haul could not do what it
 * must (record, prune, repair); 'warning': it goes on, but not as asked (a peer's setting capped, a
 * guard weaker than it should be, a connection refused); 'info' otherwise.
 */
export type AgentLog = (line: string, level?: LogLevel) => void;
