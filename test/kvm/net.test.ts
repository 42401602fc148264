/**
 * virtio-net with a freestanding guest driver (net.elf) through the real transport: two guests
 * pinging each other across a VirtualSwitch while the host watches a port of it; the metadata
 * service (v2 token flow) on a link; ARP and ping to an address on a real TAP inside a network
 * namespace the test creates (root only).
 */
import { MicroVM, VirtualSwitch } from 'kindling';
import { describeKvm, guest, parseKt } from './harness';
import { NetnsTap } from '../unit/helpers/netns';

async function run(vm: MicroVM): Promise<{ output: string; reason: string }> {
  let output = '';
  vm.on('serial', (c) => { output += c.toString('latin1'); });
  await vm.start();
  const timer = setTimeout(() => void vm.stop(), 120_000);
  const info = await vm.wait();
  clearTimeout(timer);
  return { output, reason: info.reason };
}

describeKvm('virtio-net on KVM', () => {
  it('two guests on one VirtualSwitch ping each other; the host sees their frames on a port', async () => {
    const sw = new VirtualSwitch();
    const port = sw.attach();
    let seen = 0;
    port.on('data', () => { seen++; });
    const mk = (ip: string, peer: string, mac: string) => new MicroVM().memory(32)
      .kernel(guest('net'), { cmdline: `console=ttyS0 net.ip=${ip} net.peer=${peer} net.mmds=none net.linger=60000` })
      .nic('eth0', { link: sw, mac });
    const a = mk('10.77.0.2', '10.77.0.3', '06:00:0a:4d:00:02');
    const b = mk('10.77.0.3', '10.77.0.2', '06:00:0a:4d:00:03');
    const [ra, rb] = await Promise.all([run(a), run(b)]);
    for (const [r, vm] of [[ra, a], [rb, b]] as const) {
      const { lines, kv } = parseKt(r.output);
      expect(r.reason).toBe('reset');
      expect(lines).toContain('PASS net0 ping');
      expect(kv.get('net0 mac')).toBe(vm === a ? '06:00:0a:4d:00:02' : '06:00:0a:4d:00:03');
      const m = (await vm.metrics()).nics.eth0;
      expect(m.txFrames).toBeGreaterThan(0);
      expect(m.rxFrames).toBeGreaterThan(0);
      expect(m.transport.activations).toBe(1);
    }
    // Each guest answered the other's echoes.
    expect(Number(/echo_answered=(\d+)/.exec(ra.output)?.[1])).toBeGreaterThanOrEqual(3);
    expect(Number(/echo_answered=(\d+)/.exec(rb.output)?.[1])).toBeGreaterThanOrEqual(3);
    expect(seen).toBeGreaterThan(0); // the ARP broadcasts at least were flooded to the host port
    port.destroy();
  });

  it('serves the metadata service (v2 token flow) to a guest on a link, set before start', async () => {
    const sw = new VirtualSwitch();
    const vm = new MicroVM().memory(32)
      .kernel(guest('net'), { cmdline: 'console=ttyS0 net.peer=none' })
      .nic('eth0', { link: sw, mac: '06:00:0a:4d:00:09' })
      .mmds({ version: 'v2', nics: ['eth0'] });
    vm.setMetadata({ latest: { 'meta-data': { 'instance-id': 'i-kindling' } } });
    vm.updateMetadata({ latest: { 'meta-data': { zone: 'z1' } } });
    expect(vm.getMetadata()).toEqual({ latest: { 'meta-data': { 'instance-id': 'i-kindling', zone: 'z1' } } });
    const r = await run(vm);
    const { lines, kv } = parseKt(r.output);
    expect(lines).toContain('PASS net0 mmds');
    expect(kv.get('net0 mmds get_status')).toBe('200 body=i-kindling');
    const m = (await vm.metrics()).nics.eth0;
    expect(m.mmdsRequests).toBe(2);
  });

  const why = NetnsTap.unavailable();
  (why ? it.skip : it)(`ARP and ping through a TAP in a network namespace${why ? ` (skipped: ${why})` : ''}`, async () => {
    const ns = new NetnsTap('k');
    try {
      const vm = new MicroVM().memory(32)
        .kernel(guest('net'), { cmdline: 'console=ttyS0 net.ip=10.215.0.2 net.peer=10.215.0.1 net.mmds=none' })
        .nic('eth0', { tap: ns.tap, mac: '06:00:0a:d7:00:02' });
      let output = '';
      vm.on('serial', (c) => { output += c.toString('latin1'); });
      await vm.start();
      ns.moveIn('10.215.0.1/24');
      const timer = setTimeout(() => void vm.stop(), 120_000);
      const info = await vm.wait();
      clearTimeout(timer);
      expect(info.reason).toBe('reset');
      expect(parseKt(output).lines).toContain('PASS net0 ping');
      expect(ns.stat('rx_packets')).toBeGreaterThan(0);
    } finally {
      ns.cleanup();
    }
  });

  it('refuses a TAP that does not exist at the builder call', () => {
    expect(() => new MicroVM().nic('eth0', { tap: 'kt-no-such-tap' })).toThrow(expect.objectContaining({ code: 'TAP_NOT_FOUND' }));
  });
});
