/** What haul asks of the local kernel: its TCP tables, who holds a socket, loopback ports only root may reach. */
export { canonicalEndpoint, connectionsSeenBy, establishedConnections, socketInodesOf, type TcpConnection } from './tcp-table.js';
export { expectPeerProcess, UnexpectedPeerError } from './socket-peer.js';
export { canGuardLoopbackPorts, guardLoopbackPort, guardNewLoopbackPort, LoopbackGuardError, type LoopbackGuard, type LoopbackGuardOptions } from './loopback-guard.js';
export { pickPrivilegedLoopbackPort, type PickedPort } from './loopback-ports.js';
export { hasEnded, identify, isRunning, statFields, type ProcessIdentity } from './process-identity.js';
export { killRestoreTree } from './process-tree.js';
export { mountPointsOf } from './mount-points.js';
