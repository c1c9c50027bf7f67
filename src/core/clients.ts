/**
 * Client registry: the kernel's netlink client indices (6 bits → at most 64) that
 * registered with REG_PID, with what they told us, plus the per-client header
 * sequence counter the daemon stamps on its own messages (as rdma-core does:
 * starting at 0 for each client index).
 */

export const MAX_CLIENTS = 64;

export interface ClientInfo {
  readonly index: number;
  valid: boolean;
  ifname: string;
  ibdev: string;
  ulib: string;
  registrations: number;
  lastRegisteredAtMs: number;
  /** Next nlmsg_seq the daemon puts in headers for this client. */
  nextSeq: number;
}

export type RegisterResult = { ok: true; first: boolean } | { ok: false; reason: string };

export class ClientRegistry {
  private readonly clients: ClientInfo[] = [];

  constructor() {
    for (let i = 0; i < MAX_CLIENTS; i++) {
      this.clients.push({
        index: i,
        valid: false,
        ifname: '',
        ibdev: '',
        ulib: '',
        registrations: 0,
        lastRegisteredAtMs: 0,
        nextSeq: 0,
      });
    }
  }

  get(index: number): ClientInfo | undefined {
    return this.clients[index];
  }

  /** Header seq for the next daemon message to this client (post-increment, wraps at 2^32). */
  takeSeq(index: number): number {
    const c = this.clients[index & 0x3f]!;
    const s = c.nextSeq;
    c.nextSeq = (s + 1) >>> 0;
    return s;
  }

  /**
   * REG_PID: the first registration of a client index records its data; later ones
   * must carry the same user-library name (else IWPM_USER_LIB_INFO_ERR).
   */
  register(index: number, r: { ifname: string; ibdev: string; ulib: string }, nowMs: number): RegisterResult {
    const c = this.clients[index];
    if (!c) return { ok: false, reason: `client index ${index} out of range` };
    if (c.valid && c.ulib !== r.ulib) {
      return { ok: false, reason: `user library "${r.ulib}" differs from the registered "${c.ulib}"` };
    }
    const first = !c.valid;
    if (first) {
      c.valid = true;
      c.ulib = r.ulib;
    }
    // The latest device names are kept for display; the reply echoes the request's own name.
    c.ifname = r.ifname;
    c.ibdev = r.ibdev;
    c.registrations++;
    c.lastRegisteredAtMs = nowMs;
    return { ok: true, first };
  }

  registered(): ClientInfo[] {
    return this.clients.filter((c) => c.valid);
  }
}
