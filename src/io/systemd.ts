/** sd_notify(3): one AF_UNIX datagram of KEY=VALUE lines to $NOTIFY_SOCKET. */
export function sdNotify(send: (path: string, data: Buffer) => number, state: string): number | undefined {
  const path = process.env.NOTIFY_SOCKET;
  if (!path) return undefined;
  return send(path, Buffer.from(state));
}
