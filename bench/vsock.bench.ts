/**
 * virtio-vsock host-side throughput with the mock driver (no KVM): one stream connection, bytes
 * moved through the device between a host VsockSocket and a mock guest that keeps 64 KiB receive
 * buffers posted and returns credit at once. Measures the device, the virtqueues and the Duplex
 * plumbing; the guest side costs little (it only reads headers and counts). Prints numbers, judges
 * nothing. Target (issue #9): >= 1 GiB/s.
 *
 *   node -r bench/register-ts.js bench/vsock.bench.ts   (or: node bench/run.js vsock)
 */
import {
  VIRTIO_VSOCK_OP_CREDIT_UPDATE,
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_OP_RW,
  checkVsockOptions,
  createVsockDevice,
  type VsockSocket,
} from '../lib/devices/vsock';
import { MockVsockGuest } from '../lib/testing/mock-vsock';

const SECONDS = Number(process.env.VSOCK_BENCH_SECONDS ?? 2);
const CHUNK = 256 * 1024;

function rig() {
  const device = createVsockDevice(checkVsockOptions({ guestCid: 3, bufferSize: 4 * 1024 * 1024 }), {
    timers: { setTimeout: (cb, ms) => setTimeout(cb, ms), clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout) },
    listenUnix: () => Promise.reject(new Error('unused')),
    connectUnix: () => Promise.reject(new Error('unused')),
  });
  const guest = new MockVsockGuest(device, { rxBuffers: 128, rxPayload: 64 * 1024, txSlots: 128, txPayload: 64 * 1024 });
  return { device, guest };
}

/** Host writes, guest reads (host -> guest). */
async function hostToGuest(): Promise<number> {
  const { device, guest } = rig();
  let sock!: VsockSocket;
  device.listen(7, (s) => (sock = s));
  guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1, dstPort: 7, bufAlloc: 4 * 1024 * 1024 });
  guest.receive();
  let received = 0;
  let pumpQueued = false;
  guest.onInterrupt = () => {
    if (pumpQueued) return;
    pumpQueued = true;
    // On the next turn, as a guest's interrupt handler would run: a microtask ping-pong between
    // guest and device would never let the timer that ends the run fire.
    setImmediate(() => {
      pumpQueued = false;
      let got = 0;
      for (const p of guest.receive(false)) if (p.hdr.op === VIRTIO_VSOCK_OP_RW) got += p.payload.length;
      if (got > 0) {
        received += got;
        // The guest consumed it: credit back at once.
        guest.send({ op: VIRTIO_VSOCK_OP_CREDIT_UPDATE, srcPort: 1, dstPort: 7, bufAlloc: 4 * 1024 * 1024, fwdCnt: received >>> 0 });
      }
    });
  };
  const chunk = Buffer.alloc(CHUNK, 0x61);
  let running = true;
  const pumpWrites = () => {
    while (running && sock.write(chunk));
  };
  sock.on('drain', pumpWrites);
  const t0 = process.hrtime.bigint();
  pumpWrites();
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  running = false;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const bytes = received;
  sock.destroy();
  await device.close();
  return bytes / secs;
}

/** Guest writes, host reads (guest -> host). */
async function guestToHost(): Promise<number> {
  const { device, guest } = rig();
  let sock!: VsockSocket;
  device.listen(7, (s) => (sock = s));
  guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1, dstPort: 7, bufAlloc: 4 * 1024 * 1024 });
  guest.receive();
  let read = 0;
  sock.on('data', (c: Buffer) => (read += c.length));
  const payload = Buffer.alloc(64 * 1024, 0x62);
  let sent = 0;
  let hostBuf = 4 * 1024 * 1024;
  let hostFwd = 0;
  let running = true;
  const pump = () => {
    for (const p of guest.receive(false)) {
      hostBuf = p.hdr.bufAlloc;
      hostFwd = p.hdr.fwdCnt;
    }
    while (running) {
      const credit = hostBuf - ((sent - hostFwd) >>> 0);
      if (credit < payload.length) break;
      if (!guest.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1, dstPort: 7, bufAlloc: 65536, fwdCnt: 0 }, payload)) break;
      sent = (sent + payload.length) >>> 0;
    }
  };
  let queued = false;
  guest.onInterrupt = () => {
    if (queued) return;
    queued = true;
    setImmediate(() => {
      queued = false;
      pump();
    });
  };
  const t0 = process.hrtime.bigint();
  pump();
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  running = false;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const bytes = read;
  sock.destroy();
  await device.close();
  return bytes / secs;
}

async function main(): Promise<void> {
  console.log(`vsock: one stream connection through the device, mock driver, ${SECONDS}s each`);
  for (const [name, fn] of [['host -> guest (256 KiB writes, 64 KiB rx buffers)', hostToGuest], ['guest -> host (64 KiB packets)', guestToHost]] as const) {
    const rate = await fn();
    console.log(`  ${name.padEnd(50)} ${(rate / 2 ** 30).toFixed(2).padStart(6)} GiB/s`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
