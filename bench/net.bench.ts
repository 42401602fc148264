/**
 * virtio-net host-side throughput with the mock driver (no KVM): the device and its queues, the
 * TAP backend's readv/writev into guest memory, the VirtualSwitch, and the MMDS round trip.
 * Prints numbers, judges nothing. Targets to compare with: ≥ 10 Gbit/s per core at 64 KiB
 * (TSO) frames through the TAP, ≥ 300k frames/s at 64 bytes, MMDS round trip ≤ 200 µs.
 *
 *   node -r bench/register-ts.js bench/net.bench.ts   (or: node bench/run.js net)
 *
 * Cases:
 *   tap tx        guest → device → TAP in a network namespace; the kernel drops the frames at IP
 *                 input (addressed to another MAC), so this is the transmit path alone.
 *   tap tx→rx     guest A → TAP A → bridge (in the namespace) → TAP B → guest B: both devices'
 *                 transmit and receive paths and the kernel's forwarding, all on this one thread
 *                 (the kernel work runs in our syscalls), GSO frames kept whole end to end.
 *   tap rx        a sender in the namespace (AF_PACKET on the TAP, PACKET_VNET_HDR for GSO frames;
 *                 a small C program with sendmmsg when a C compiler is found, else python3) →
 *                 TAP → device → guest: the receive path alone; the sender runs in its own
 *                 process, so "per core" counts only this process's CPU time.
 *   switch        guest A → VirtualSwitch → guest B (link backends: frames copied in JS).
 *   mmds          GET round trip: request frame in, response frames out, ACK (manual scheduler:
 *                 processing cost) and with setImmediate between steps (event-loop latency).
 * CPU per GB is process CPU time (user + system, so kernel work in our syscalls counts) per
 * 10^9 bytes of frames moved. The mock driver's own work (refilling rings) is included.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { GuestMemory } from '../lib/memory/guest-memory';
import { MmioTransport } from '../lib/virtio/mmio';
import { BumpAllocator, MockMmioDriver, type MockVirtqueue } from '../lib/testing/mock-driver';
import { GuestTcpClient } from '../lib/testing/mock-net';
import {
  MmdsStore,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_TCPV4,
  checkMmdsOptions,
  checkNicOptions,
  createNetDevice,
  encodeVnetHeader,
  type NetDevice,
  type NetHost,
} from '../lib/devices/net';
import { VirtualSwitch } from '../lib/net/switch';
import { loadNative } from '../lib/native/binding';
import { foldChecksum, onesSum } from '../lib/devices/net/mmds/packet';
import { NativeNetHost } from '../lib/vm/net-host';

const SECONDS = Number(process.env.NET_BENCH_SECONDS ?? 2);
const QUEUE = 256;
const MAC_A = Uint8Array.from([0x06, 0, 0, 0, 0, 0x0a]);
const MAC_B = Uint8Array.from([0x06, 0, 0, 0, 0, 0x0b]);
const NOBODY = Uint8Array.from([0x06, 0, 0, 0, 0, 0xee]);

const noIrq = { setLevel: () => {}, trigger: () => {} };
const turn = () => new Promise<void>((r) => setImmediate(r));

/** One guest: memory, device, rings; transmit buffers pre-filled with one frame. */
class Guest {
  readonly mem = GuestMemory.anonymous(96 << 20);
  readonly alloc = new BumpAllocator(this.mem);
  readonly device: NetDevice;
  readonly transport: MmioTransport;
  readonly driver: MockMmioDriver;
  readonly rxq: MockVirtqueue;
  readonly txq: MockVirtqueue;
  readonly rxBuf = new Map<number, { addr: number; len: number }>();
  private txAddr = 0;
  private txLen = 0;
  rxFrames = 0;
  rxBytes = 0;
  txQueued = 0;

  constructor(device: NetDevice, defer?: (fn: () => void) => void) {
    this.device = device;
    this.transport = new MmioTransport(device, { mem: this.mem, irq: noIrq, ...(defer ? { defer } : {}) });
    this.driver = new MockMmioDriver(this.transport, this.mem);
    [this.rxq, this.txq] = this.driver.bringUp(this.alloc, [QUEUE, QUEUE]);
  }

  /** Posts `n` receive buffers of `size` bytes. */
  postRx(n: number, size: number): void {
    for (let i = 0; i < n; i++) {
      const addr = this.alloc.alloc(size, 64);
      const head = this.rxq.addChain([{ addr, len: size, write: true }], false);
      this.rxBuf.set(head, { addr, len: size });
    }
    this.rxq.publish();
    this.driver.notify(0);
  }

