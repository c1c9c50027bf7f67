/** Host settings the port reserver follows. */
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { type PortRange, parsePortRange, parseReservedPorts } from '../core/ports.js';

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

export function localPortRange(): PortRange | undefined {
  const t = read('/proc/sys/net/ipv4/ip_local_port_range');
  return t === undefined ? undefined : parsePortRange(t);
}

export function localReservedPorts(): Set<number> {
  return parseReservedPorts(read('/proc/sys/net/ipv4/ip_local_reserved_ports') ?? '');
}

/** Whether this process shares the network namespace of PID 1 (the initial one, normally). */
export function inInitialNetns(): boolean | undefined {
  try {
    return readlinkSync('/proc/self/ns/net') === readlinkSync('/proc/1/ns/net');
  } catch {
    return undefined;
  }
}

/** Whether the iw_cm module is loaded (or built in). */
export function iwcmLoaded(): boolean {
  return existsSync('/sys/module/iw_cm');
}
