/**
 * Control socket for iwpmctl: a unix stream socket; the client writes one command
 * line ("show mappings", "show clients", "show stats", "show status"), the server
 * answers with one JSON document and closes.
 */
import { chmodSync, unlinkSync } from 'node:fs';
import { type Server, createServer } from 'node:net';

export type ControlHandler = (command: string[]) => unknown;

export const DEFAULT_CONTROL_PATH = '/run/iwpmd.sock';
const MAX_REQUEST_BYTES = 4096;

export class ControlServer {
  private server?: Server;

  constructor(
    private readonly path: string,
    private readonly handler: ControlHandler,
  ) {}

  async start(): Promise<void> {
    try {
      unlinkSync(this.path); // a stale socket from a previous run
    } catch {
      /* none */
    }
    const server = createServer((conn) => {
      let buf = '';
      conn.setEncoding('utf8');
      conn.on('error', () => conn.destroy());
      conn.setTimeout(5000, () => conn.destroy());
      conn.on('data', (chunk: string) => {
        buf += chunk;
        if (buf.length > MAX_REQUEST_BYTES) {
          conn.end(JSON.stringify({ error: 'request too long' }) + '\n');
          return;
        }
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        const words = buf.slice(0, nl).trim().split(/\s+/).filter(Boolean);
        let answer: unknown;
        try {
          answer = this.handler(words);
        } catch (e) {
          answer = { error: (e as Error).message };
        }
        conn.end(JSON.stringify(answer) + '\n');
      });
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(this.path, 0o600);
  }

  close(): void {
    this.server?.close();
    this.server = undefined;
    try {
      unlinkSync(this.path);
    } catch {
      /* gone */
    }
  }
}