  /** The frame every transmit carries (one buffer, shared by all chains: the device only reads it). */
  setTxFrame(frame: Uint8Array, header: Uint8Array = new Uint8Array(12)): void {
    this.txLen = 12 + frame.length;
    this.txAddr = this.alloc.alloc(this.txLen, 64);
    this.mem.write(this.txAddr, header);
    this.mem.write(this.txAddr + 12, frame);
  }

  /** Reclaims used transmit chains and queues as many new ones as fit; one notification. */
  pumpTx(max = QUEUE): number {
    this.txq.readUsed();
    let n = 0;
    while (this.txq.freeCount > 0 && n < max) {
      this.txq.addChain([{ addr: this.txAddr, len: this.txLen }], false);
      n++;
    }
    if (n > 0) {
      this.txq.publish();
      this.txQueued += n;
      this.driver.notify(1);
    }
    return n;
  }

  /** Consumes received frames (counting them) and re-posts their buffers. */
  drainRx(): number {
    const used = this.rxq.readUsed();
    if (used.length === 0) return 0;
    let frames = 0;
    for (let i = 0; i < used.length; ) {
      const first = this.rxBuf.get(used[i].id)!;
      const nb = Math.max(1, this.mem.readU16(first.addr + 10));
      let bytes = -12;
      for (let k = 0; k < nb && i + k < used.length; k++) bytes += used[i + k].len;
      this.rxBytes += bytes;
      frames++;
      i += nb;
    }
    for (const u of used) {
      const b = this.rxBuf.get(u.id)!;
      this.rxBuf.delete(u.id);
      this.rxBuf.set(this.rxq.addChain([{ addr: b.addr, len: b.len, write: true }], false), b);
    }
    this.rxq.publish();
    this.rxq.setUsedEvent(this.rxq.lastUsedIdx);
    this.driver.notify(0);
    this.rxFrames += frames;
    return frames;
  }
}

/** A UDP datagram in an Ethernet frame, with a valid IPv4 header (bridges may check it). */
function ethernet(dst: Uint8Array, src: Uint8Array, len: number): Uint8Array {
  const f = new Uint8Array(len);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = 0x08; // IPv4
  f[14] = 0x45;
  new DataView(f.buffer).setUint16(16, len - 14);
  f[22] = 64;
  f[23] = 17; // UDP
  f.set([10, 215, 0, 2], 26);
  f.set([10, 215, 0, 3], 30);
  ipChecksum(f);
  new DataView(f.buffer).setUint16(34, 5000);
  new DataView(f.buffer).setUint16(36, 9);
  new DataView(f.buffer).setUint16(38, len - 34);
  return f;
}

function ipChecksum(f: Uint8Array): void {
  const s = foldChecksum(onesSum(f, 14, 34));
  f[24] = s >> 8;
  f[25] = s & 0xff;
}

/** A 64 KiB TCP segment as a GSO frame (the kernel would cut it into 1448-byte segments). */
function tsoFrame(dst: Uint8Array, src: Uint8Array, len: number): { frame: Uint8Array; header: Uint8Array } {
  const f = new Uint8Array(len);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = 0x08;
  f[14] = 0x45;
  new DataView(f.buffer).setUint16(16, len - 14);
  f[20] = 0x40;
  f[22] = 64;
  f[23] = 6;
  f.set([10, 215, 0, 2], 26);
  f.set([10, 215, 0, 3], 30);
  f[46] = 0x50;
  f[47] = 0x10;
  ipChecksum(f);
  const header = encodeVnetHeader({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 });
  return { frame: f, header };
}

function cpuSeconds(start: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(start);
  return (d.user + d.system) / 1e6;
}

/**
 * Prints wall-clock rates and rates per CPU-second ("per core": the machine may be shared, so the
 * wall-clock rate depends on what else runs; everything here runs on this one thread, kernel
 * work in our syscalls included).
 */
function report(name: string, frames: number, bytes: number, secs: number, cpu: number): void {
  const k = (n: number) => `${(n / 1000).toFixed(0)}k`.padStart(6);
  const g = (n: number) => n.toFixed(2).padStart(6);
  const cpuPerGb = bytes > 0 ? cpu / (bytes / 1e9) : 0;
  console.log(
    `  ${name.padEnd(30)} per core: ${k(frames / cpu)} frames/s ${g((bytes * 8) / cpu / 1e9)} Gbit/s | ` +
      `wall: ${k(frames / secs)} frames/s ${g((bytes * 8) / secs / 1e9)} Gbit/s, CPU ${(cpu / secs * 100).toFixed(0).padStart(3)}% | ` +
      `${cpuPerGb.toFixed(2)} CPU-s/GB`,
  );
}

