/**
 * Every builder and update method, thrown arbitrary values: each call either succeeds or throws a
 * typed Kindling error (a ConfigError) at the call; nothing else escapes, nothing is accepted that
 * the machine would later refuse on validation (that half runs on KVM in test/kvm/builder.test.ts).
 */
import * as fc from 'fast-check';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM, KindlingError, ConfigError } from 'kindling';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-bprop-'));
const kernel = path.join(tmp, 'vmlinux');
const disk = path.join(tmp, 'disk.img');
fs.writeFileSync(kernel, Buffer.alloc(64));
fs.writeFileSync(disk, Buffer.alloc(4096));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Values near the valid ones, and anything at all. */
const num = fc.oneof(
  fc.integer({ min: -5, max: 70 }), fc.double(), fc.constantFrom(0, 1, 1.5, -1, 2 ** 53, 2 ** 31, NaN, Infinity, -0),
  fc.bigInt(), fc.string(), fc.constant(undefined), fc.constant(null),
);
const bucket = fc.oneof(
  fc.record({ size: num, refillTime: num }, { requiredKeys: [] }),
  fc.record({ size: num, refillTime: num, oneTimeBurst: num }),
  fc.dictionary(fc.string(), num),
  fc.anything(),
);
const limiter = fc.oneof(
  fc.record({ bandwidth: bucket, ops: bucket }, { requiredKeys: [] }),
  fc.dictionary(fc.constantFrom('bandwidth', 'ops', 'bandwith', 'Ops'), bucket),
  fc.anything(),
);
const bool = fc.oneof(fc.boolean(), fc.constantFrom(0, 1, 'yes', 'true', null), fc.anything());
const driveOpts = fc.oneof(
  fc.record({
    path: fc.oneof(fc.constant(disk), fc.constant(path.join(tmp, 'missing')), fc.constant(tmp), fc.anything()),
    readOnly: bool, root: bool, cacheType: fc.oneof(fc.constantFrom('unsafe', 'writeback', 'none'), fc.anything()),
    partuuid: fc.oneof(fc.constantFrom('1234abcd-01', 'x'), fc.anything()), rateLimiter: limiter,
  }, { requiredKeys: [] }),
  fc.record({ path: fc.constant(disk), readonly: fc.boolean() }),
  fc.anything(),
);
const id = fc.oneof(fc.constantFrom('d0', 'd1', 'root', 'x'.repeat(21), 'bad id', ''), fc.string(), fc.anything());

function typed(fn: () => unknown): void {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof KindlingError)) throw new Error(`untyped error escaped: ${String(e)}`);
    if (!(e instanceof ConfigError)) throw new Error(`a builder threw ${e.name}, not ConfigError`);
  }
}

describe('builder methods under arbitrary input (property)', () => {
  it('constructor, vcpus, memory, kernel, drive, device: typed errors or success', () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.record({ id: fc.oneof(fc.string(), fc.anything()), hostQuirks: fc.anything(), kvmPath: fc.anything() }, { requiredKeys: [] }),
          fc.record({ jial: fc.anything() }), fc.anything()),
        num, num,
        fc.oneof(fc.constant(kernel), fc.anything()),
        fc.oneof(fc.record({ cmdline: fc.oneof(fc.string(), fc.anything()), initrd: fc.oneof(fc.constant(disk), fc.anything()) }, { requiredKeys: [] }), fc.anything()),
        fc.array(fc.tuple(id, driveOpts), { maxLength: 4 }),
        fc.anything(),
        (ctor, vcpus, mem, kpath, kopts, drives, device) => {
          let vm: MicroVM | undefined;
          typed(() => { vm = new MicroVM(ctor as never); });
          vm ??= new MicroVM();
          const v = vm;
          typed(() => v.vcpus(vcpus as never));
          typed(() => v.memory(mem as never));
          typed(() => v.kernel(kpath as never, kopts as never));
          for (const [i, o] of drives) typed(() => v.drive(i as never, o as never));
          typed(() => v.device(device as never));
          // Updates before start are refused with a typed error at the call too.
          typed(() => void v.updateDrive(drives[0]?.[0] as never, drives[0]?.[1] as never));
          typed(() => void v.sendCtrlAltDel());
        },
      ),
      { numRuns: 20000 },
    );
  });

  it('refuses misspelled options by name', () => {
    expect(() => new MicroVM({ jial: {} } as never)).toThrow(/unknown option "jial"/);
    expect(() => new MicroVM().drive('d0', { path: disk, readonly: true } as never)).toThrow(/unknown option "readonly" \(did you mean "readOnly"\?\)/);
    expect(() => new MicroVM().drive('d0', { path: disk, rateLimiter: { bandwith: { size: 1, refillTime: 1 } } } as never)).toThrow(/bandwith/);
    expect(() => new MicroVM().kernel(kernel, { cmdLine: 'x' } as never)).toThrow(/cmdLine/);
  });

  it.each([
    [{ rateLimiter: { bandwidth: { size: 1.5, refillTime: 1000 } } }, 'INVALID_RATE_LIMITER'],
    [{ rateLimiter: { ops: { size: 10, refillTime: 2 ** 53 } } }, 'INVALID_RATE_LIMITER'],
    [{ readOnly: 1 }, 'INVALID_DRIVE'],
    [{ readOnly: 'yes' }, 'INVALID_DRIVE'],
    [{ cacheType: 'writethrough' }, 'INVALID_DRIVE'],
  ])('drive options %j are refused at the call with %s (they used to fail start())', (extra, code) => {
    expect(() => new MicroVM().drive('d0', { path: disk, ...extra } as never)).toThrow(expect.objectContaining({ code }));
  });
});
