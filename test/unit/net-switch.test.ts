import { VirtualSwitch, SwitchError, type SwitchPort } from '../../lib/net/switch';
import { checkNicOptions, createNetDevice, type NetDevice } from '../../lib/devices/net';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { MmioTransport } from '../../lib/virtio/mmio';
import { BumpAllocator, MockIrq, MockMmioDriver } from '../../lib/testing/mock-driver';
import { buildArpReply, buildArpRequest, parseArp, ARP_OP_REPLY, ARP_OP_REQUEST } from '../../lib/devices/net/mmds/packet';
import { FakeNetHost, ManualScheduler, BROADCAST, ethFrame, postRx, receive, sendFrame, type NetRig } from './helpers/fake-net';

const tick = () => new Promise<void>((r) => setImmediate(r));
const mac = (n: number) => Uint8Array.from([0x02, 0, 0, 0, 0, n]);

/** Attaches a port and records what the switch delivers to it. */
async function listen(sw: VirtualSwitch): Promise<{ port: SwitchPort; got: Buffer[] }> {
  const port = sw.attach() as SwitchPort;
  const got: Buffer[] = [];
  port.on('data', (f: Buffer) => got.push(f));
  await tick();
  return { port, got };
}

function frame(dst: Uint8Array, src: Uint8Array, len = 60): Buffer {
  return Buffer.from(ethFrame(dst, src, 0x0800, len - 14));
}

describe('VirtualSwitch', () => {
  it('floods broadcast and unknown unicast, forwards learned unicast, filters same-port traffic', async () => {
    const sw = new VirtualSwitch();
    const [a, b, c] = [await listen(sw), await listen(sw), await listen(sw)];
    a.port.write(frame(BROADCAST, mac(1)));
    await tick();
    expect([a.got.length, b.got.length, c.got.length]).toEqual([0, 1, 1]);
    b.port.write(frame(mac(1), mac(2)));
    await tick();
    expect([a.got.length, b.got.length, c.got.length]).toEqual([1, 1, 1]);
    c.port.write(frame(mac(9), mac(3))); // unknown destination: flooded
    await tick();
    expect([a.got.length, b.got.length, c.got.length]).toEqual([2, 2, 1]);
    a.port.write(frame(mac(1), mac(1))); // destination on the ingress port: nowhere
    await tick();
    expect([a.got.length, b.got.length, c.got.length]).toEqual([2, 2, 1]);
    const m = sw.metrics();
    expect(m).toEqual(expect.objectContaining({ ports: 3, forwarded: 1, flooded: 2, filtered: 1, learned: 3 }));
    expect(m.portMetrics[a.port.portId]).toEqual(expect.objectContaining({ rxFrames: 2, txFrames: 2, rxBytes: 120, txBytes: 120 }));
    expect(sw.macTable().map((e) => e.mac).sort()).toEqual(['02:00:00:00:00:01', '02:00:00:00:00:02', '02:00:00:00:00:03']);
  });

  it('ages out addresses, follows a moved address and bounds the table', async () => {
    let now = 0;
    const sw = new VirtualSwitch({ agingTimeMs: 1000, maxMacEntries: 2, clock: () => now });
    const [a, b, c] = [await listen(sw), await listen(sw), await listen(sw)];
    a.port.write(frame(BROADCAST, mac(1)));
    b.port.write(frame(mac(1), mac(2)));
    await tick();
    expect(a.got.length).toBe(1);
    expect(c.got.length).toBe(1);
    now = 1500; // mac(1) aged out: the next frame to it floods
    b.port.write(frame(mac(1), mac(2)));
    await tick();
    expect(c.got.length).toBe(2);
    expect(sw.metrics().aged).toBe(1);
    c.port.write(frame(BROADCAST, mac(2))); // mac(2) moves to c
    await tick();
    a.port.write(frame(mac(2), mac(1)));
    await tick();
    expect(c.got.at(-1)!.subarray(0, 6)).toEqual(Buffer.from(mac(2)));
    expect(sw.metrics().moved).toBe(1);
    a.port.write(frame(BROADCAST, mac(7))); // a third address evicts the least recently seen
    await tick();
    expect(sw.metrics().evicted).toBeGreaterThanOrEqual(1);
    expect(sw.metrics().macEntries).toBe(2);
  });

  it('drops invalid frames and frames for a port nobody reads beyond its queue', async () => {
    const sw = new VirtualSwitch({ portQueueFrames: 4 });
    const a = await listen(sw);
    const idle = sw.attach() as SwitchPort; // never read
    expect(sw.portNumber(idle)).toBe(idle.portId);
    expect(sw.portNumber(new VirtualSwitch().attach())).toBeUndefined();
    a.port.write(Buffer.alloc(10));
    a.port.write(frame(BROADCAST, Uint8Array.from([1, 0, 0, 0, 0, 1]))); // multicast source
    a.port.write('text');
    for (let i = 0; i < 10; i++) a.port.write(frame(BROADCAST, mac(1)));
    await tick();
    expect(sw.metrics().portMetrics[a.port.portId].rxInvalid).toBe(3);
    const m = idle.metrics();
    expect(m.txFrames).toBe(4);
    expect(m.txDrops).toBe(6);
    expect(idle.readableLength).toBe(4);
  });

  it('forgets a destroyed port and what it learned', async () => {
    const sw = new VirtualSwitch();
    const [a, b] = [await listen(sw), await listen(sw)];
    a.port.write(frame(BROADCAST, mac(1)));
    await tick();
    a.port.destroy();
    await tick();
    expect(sw.metrics().ports).toBe(1);
    expect(sw.macTable()).toEqual([]);
    expect(b.got.length).toBe(1);
  });

  it('connects switches in a tree and refuses loops', async () => {
    const [s1, s2, s3] = [new VirtualSwitch(), new VirtualSwitch(), new VirtualSwitch()];
    s1.connect(s2);
    const [, link23] = s2.connect(s3);
    expect(() => s3.connect(s1)).toThrow(SwitchError);
    expect(() => s1.connect(s1)).toThrow(expect.objectContaining({ code: 'LOOP' }));
    const a = await listen(s1);
    const c = await listen(s3);
    await tick();
    a.port.write(frame(BROADCAST, mac(1)));
    await tick();
    expect(c.got.length).toBe(1);
    c.port.write(frame(mac(1), mac(3)));
    await tick();
    expect(a.got.length).toBe(1);
    // Cutting a link allows a new one elsewhere.
    link23.destroy();
    await tick();
    expect(() => s3.connect(s1)).not.toThrow();
    s1.close();
    expect(() => s1.attach()).toThrow(expect.objectContaining({ code: 'CLOSED' }));
  });
});