// --- Network namespace setup --------------------------------------------------------------------

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr || r.error}`);
}

function tapUnavailable(): string | null {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return 'not root';
  if (spawnSync('ip', ['-V']).status !== 0) return '`ip` missing';
  return null;
}

class Namespace {
  readonly ns = `kt-nb-${process.pid}`;
  readonly taps: string[] = [];
  constructor() {
    this.cleanup();
    ip('netns', 'add', this.ns);
    ip('-n', this.ns, 'link', 'set', 'lo', 'up');
  }
  /** A TAP in our namespace, for a device to open; moved in with {@link adopt}. */
  tap(tag: string): string {
    const name = `ktb${process.pid % 10000}${tag}`;
    spawnSync('ip', ['link', 'del', name]);
    ip('tuntap', 'add', 'dev', name, 'mode', 'tap');
    this.taps.push(name);
    return name;
  }
  adopt(name: string, mtu: number, addr?: string, master?: string): void {
    ip('link', 'set', name, 'netns', this.ns);
    ip('-n', this.ns, 'link', 'set', name, 'mtu', String(mtu), 'txqueuelen', '2000');
    if (addr) ip('-n', this.ns, 'addr', 'add', addr, 'dev', name);
    if (master) ip('-n', this.ns, 'link', 'set', name, 'master', master);
    ip('-n', this.ns, 'link', 'set', name, 'up');
  }
  bridge(name: string): void {
    ip('-n', this.ns, 'link', 'add', name, 'type', 'bridge');
    ip('-n', this.ns, 'link', 'set', name, 'mtu', '65000', 'up');
    // Hosts with br_netfilter would pass bridged frames through iptables: not in our namespace.
    for (const t of ['iptables', 'ip6tables', 'arptables']) {
      spawnSync('ip', ['netns', 'exec', this.ns, 'sh', '-c', `echo 0 > /proc/sys/net/bridge/bridge-nf-call-${t}`]);
    }
  }
  cleanup(): void {
    spawnSync('ip', ['netns', 'del', this.ns]);
    for (const t of this.taps) spawnSync('ip', ['link', 'del', t]);
  }
}

// --- Cases -----------------------------------------------------------------------------------------

async function tapTx(host: NetHost, size: 'small' | 'tso'): Promise<void> {
  const ns = new Namespace();
  try {
    const t = ns.tap('a');
    const a = new Guest(createNetDevice(checkNicOptions('a', { tap: t, mac: '06:00:00:00:00:0a', mtu: 65000 }), host));
    ns.adopt(t, 65000, '10.215.0.1/24');
    if (size === 'small') a.setTxFrame(ethernet(NOBODY, MAC_A, 60));
    else {
      const { frame, header } = tsoFrame(NOBODY, MAC_A, 65000);
      a.setTxFrame(frame, header);
    }
    const frameLen = size === 'small' ? 60 : 65000;
    for (let i = 0; i < 20; i++) a.pumpTx(); // warm up
    const start = a.device.metrics().txFrames;
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    let secs = 0;
    while (secs < SECONDS) {
      for (let i = 0; i < 16; i++) a.pumpTx();
      await turn();
      secs = Number(process.hrtime.bigint() - t0) / 1e9;
    }
    const cpu = cpuSeconds(cpu0);
    const m = a.device.metrics();
    const frames = m.txFrames - start;
    if (m.txErrors > 0) console.log(`  (tx errors: ${m.txErrors})`);
    report(`tap tx ${size === 'small' ? '64 B' : '64 KiB TSO'}`, frames, frames * frameLen, secs, cpu);
    await a.device.close();
  } finally {
    ns.cleanup();
  }
}

async function tapBridge(host: NetHost, size: 'small' | 'tso'): Promise<void> {
  const ns = new Namespace();
  try {
    const ta = ns.tap('a');
    const tb = ns.tap('b');
    const a = new Guest(createNetDevice(checkNicOptions('a', { tap: ta, mac: '06:00:00:00:00:0a', mtu: 65000 }), host));
    const b = new Guest(createNetDevice(checkNicOptions('b', { tap: tb, mac: '06:00:00:00:00:0b', mtu: 65000 }), host));
    ns.bridge('br0');
    ns.adopt(ta, 65000, undefined, 'br0');
    ns.adopt(tb, 65000, undefined, 'br0');
    // B's buffers: page-sized mergeable buffers, as Linux posts them.
    b.postRx(QUEUE, 4096);
    const frameLen = size === 'small' ? 60 : 65000;
    if (size === 'small') a.setTxFrame(ethernet(MAC_B, MAC_A, 60));
    else {
      const { frame, header } = tsoFrame(MAC_B, MAC_A, 65000);
      a.setTxFrame(frame, header);
    }
    // Let the bridge learn B's address, then run.
    b.setTxFrame(ethernet(MAC_A, MAC_B, 60));
    b.pumpTx(1);
    const perRound = size === 'small' ? 128 : 12;
    for (let i = 0; i < 20; i++) {
      a.pumpTx(perRound);
      await turn();
      b.drainRx();
    }
    const rx0 = b.rxFrames;
    const bytes0 = b.rxBytes;
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    let secs = 0;
    while (secs < SECONDS) {
      a.pumpTx(perRound);
      await turn();
      b.drainRx();
      secs = Number(process.hrtime.bigint() - t0) / 1e9;
    }
    const cpu = cpuSeconds(cpu0);
    const frames = b.rxFrames - rx0;
    const mb = b.device.metrics();
    report(`tap tx→bridge→rx ${size === 'small' ? '64 B' : '64 KiB TSO'}`, frames, b.rxBytes - bytes0, secs, cpu);
    const ma = a.device.metrics();
    const lost = ma.txFrames - mb.rxFrames;
    if (mb.rxDropsTruncated > 0 || lost > perRound * 2) console.log(`    (sent ${ma.txFrames}, received ${mb.rxFrames}, truncated ${mb.rxDropsTruncated}: the rest dropped in the kernel)`);
    void frameLen;
    await a.device.close();
    await b.device.close();
  } finally {
    ns.cleanup();
  }
}

/** Python sender: writes `frame` (hex) to interface `dev` as fast as it can, with a virtio header for GSO. */
const SENDER = `
import socket, sys, struct, time
dev, frame, gso = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
if gso:
    s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR
    # struct virtio_net_hdr: NEEDS_CSUM, GSO_TCPV4, hdr_len 54, gso_size 1448, csum_start 34, csum_offset 16
    frame = struct.pack('<BBHHHH', 1, 1, 54, 1448, 34, 16) + frame
