/**
 * The freestanding test guests Kindling ships: tiny x86-64 kernels (a few KiB, no download) that
 * boot through the real Linux boot path in milliseconds and report over the serial port. A host
 * application's unit test can boot one to check its own use of Kindling end to end.
 *
 * Every guest prints `KT: <key>=<value>` lines (see {@link parseGuestOutput}), ends with
 * `KT: DONE` and resets through the i8042, so `vm.wait()` resolves with reason `'reset'`.
 * The full protocol of each guest is in the package's `test/guests/README.md`.
 * @module
 */
import * as fs from 'fs';
import * as path from 'path';

/** The package's root: the nearest folder above this module with Kindling's package.json. */
function packageRoot(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    try {
      if (JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).name === 'kindling') return dir;
    } catch { /* not here */ }
    if (path.dirname(dir) === dir) return path.join(__dirname, '..', '..');
  }
}

/** Where the built guests are (built by the package's install script, `make -C test/guests`). */
export const GUEST_DIR = path.join(packageRoot(), 'test', 'guests', 'out');

/** What each shipped guest does. */
export const TEST_GUESTS = {
  /**
   * Prints `Hello from a Kindling microVM`, its command line (`KT: cmdline=`), the E820 map, the
   * initrd's address, size and byte sum, and the number of CPUs in the MP table; then resets.
   * Any memory size ≥ 4 MiB, any vCPU count, an optional initrd of a few KiB.
   */
  hello: 'hello.elf',
  /** The same guest as hello, wrapped as a bzImage (the compressed-kernel format). */
  helloBzImage: 'hello.bzImage',
  /**
   * Prints `KT: READY`, then echoes every line written to `vm.serial` as `KT: echo=<line>`
   * (receive interrupts, lines cut at 200 bytes); after the line `quit` it prints `KT: irqs=<n>`
   * and resets. Input written before `KT: READY` may be lost.
   */
  echo: 'echo.elf',
  /**
   * Drives every virtio-blk drive announced on its command line through the real virtio-mmio
   * transport: reads, checksums and writes sectors, FLUSH and GET_ID, reporting
   * `KT: blk<i> capacity=…`, `KT: blk<i> id=…`, sums and statuses; then resets.
   */
  blk: 'blk.elf',
  /** Triple-faults on purpose: the VM ends with reason `'shutdown'`. */
  triple: 'triple.elf',
  /**
   * A virtio-net driver: ARP, three pings to `net.peer=` (an address on a TAP, or another guest),
   * the metadata service's v2 token flow (`net.mmds=`), answering ARP and echo requests while it
   * waits (`net.linger=<polls>` after the rest); prints `KT: PASS net0 ping`, `KT: PASS net0 mmds`.
   */
  net: 'net.elf',
  /**
   * A virtio-vsock driver: connects to host port 7000 (`vsock.host_port=`, 0 skips), then serves
   * the invoke protocol on port 1024 (echo); the request `quit` ends it.
   */
  vsock: 'vsock.elf',
  /** A virtio-rng driver: reads entropy and prints `KT: PASS rng random`. */
  rng: 'rng.elf',
  /** A virtio-balloon driver: inflates to the target, reports statistics (`balloon.wait_target=1` waits for an update). */
  balloon: 'balloon.elf',
  /** Counts steps, prints running sums and writes a memory pattern (`count=`, `pages=`): for snapshot tests. */
  counter: 'counter.elf',
} as const;

/** A shipped guest's name. */
export type TestGuestName = keyof typeof TEST_GUESTS;

/**
 * The path of a shipped guest, to pass to `vm.kernel()`.
 * @throws Error when the guests were not built (no C compiler at install time).
 */
export function testGuest(name: TestGuestName): string {
  const file = TEST_GUESTS[name];
  if (file === undefined) throw new Error(`no test guest named ${String(name)}`);
  const p = path.join(GUEST_DIR, file);
  if (!fs.existsSync(p)) throw new Error(`test guest ${p} is missing: run \`npm run build:guests\` in the kindling package`);
  return p;
}

/** A guest's serial output, parsed. */
export interface GuestOutput {
  /** `KT: key=value` lines, last value wins. */
  kv: Map<string, string>;
  /** Every `KT:` line in order, without the prefix. */
  lines: string[];
  /** Whether the guest printed `KT: DONE`. */
  done: boolean;
}

/** Parses the `KT:` lines of a guest's serial output. */
export function parseGuestOutput(output: string): GuestOutput {
  const kv = new Map<string, string>();
  const lines: string[] = [];
  for (const raw of output.split(/\r?\n/)) {
    const m = /^KT: (.*)$/.exec(raw.trim());
    if (!m) continue;
    lines.push(m[1]);
    const eq = /^([A-Za-z0-9_ ]+?)=(.*)$/.exec(m[1]);
    if (eq) kv.set(eq[1], eq[2]);
  }
  return { kv, lines, done: lines.includes('DONE') };
}