describe('two VMs on one switch', () => {
  function vm(sw: VirtualSwitch, id: string, m: Uint8Array): NetRig {
    const mem = GuestMemory.anonymous(4 << 20);
    const alloc = new BumpAllocator(mem);
    const irq = new MockIrq();
    const sched = new ManualScheduler();
    const device: NetDevice = createNetDevice(checkNicOptions(id, { link: sw, mac: Array.from(m, (b) => b.toString(16).padStart(2, '0')).join(':') }), new FakeNetHost());
    const transport = new MmioTransport(device, { mem, irq, defer: sched.defer });
    const driver = new MockMmioDriver(transport, mem);
    const [rxq, txq] = driver.bringUp(alloc, [64, 64]);
    return { mem, alloc, irq, device, transport, driver, rxq, txq, sched, rxBufs: new Map() };
  }

  it('resolve each other with ARP and exchange frames, seen by a host port; no TAP involved', async () => {
    const sw = new VirtualSwitch();
    const a = vm(sw, 'a', mac(0xa));
    const b = vm(sw, 'b', mac(0xb));
    const host = await listen(sw);
    await tick();
    postRx(a, 16, 1536);
    postRx(b, 16, 1536);
    const ipA = 0x0a000001;
    const ipB = 0x0a000002;
    sendFrame(a, buildArpRequest(mac(0xa), ipA, ipB));
    await tick();
    const atB = receive(b);
    expect(atB).toHaveLength(1);
    const req = parseArp(atB[0].frame)!;
    expect(req.op).toBe(ARP_OP_REQUEST);
    expect(req.tpa).toBe(ipB);
    sendFrame(b, buildArpReply(mac(0xb), ipB, req.sha, req.spa));
    await tick();
    const atA = receive(a);
    expect(atA).toHaveLength(1);
    expect(parseArp(atA[0].frame)!.op).toBe(ARP_OP_REPLY);
    // The host port saw the broadcast request but not the unicast reply (learned, forwarded).
    expect(host.got.length).toBe(1);
    // The host injects a frame for A.
    host.port.write(frame(mac(0xa), mac(0x99), 100));
    await tick();
    expect(receive(a).map((f) => f.frame.length)).toEqual([100]);
    expect(a.device.metrics().rxFrames).toBe(2);
    expect(b.device.metrics().txFrames).toBe(1);
    await a.device.close();
    await tick();
    expect(sw.metrics().ports).toBe(2); // A's port left with its device
  });
});