s.bind((dev, 0))
end = time.time() + float(sys.argv[4])
send = s.send
while time.time() < end:
    for _ in range(256):
        try:
            send(frame)
        except BlockingIOError:
            pass
        except OSError:
            time.sleep(0.0001)
`;

/** The same sender in C, 64 frames per sendmmsg (much faster than python's loop). */
const C_SENDER = `
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <arpa/inet.h>
#include <unistd.h>
int main(int argc, char **argv) {
  static unsigned char f[70000];
  size_t n = 0, h = 0;
  int gso = atoi(argv[3]);
  if (gso) { unsigned char hdr[10] = {1, 1, 54, 0, 0xa8, 5, 34, 0, 16, 0}; memcpy(f, hdr, 10); h = 10; }
  for (const char *p = argv[2]; p[0] && p[1]; p += 2) { unsigned v; sscanf(p, "%2x", &v); f[h + n++] = (unsigned char)v; }
  int s = socket(AF_PACKET, SOCK_RAW, 0);
  if (s < 0) return 1;
  if (gso) { int one = 1; if (setsockopt(s, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one)) return 1; }
  struct sockaddr_ll a = {0};
  a.sll_family = AF_PACKET; a.sll_ifindex = if_nametoindex(argv[1]); a.sll_protocol = htons(0x0800);
  if (bind(s, (struct sockaddr *)&a, sizeof a)) return 1;
  struct iovec iov = { f, h + n };
  struct mmsghdr m[64];
  memset(m, 0, sizeof m);
  for (int i = 0; i < 64; i++) { m[i].msg_hdr.msg_iov = &iov; m[i].msg_hdr.msg_iovlen = 1; }
  time_t end = time(0) + atoi(argv[4]);
  while (time(0) < end) if (sendmmsg(s, m, 64, 0) < 0) usleep(50);
  return 0;
}
`;

/** Compiles the C sender once; null when no compiler works. */
let senderBinary: string | null | undefined;
function cSender(): string | null {
  if (senderBinary !== undefined) return senderBinary;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kt-net-bench-'));
  const src = path.join(dir, 'sender.c');
  fs.writeFileSync(src, C_SENDER);
  const bin = path.join(dir, 'sender');
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  const built = spawnSync('cc', ['-O2', '-o', bin, src]).status === 0 ? bin : null;
  senderBinary = built;
  return built;
}

async function tapRx(host: NetHost, size: 'small' | 'tso'): Promise<void> {
  const bin = cSender();
  if (bin === null && spawnSync('python3', ['-c', 'import socket; socket.AF_PACKET']).status !== 0) {
    console.log('  tap rx: skipped (a C compiler or python3 with AF_PACKET is needed for the sender)');
    return;
  }
  const ns = new Namespace();
  try {
    const tb = ns.tap('r');
    const b = new Guest(createNetDevice(checkNicOptions('b', { tap: tb, mac: '06:00:00:00:00:0b', mtu: 65000 }), host));
    ns.adopt(tb, 65000, '10.216.0.1/24');
    b.postRx(QUEUE, 4096);
    const frame = size === 'small' ? ethernet(MAC_B, MAC_A, 60) : tsoFrame(MAC_B, MAC_A, 65000).frame;
    const { spawn } = await import('child_process');
    const args = [tb, Buffer.from(frame).toString('hex'), size === 'tso' ? '1' : '0', String(Math.ceil(SECONDS + 2))];
    const cmd = bin !== null ? [bin, ...args] : ['python3', '-c', SENDER, ...args];
    const sender = spawn('ip', ['netns', 'exec', ns.ns, ...cmd], { stdio: ['ignore', 'ignore', 'inherit'] });
    const exited = new Promise<void>((r) => sender.on('exit', () => r()));
    // Warm up until frames flow.
    for (let t = Date.now(); b.rxFrames < 1000 && Date.now() - t < 1000; ) {
      await new Promise((r) => setTimeout(r, 1));
      b.drainRx();
    }
    const rx0 = b.rxFrames;
    const bytes0 = b.rxBytes;
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    let secs = 0;
    while (secs < SECONDS) {
      await turn();
      b.drainRx();
      secs = Number(process.hrtime.bigint() - t0) / 1e9;
    }
    const cpu = cpuSeconds(cpu0);
    report(`tap rx ${size === 'small' ? '64 B' : '64 KiB GSO'} (${bin !== null ? 'C' : 'py'} sender)`, b.rxFrames - rx0, b.rxBytes - bytes0, secs, cpu);
    const m = b.device.metrics();
    if (m.rxDropsTruncated > 0) console.log(`    (truncated: ${m.rxDropsTruncated})`);
    sender.kill();
    await exited;
    await b.device.close();
  } finally {
    ns.cleanup();
  }
}

async function switchCase(size: 'small' | 'large'): Promise<void> {
  const sw = new VirtualSwitch({ portQueueFrames: 1024 });
  const none = {} as NetHost;
  const mtu = 65000;
  const a = new Guest(createNetDevice(checkNicOptions('a', { link: sw, mac: '06:00:00:00:00:0a', mtu }), none));
  const b = new Guest(createNetDevice(checkNicOptions('b', { link: sw, mac: '06:00:00:00:00:0b', mtu }), none));
  b.postRx(QUEUE, 4096);
  await turn();
  const frameLen = size === 'small' ? 60 : 65000;
  a.setTxFrame(ethernet(MAC_B, MAC_A, frameLen));
  b.setTxFrame(ethernet(MAC_A, MAC_B, 60));
  b.pumpTx(1);
  const perRound = size === 'small' ? 128 : 12;
  for (let i = 0; i < 20; i++) {
    a.pumpTx(perRound);
    b.drainRx();
  }
  const rx0 = b.rxFrames;
  const bytes0 = b.rxBytes;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  let secs = 0;
  let rounds = 0;
  while (secs < SECONDS) {
    a.pumpTx(perRound);
    b.drainRx();
    if (++rounds % 64 === 0) {
      await turn();
      secs = Number(process.hrtime.bigint() - t0) / 1e9;
    }
  }
  const cpu = cpuSeconds(cpu0);
  report(`switch ${size === 'small' ? '64 B' : '64 KiB'}`, b.rxFrames - rx0, b.rxBytes - bytes0, secs, cpu);
  await a.device.close();
  await b.device.close();
  sw.close();
}

async function mmdsCase(): Promise<void> {
  const cfg = checkMmdsOptions({ version: 'v2', nics: ['eth0'] }, ['eth0']);
  const store = new MmdsStore(cfg);
  store.set({ latest: { 'meta-data': { 'instance-id': 'i-0123456789abcdef0', 'local-ipv4': '172.16.0.2' } } });
  const queue: (() => void)[] = [];
  const manual = (fn: () => void) => void queue.push(fn);
  for (const mode of ['manual', 'event loop'] as const) {
    const sw = new VirtualSwitch(); // unused link: the NIC needs a backend; MMDS traffic never reaches it
    const dev = createNetDevice(checkNicOptions('eth0', { link: sw, mac: '06:00:ac:10:00:02' }), {} as NetHost, { mmds: store });
    const g = new Guest(dev, mode === 'manual' ? manual : undefined);
    g.postRx(QUEUE, 2048);
    const client = new GuestTcpClient({ mac: Uint8Array.from([6, 0, 0xac, 0x10, 0, 2]), ip: 0xac100002, serverIp: 0xa9fea9fe, serverPort: 80 });
    const rxFrames: Uint8Array[] = [];
    const collect = () => {
      const used = g.rxq.readUsed();
      for (const u of used) {
        const addr = g.rxBuf.get(u.id)!.addr;
        rxFrames.push(g.mem.read(addr + 12, u.len - 12));
        g.rxq.addChain([{ addr, len: 2048, write: true }], false);
        g.rxBuf.set(u.id, { addr, len: 2048 });
      }
      if (used.length) {
        g.rxq.publish();
        g.driver.notify(0);
      }
    };
    const txBufs: number[] = [];
    const send = (f: Uint8Array) => {
      g.txq.readUsed();
      const addr = txBufs.pop() ?? g.alloc.alloc(2048, 64);
      g.mem.write(addr, new Uint8Array(12));
      g.mem.write(addr + 12, f);
      g.txq.addChain([{ addr, len: 12 + f.length }]);
      g.driver.notify(1);
      txBufs.unshift(addr);
    };
    const settle = async () => {
      if (mode === 'manual') while (queue.length) queue.shift()!();
      else await turn();
      collect();
      for (const f of rxFrames.splice(0)) client.input(f);
    };
    send(client.arp());
    await settle();
    send(client.connect());
    await settle();
    for (const f of client.takeOutbox()) send(f);
    await settle();
    send(client.send(Buffer.from('PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 21600\r\n\r\n')));
    await settle();
    const token = client.text().split('\r\n\r\n')[1];
    for (const f of client.takeOutbox()) send(f);
    await settle();
    const req = Buffer.from(`GET /latest/meta-data/instance-id HTTP/1.1\r\nX-metadata-token: ${token}\r\nAccept: application/json\r\n\r\n`);
    const N = mode === 'manual' ? 20000 : 5000;
    let times: number[] = [];
    for (let i = 0; i < N + 500; i++) {
      client.received = [];
      const t0 = process.hrtime.bigint();
      send(client.send(req));
      while (!client.text().endsWith('"i-0123456789abcdef0"')) await settle();
      times.push(Number(process.hrtime.bigint() - t0) / 1000);
      for (const f of client.takeOutbox()) send(f); // the ACK, outside the timed round trip
      await settle();
    }
    times = times.slice(500).sort((x, y) => x - y);
    const pct = (p: number) => times[Math.floor((times.length - 1) * p)].toFixed(1);
    console.log(`  mmds GET round trip (${mode.padEnd(10)})   median ${pct(0.5)} µs  p99 ${pct(0.99)} µs  (${N} requests, keep-alive, v2 token)`);
    await dev.close();
    sw.close();
  }
}

async function main(): Promise<void> {
  console.log(`net: host-side virtio-net device throughput (mock driver, ${SECONDS} s per case)`);
  // NET_BENCH_CASES=tap-tx,tap-bridge,switch,mmds runs a subset.
  const only = process.env.NET_BENCH_CASES?.split(',');
  const run = (name: string) => only === undefined || only.includes(name);
  const why = tapUnavailable();
  if (why) console.log(`  tap cases skipped: ${why}`);
  else {
    const host = new NativeNetHost(loadNative());
    if (run('tap-tx')) {
      await tapTx(host, 'small');
      await tapTx(host, 'tso');
    }
    if (run('tap-rx')) {
      await tapRx(host, 'small');
      await tapRx(host, 'tso');
    }
    if (run('tap-bridge')) {
      await tapBridge(host, 'small');
      await tapBridge(host, 'tso');
    }
  }
  if (run('switch')) {
    await switchCase('small');
    await switchCase('large');
  }
  if (run('mmds')) await mmdsCase();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
