/**
 * The static guest agent (guest/agent) speaks the same protocol as the host client: run on the
 * host in --stdio mode (no vsock needed) and driven by InvokeClient over its stdin/stdout.
 */
import { execFileSync, spawn, type ChildProcess } from 'child_process';
import * as path from 'path';
import { Duplex } from 'stream';
import { InvokeClient } from '../../lib/invoke';

const AGENT_DIR = path.join(__dirname, '..', '..', 'guest', 'agent');
const AGENT = path.join(AGENT_DIR, 'out', 'kindling-agent');

beforeAll(() => {
  // The setup builds it; build it here too so the suite stands alone (quiet, incremental).
  execFileSync('make', ['-s', '-C', AGENT_DIR], { stdio: 'inherit' });
});

function agentClient(args: string[] = []): { client: InvokeClient; children: ChildProcess[] } {
  const children: ChildProcess[] = [];
  const client = new InvokeClient({
    connect: async () => {
      const child = spawn(AGENT, ['--stdio', ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
      children.push(child);
      return Duplex.from({ readable: child.stdout!, writable: child.stdin! });
    },
    timeoutMs: 10_000,
  });
  return { client, children };
}

describe('kindling-agent (static C agent) against the invoke client', () => {
  test('echo: JSON and bytes, many requests on one connection', async () => {
    const { client, children } = agentClient();
    await expect(client.invoke({ a: [1, 'two', { three: 3 }] })).resolves.toEqual({ a: [1, 'two', { three: 3 }] });
    const big = Buffer.alloc(200_000);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
    await expect(client.invoke(big)).resolves.toEqual(big);
    for (let i = 0; i < 20; i++) await expect(client.invoke({ i })).resolves.toEqual({ i });
    await expect(client.invoke(Buffer.alloc(0))).resolves.toEqual(Buffer.alloc(0));
    expect(children).toHaveLength(1);
    client.close();
  });

  test('handler command: stdin is the payload, stdout the answer; a failing handler is an AGENT_ERROR', async () => {
    const { client } = agentClient(['--', '/bin/sh', '-c', 'if [ "$KINDLING_INVOKE_KIND" = json ]; then cat; else tr a-z A-Z; fi']);
    await expect(client.invoke({ x: 1 })).resolves.toEqual({ x: 1 });
    await expect(client.invoke('shout')).resolves.toEqual(Buffer.from('SHOUT'));
    client.close();
    const failing = agentClient(['--', '/bin/sh', '-c', 'echo broken >&2; exit 3']).client;
    await expect(failing.invoke('x')).rejects.toMatchObject({ code: 'AGENT_ERROR', message: expect.stringMatching(/exit status 3: broken/) });
    await expect(failing.invoke('y')).rejects.toMatchObject({ code: 'AGENT_ERROR' });
    failing.close();
    const killed = agentClient(['--', '/bin/sh', '-c', 'kill -9 $$']).client;
    await expect(killed.invoke('x')).rejects.toMatchObject({ code: 'AGENT_ERROR', message: expect.stringMatching(/signal 9/) });
    killed.close();
  });

  test('oversize requests get an error frame (the agent reads the payload away); malformed ones an error frame and the end', async () => {
    const { client } = agentClient(['-m', '1000']);
    await expect(client.invoke(Buffer.alloc(1001))).rejects.toMatchObject({ code: 'AGENT_ERROR', message: expect.stringMatching(/too large/) });
    // A new connection afterwards works.
    await expect(client.invoke(Buffer.alloc(1000, 1))).resolves.toEqual(Buffer.alloc(1000, 1));
    client.close();
    const child = spawn(AGENT, ['--stdio'], { stdio: ['pipe', 'pipe', 'inherit'] });
    const out: Buffer[] = [];
    child.stdout!.on('data', (c: Buffer) => out.push(c));
    child.stdin!.end(Buffer.from('GET / HTTP/1.0\r\n\r\n'));
    await new Promise((r) => child.on('close', r));
    const reply = Buffer.concat(out);
    expect(reply[3]).toBe(0xff);
    expect(reply.subarray(12).toString()).toMatch(/bad frame/);
  });

  test('agent crash mid-request: AGENT_CLOSED', async () => {
    const { client, children } = agentClient(['--', '/bin/sh', '-c', 'sleep 5']);
    const p = client.invoke('x');
    await new Promise((r) => setTimeout(r, 100));
    children[0].kill('SIGKILL');
    await expect(p).rejects.toMatchObject({ code: 'AGENT_CLOSED' });
    client.close();
  });
});
