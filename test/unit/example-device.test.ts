/**
 * The example device (examples/ramdisk) unit-tested the way a user would test their own device:
 * through `kindling/testing`'s mock driver and the real virtio-mmio transport, without KVM.
 */
import { GuestMemory, MmioTransport, MockMmioDriver, BumpAllocator, MockIrq, type MockVirtqueue } from 'kindling/testing';
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { RamDisk } = require('../../examples/ramdisk/ramdisk-device');

const SECTOR = 512;

function rig(sectors = 8) {
  const mem = GuestMemory.anonymous(1 << 20);
  const disk = new RamDisk('ram0', Buffer.alloc(sectors * SECTOR));
  const irq = new MockIrq();
  const transport = new MmioTransport(disk, { mem, irq, defer: (fn: () => void) => fn() });
  const driver = new MockMmioDriver(transport, mem);
  const alloc = new BumpAllocator(mem);
  // Without EVENT_IDX every completion interrupts unless the driver suppresses it.
  const [q] = driver.bringUp(alloc, [16], 0n);
  return { mem, disk, irq, transport, driver, alloc, q };
}

/** One request: header, data, status; returns the status byte and the used length. */
function request(r: ReturnType<typeof rig>, q: MockVirtqueue, type: number, sector: number, data: Uint8Array | number) {
  const hdr = Buffer.alloc(16);
  hdr.writeUInt32LE(type, 0);
  hdr.writeBigUInt64LE(BigInt(sector), 8);
  const hdrAddr = r.alloc.allocData(hdr);
  const isRead = typeof data === 'number';
  const len = isRead ? (data as number) : (data as Uint8Array).length;
  const dataAddr = isRead ? r.alloc.alloc(len) : r.alloc.allocData(data as Uint8Array);
  const statusAddr = r.alloc.alloc(1);
  r.mem.writeU8(statusAddr, 0xff);
  q.addChain([{ addr: hdrAddr, len: 16 }, { addr: dataAddr, len, write: isRead }, { addr: statusAddr, len: 1, write: true }]);
  r.driver.notify(0);
  const [used] = q.readUsed();
  return { status: r.mem.readU8(statusAddr), used, bytes: r.mem.read(dataAddr, len) };
}

describe('example device: RamDisk', () => {
  it('announces a block device with its capacity', () => {
    const r = rig(8);
    expect(r.transport.read(0x008, 4)).toBe(2); // DeviceID: block
    expect(r.transport.read(0x100, 4)).toBe(8); // capacity, low half
  });

  it('writes and reads sectors, refuses requests past the end, raises interrupts', () => {
    const r = rig(8);
    const pattern = Buffer.alloc(SECTOR, 0x5a);
    expect(request(r, r.q, 1, 3, pattern)).toMatchObject({ status: 0, used: { len: 1 } });
    const read = request(r, r.q, 0, 3, SECTOR);
    expect(read.status).toBe(0);
    expect(read.used.len).toBe(SECTOR + 1);
    expect(Buffer.from(read.bytes).equals(pattern)).toBe(true);
    expect(request(r, r.q, 0, 8, SECTOR).status).toBe(1); // past the capacity
    expect(request(r, r.q, 99, 0, SECTOR).status).toBe(2); // unsupported
    expect(r.irq.triggers).toBe(4);
    expect(r.disk.metrics()).toEqual({ reads: 1, writes: 1, errors: 2 });
  });

  it('saves and restores its contents', () => {
    const a = rig(4);
    request(a, a.q, 1, 1, Buffer.alloc(SECTOR, 7));
    const b = new RamDisk('ram0', Buffer.alloc(4 * SECTOR));
    b.restoreState(JSON.parse(JSON.stringify(a.disk.saveState())));
    expect(b.data.equals(a.disk.data)).toBe(true);
    expect(() => b.restoreState({ data: 'not base64!' })).toThrow(expect.objectContaining({ code: 'BAD_STATE' }));
  });
});
