/** Library surface: the pure codecs and the kernel-side core, for tools and tests. */
export * from './codec/netlink.js';
export * from './codec/sockaddr.js';
export * from './codec/iwpm.js';
export { IwpmDaemon } from './core/daemon.js';
export { MappingTable } from './core/mappings.js';
export { PortReserver } from './core/ports.js';
export { ClientRegistry } from './core/clients.js';
