/**
 * The link bridge of jailed mode: frames across a real socket pair however the bytes are cut, a
 * hostile length from the child ends the link, and the user's own stream is detached (never
 * destroyed) when the VM's side goes away while a switch port is destroyed with it.
 */
import * as net from 'net';
import { PassThrough } from 'stream';
import { loadNative } from '../../lib/native/binding';
import { FramedLink, MAX_LINK_FRAME, childLink, joinLink } from '../../lib/jail/link-bridge';
import { bridgeSocket } from '../../lib/jail/vsock-bridge';
import { VirtualSwitch } from '../../lib/net/switch';

function pair(): [net.Socket, net.Socket] {
  const [a, b] = loadNative().socketPair('stream');
  return [bridgeSocket(a), bridgeSocket(b)];
}

function frames(stream: FramedLink, n: number): Promise<Buffer[]> {
  return new Promise((resolve) => {
    const got: Buffer[] = [];
    stream.on('data', (f: Buffer) => {
      got.push(f);
      if (got.length === n) resolve(got);
    });
  });
}

describe('FramedLink', () => {
  it('carries frames both ways, one Buffer per frame, however the byte stream is cut', async () => {
    const [a, b] = pair();
    const left = new FramedLink(a);
    const right = new FramedLink(b);
    const sent = Array.from({ length: 50 }, (_v, i) => Buffer.alloc(1 + ((i * 977) % 9000), i));
    const got = frames(right, sent.length);
    for (const f of sent) left.write(f);
    expect(await got).toEqual(sent);
    const back = frames(left, 1);
    right.write(Buffer.from('pong'));
    expect((await back)[0].toString()).toBe('pong');
    // Not frames: dropped, the link goes on.
    left.write(Buffer.alloc(0));
    left.write(Buffer.alloc(MAX_LINK_FRAME + 1));
    const after = frames(right, 1);
    left.write(Buffer.from('still up'));
    expect((await after)[0].toString()).toBe('still up');
    left.destroy();
    right.destroy();
  });

  it('a length beyond the limit from the other side ends the link', async () => {
    const [a, b] = pair();
    const victim = new FramedLink(a);
    const closed = new Promise<Error | undefined>((resolve) => {
      victim.on('error', (e) => resolve(e));
      victim.on('close', () => resolve(undefined));
    });
    const head = Buffer.alloc(4);
    head.writeUInt32LE(0xffffffff, 0);
    b.write(head);
    expect(String(await closed)).toMatch(/link frame of 4294967295 bytes/);
    b.destroy();
  });

  it('joins a switch port (destroyed with the VM side) or a user stream (only detached)', async () => {
    const sw = new VirtualSwitch();
    const [a, b] = pair();
    const end = joinLink(sw, new FramedLink(a));
    expect(sw.metrics().ports).toBe(1);
    end();
    await new Promise((r) => setImmediate(r));
    expect(sw.metrics().ports).toBe(0);
    b.destroy();

    const user = new PassThrough({ objectMode: true });
    const [c, d] = pair();
    const vmSide = new FramedLink(d);
    joinLink(user, new FramedLink(c));
    const got = frames(vmSide, 1);
    user.write(Buffer.from('to the guest'));
    expect((await got)[0].toString()).toBe('to the guest');
    vmSide.destroy();
    await new Promise((r) => setTimeout(r, 20));
    expect(user.destroyed).toBe(false);
    user.destroy();
  });

  it('the child attaches its end once', () => {
    const [a, b] = pair();
    const framed = new FramedLink(a);
    const sw = childLink(framed);
    expect(sw.attach()).toBe(framed);
    expect(() => sw.attach()).toThrow(/once/);
    framed.destroy();
    b.destroy();
  });
});
