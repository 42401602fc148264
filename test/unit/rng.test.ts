import { GuestMemory } from '../../lib/memory/guest-memory';
import { MmioTransport } from '../../lib/virtio/mmio';
import { BumpAllocator, MockIrq, MockMmioDriver, type MockVirtqueue } from '../../lib/testing/mock-driver';
import { ENTROPY_MAX_REQUEST_BYTES, checkEntropyOptions, createEntropyDevice, type EntropyDevice, type EntropyHost } from '../../lib/devices/rng';
import { RateLimiter } from '../../lib/ratelimit';
import { createEntropyHost } from '../../lib/vm/rng-host';
import { VIRTIO_ID_RNG } from '../../lib/virtio/constants';
import { FakeTime } from './helpers/fake-time';

/** Deterministic "randomness": a counter, so tests can tell which bytes were written. */
function countingHost(): EntropyHost & { calls: number } {
  let next = 1;
  const h = {
    calls: 0,
    randomFill(view: Uint8Array) {
      h.calls++;
      for (let i = 0; i < view.length; i++) view[i] = next++ & 0xff || 1;
    },
  };
  return h;
}

function rig(host: EntropyHost = countingHost(), limiter?: RateLimiter) {
  const mem = GuestMemory.anonymous(4 * 1024 * 1024);
  const alloc = new BumpAllocator(mem);
  const device: EntropyDevice = createEntropyDevice(checkEntropyOptions({}), host, limiter);
  const irq = new MockIrq();
  const transport = new MmioTransport(device, { mem, irq });
  const driver = new MockMmioDriver(transport, mem);
  const [vq] = driver.bringUp(alloc, [16]);
  const request = (len: number): { head: number; addr: number } => {
    const addr = alloc.alloc(len, 16);
    mem.slice(addr, len).fill(0);
    return { head: vq.addChain([{ addr, len, write: true }]), addr };
  };
  return { mem, alloc, device, irq, transport, driver, vq: vq as MockVirtqueue, request };
}

describe('entropy options', () => {
  test('rateLimiter validated; unknown keys refused', () => {
    expect(checkEntropyOptions()).toEqual({});
    expect(checkEntropyOptions({ rateLimiter: { bandwidth: { size: 1000, refillTime: 100 } } })).toEqual({ rateLimiter: { bandwidth: { size: 1000, refillTime: 100 } } });
    expect(() => checkEntropyOptions({ rate: {} })).toThrow(expect.objectContaining({ code: 'UNKNOWN_OPTION' }));
    expect(() => checkEntropyOptions({ rateLimiter: { bandwidth: { size: -1, refillTime: 100 } } })).toThrow(expect.objectContaining({ code: 'INVALID_RATE_LIMITER' }));
    expect(() => checkEntropyOptions(5)).toThrow(expect.objectContaining({ code: 'INVALID_ENTROPY' }));
  });
});

describe('entropy device', () => {
  test('fills device-writable buffers and reports the length; requests are capped at 64 KiB', () => {
    const { device, mem, vq, driver, request } = rig();
    expect(device.deviceType).toBe(VIRTIO_ID_RNG);
    const a = request(100);
    const b = request(ENTROPY_MAX_REQUEST_BYTES + 4096);
    driver.notify(0);
    const used = vq.readUsed();
    expect(used).toEqual([{ id: a.head, len: 100 }, { id: b.head, len: ENTROPY_MAX_REQUEST_BYTES }]);
    expect(mem.slice(a.addr, 100).every((x) => x !== 0)).toBe(true);
    // Past the cap nothing is written.
    expect(mem.slice(b.addr + ENTROPY_MAX_REQUEST_BYTES, 4096).every((x) => x === 0)).toBe(true);
    expect(device.metrics()).toMatchObject({ requests: 2, bytes: 100 + ENTROPY_MAX_REQUEST_BYTES });
  });

  test('chains without writable bytes complete empty and are counted', () => {
    const { device, vq, driver, alloc } = rig();
    const addr = alloc.alloc(64);
    const head = vq.addChain([{ addr, len: 64 }]);
    driver.notify(0);
    expect(vq.readUsed()).toEqual([{ id: head, len: 0 }]);
    expect(device.metrics().malformedChains).toBe(1);
  });

  test('the real host CSPRNG fills the buffer', () => {
    const { mem, vq, driver, request } = rig(createEntropyHost());
    const a = request(4096);
    driver.notify(0);
    expect(vq.readUsed()).toEqual([{ id: a.head, len: 4096 }]);
    const bytes = mem.slice(a.addr, 4096);
    expect(new Set(bytes).size).toBeGreaterThan(200);
  });

  test('ops limiter: one request per token; the rest wait in the ring until the timer refills', () => {
    const time = new FakeTime();
    const limiter = new RateLimiter({ ops: { size: 2, refillTime: 1000 } }, { clock: time.clock, timers: time });
    const { device, vq, driver, request } = rig(countingHost(), limiter);
    for (let i = 0; i < 5; i++) request(16);
    driver.notify(0);
    expect(vq.readUsed()).toHaveLength(2);
    expect(device.metrics().throttles).toBe(1);
    time.advance(1000);
    expect(vq.readUsed()).toHaveLength(2);
    time.advance(1000);
    expect(vq.readUsed()).toHaveLength(1);
    expect(device.metrics().requests).toBe(5);
  });

  test('bandwidth limiter charges the bytes of each request', () => {
    const time = new FakeTime();
    const limiter = new RateLimiter({ bandwidth: { size: 1000, refillTime: 100 } }, { clock: time.clock, timers: time });
    const { device, vq, driver, request } = rig(countingHost(), limiter);
    for (let i = 0; i < 4; i++) request(400);
    driver.notify(0);
    expect(vq.readUsed()).toHaveLength(2);
    time.advance(100);
    expect(vq.readUsed()).toHaveLength(2);
    expect(device.metrics().bytes).toBe(1600);
    // A refused request gave its op token back: nothing is lost or double-charged.
    expect(limiter.metrics().bytesGranted).toBe(1600);
  });

  test('updateRateLimiter: lifting the limit serves what waited', () => {
    const time = new FakeTime();
    const limiter = new RateLimiter({ ops: { size: 1, refillTime: 60_000 } }, { clock: time.clock, timers: time });
    const { device, vq, driver, request } = rig(countingHost(), limiter);
    for (let i = 0; i < 3; i++) request(8);
    driver.notify(0);
    expect(vq.readUsed()).toHaveLength(1);
    device.updateRateLimiter({ ops: { size: 0, refillTime: 0 } });
    time.advance(0);
    expect(vq.readUsed()).toHaveLength(2);
  });

  test('a failing host completes the request empty; state is empty and checked', async () => {
    const { device, vq, driver, request } = rig({ randomFill: () => { throw new Error('getrandom failed'); } });
    const a = request(32);
    driver.notify(0);
    expect(vq.readUsed()).toEqual([{ id: a.head, len: 0 }]);
    expect(device.metrics().hostErrors).toBe(1);
    expect(device.saveState()).toEqual({});
    expect(() => device.restoreState({ x: 1 })).toThrow(expect.objectContaining({ code: 'BAD_STATE' }));
    device.restoreState({});
    await device.close();
    expect(() => device.updateRateLimiter({})).toThrow(expect.objectContaining({ code: 'CLOSED' }));
  });
});
