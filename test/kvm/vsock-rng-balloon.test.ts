/**
 * virtio-vsock (with the invoke agent), virtio-rng and virtio-balloon, each driven by its
 * freestanding guest through the real transport on KVM.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM, InvokeError } from 'kindling';
import { collectSerial, startVsockGuestAndInvoke, connectThroughUds, describeKvm, guest, invokeByHand, parseKt } from './harness';
import { removeSocketDirs, socketDir } from '../unit/helpers/socket-dir';

async function end(vm: MicroVM): Promise<string> {
  const timer = setTimeout(() => void vm.stop(), 60_000);
  const info = await vm.wait();
  clearTimeout(timer);
  return info.reason;
}

describeKvm('vsock, entropy and balloon on KVM', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-vrb-'));
  afterAll(() => {
    fs.rmSync(tmp, { recursive: true, force: true });
    removeSocketDirs();
  });

  it('vsock: a guest connection half-closed both ways, then invoke() against the guest agent', async () => {
    const vm = new MicroVM().memory(32).kernel(guest('vsock')).vsock({ guestCid: 3 });
    const { out, srv } = await startVsockGuestAndInvoke(vm);
    await expect(vm.invoke(Buffer.alloc(5000))).rejects.toBeInstanceOf(InvokeError);
    await expect(vm.invoke({}, { port: 4444, timeoutMs: 5000 })).rejects.toMatchObject({ code: 'CONNECT_FAILED' });
    await expect(vm.vsockConnect(4444)).rejects.toMatchObject({ name: 'VsockError' });
    await vm.invoke('quit');
    expect(await end(vm)).toBe('reset');
    srv.close();
    const { kv } = parseKt(out.text());
    expect(kv.get('vsock connect')).toBe('ok');
    expect(kv.get('vsock host_said')).toBe('hello from the host (you said hello from the guest)');
    expect(kv.get('vsock close')).toBe('rst');
    expect(Number(kv.get('vsock invokes'))).toBeGreaterThanOrEqual(13);
  });

  it('vsock: a program written for Firecracker reaches the guest through the Unix socket (CONNECT <port>)', async () => {
    const uds = path.join(socketDir(tmp), 'v.sock');
    const vm = new MicroVM().memory(32).kernel(guest('vsock'), { cmdline: 'console=ttyS0 vsock.host_port=0' }).vsock({ guestCid: 3, udsPath: uds });
    const out = collectSerial(vm);
    await vm.start();
    await out.waitFor('KT: vsock listening=1024');
    const { sock, answer } = await connectThroughUds(uds, 1024);
    expect(answer).toMatch(/^OK \d+\n$/);
    expect(await invokeByHand(sock, 7, { via: 'uds' })).toEqual({ id: 7, value: { via: 'uds' } });
    sock.destroy();
    await vm.invoke('quit');
    expect(await end(vm)).toBe('reset');
  });

  it('entropy: the guest reads random bytes, at most 64 KiB per request', async () => {
    const vm = new MicroVM().memory(32).kernel(guest('rng')).entropy({ rateLimiter: { ops: { size: 4, refillTime: 100 } } });
    const out = collectSerial(vm);
    await vm.start();
    expect(await end(vm)).toBe('reset');
    const { kv, lines } = parseKt(out.text());
    expect(lines).toContain('PASS rng random');
    expect(kv.get('rng big_len')).toBe('65536');
    expect(kv.get('rng bytes')).toBe(String(8 * 256));
    const m = (await vm.metrics()).devices.rng;
    expect(m.kind).toBe('virtio-rng');
    expect((m.metrics as { throttles: number }).throttles).toBeGreaterThan(0);
  });

  it('balloon: the guest inflates, host pages are released, the target changes while running', async () => {
    const vm = new MicroVM().memory(64).kernel(guest('balloon'), { cmdline: 'console=ttyS0 balloon.wait_target=1' })
      .balloon({ amountMib: 4, deflateOnOom: true, statsPollingIntervalS: 1 });
    const out = collectSerial(vm);
    await vm.start();
    await out.waitFor('KT: balloon waiting_for_target');
    const stats = await vm.balloonStats();
    expect(stats).toMatchObject({ targetPages: 1024, actualPages: 1024, majorFaults: 7 });
    await vm.updateBalloon({ amountMib: 6 });
    expect(await end(vm)).toBe('reset');
    const { kv } = parseKt(out.text());
    expect(kv.get('balloon inflated')).toBe('1536');
    expect(kv.get('balloon zeroed')).toBe('1024');
    expect(kv.get('balloon new_target')).toBe('1536');
    expect(kv.get('balloon deflated')).toBe('768 actual=768');
    const m = (await vm.metrics()).devices.balloon.metrics as { invalidPfns: number; duplicatePfns: number };
    expect(m.invalidPfns).toBe(1);
    expect(m.duplicatePfns).toBe(1);
    expect(() => new MicroVM().balloon({ amountMib: 1 } as never)).toThrow(expect.objectContaining({ code: 'INVALID_BALLOON' }));
  });
});
