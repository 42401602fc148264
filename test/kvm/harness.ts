/**
 * Shared helpers for the tests that boot freestanding guests on real KVM.
 * Where /dev/kvm cannot be opened these suites are skipped, and the reason is printed once.
 */
import * as path from 'path';
import * as fs from 'fs';
import type { Duplex } from 'stream';
import * as net from 'net';
import { MicroVM } from '../../lib/vm/microvm';
import type { ExitInfo } from '../../lib/vm/machine';
import { isKvmAvailable } from '../../lib/native/binding';
import { parseGuestOutput } from '../../lib/testing/guests';

/** Folder of the built guests (`make -C test/guests`). */
export const GUEST_DIR = path.join(__dirname, '..', 'guests', 'out');

const kvm = isKvmAvailable();

// KINDLING_TEST_HEARTBEAT=1: a line on stderr every 10 s while tests run, to tell a stuck event
// loop (no heartbeat) from a slow guest (heartbeat goes on). KINDLING_TEST_HEARTBEAT=<path>: the
// time written into that file instead, for a watchdog outside (scripts/kvm-in-qemu.sh,
// KVMQ_IDLE_FILE) that ends a machine which stopped running altogether.
const heartbeat = process.env.KINDLING_TEST_HEARTBEAT;
if (heartbeat) {
  const beat = heartbeat === '1'
    ? () => process.stderr.write(`[heartbeat ${new Date().toISOString()}]\n`)
    : () => {
      try {
        fs.writeFileSync(heartbeat, `${new Date().toISOString()} ${expect.getState().currentTestName ?? ''}\n`);
      } catch { /* the watchdog then sees no beat, which is what it is for */ }
    };
  beat();
  const timer = setInterval(beat, 10_000).unref();
  // Each test file loads its own copy of this module into the same process: stop this one's beat
  // when its file is done, or it would go on naming that file's last test.
  afterAll(() => clearInterval(timer));
}
if (!kvm.ok) {
  // eslint-disable-next-line no-console
  console.warn(`SKIPPING KVM guest tests: ${kvm.reason}`);
}

/** `describe` where KVM works, `describe.skip` elsewhere. */
export const describeKvm: jest.Describe = kvm.ok ? describe : describe.skip;

/** Path of a built guest (`hello`, or `hello.bzImage`); fails the test with a hint when it was not built. */
export function guest(name: string): string {
  const p = path.join(GUEST_DIR, path.extname(name) ? name : `${name}.elf`);
  if (!fs.existsSync(p)) throw new Error(`guest ${p} missing: run npm run build:guests`);
  return p;
}

/** What a guest run produced. */
export interface GuestRun {
  vm: MicroVM;
  info: ExitInfo;
  output: string;
  /** `KT: key=value` lines. */
  kv: Map<string, string>;
  /** `KT: ...` lines in order (without the prefix). */
  lines: string[];
}

/** Parses the guest's serial protocol (the same parser `kindling/testing` ships). */
export function parseKt(output: string): { kv: Map<string, string>; lines: string[] } {
  const { kv, lines } = parseGuestOutput(output);
  return { kv, lines };
}

/**
 * Boots `vm` (already configured), optionally feeding it input once it prints `KT: READY`,
 * and waits for its end with a timeout that stops it. `KINDLING_TEST_SERIAL=1` echoes the guest's
 * console to stderr as it comes.
 */
export async function runVm(vm: MicroVM, opts: { input?: string[]; timeoutMs?: number } = {}): Promise<GuestRun> {
  let output = '';
  let fed = false;
  const echo = process.env.KINDLING_TEST_SERIAL === '1';
  vm.on('serial', (c) => {
    if (echo) process.stderr.write(c);
    output += c.toString('latin1');
    if (opts.input && !fed && output.includes('KT: READY')) {
      fed = true;
      for (const line of opts.input) vm.serial.write(line);
    }
  });
  await vm.start();
  const timer = setTimeout(() => void vm.stop(), opts.timeoutMs ?? 60_000);
  const info = await vm.wait();
  clearTimeout(timer);
  return { vm, info, output, ...parseKt(output) };
}

/** A VM's serial output as it comes, and a way to wait for a piece of it. */
export interface SerialCollector {
  /** Everything so far (latin1). */
  text(): string;
  /** Resolves once the output contains `s`; rejects after `ms` with the output so far. */
  waitFor(s: string, ms?: number): Promise<void>;
}

/** Collects `vm`'s serial output from now on. */
export function collectSerial(vm: MicroVM): SerialCollector {
  let out = '';
  const waiters: { s: string; resolve: () => void }[] = [];
  vm.on('serial', (c) => {
    out += c.toString('latin1');
    for (const w of waiters.splice(0)) {
      if (out.includes(w.s)) w.resolve();
      else waiters.push(w);
    }
  });
  return {
    text: () => out,
    waitFor: (s, ms = 60_000) => new Promise((resolve, reject) => {
      if (out.includes(s)) return resolve();
      const t = setTimeout(() => reject(new Error(`no "${s}" in ${ms} ms; output:\n${out}`)), ms);
      waiters.push({ s, resolve: () => { clearTimeout(t); resolve(); } });
    }),
  };
}

/**
 * What vsock.elf's host-port connection expects of the host: read until the guest half-closes,
 * then answer and close (the guest prints the answer as `vsock host_said`).
 */
export function answerVsockGuest(s: Duplex): void {
  let got = '';
  s.on('data', (d: Buffer) => { got += d.toString(); });
  s.on('end', () => s.end(`hello from the host (you said ${got.trim()})`));
}

/**
 * One invoke request written by hand on a raw stream (docs/invoke-protocol.md: "KI", version 1,
 * kind 1 = JSON request, id, length, body); resolves with the JSON of the answer and its id.
 */
export async function invokeByHand(sock: Duplex, id: number, body: unknown): Promise<{ id: number; value: unknown }> {
  const json = Buffer.from(JSON.stringify(body));
  const hdr = Buffer.alloc(12);
  hdr.write('KI', 0, 'latin1');
  hdr[2] = 1;
  hdr[3] = 1;
  hdr.writeUInt32LE(id, 4);
  hdr.writeUInt32LE(json.length, 8);
  sock.write(Buffer.concat([hdr, json]));
  const reply = await new Promise<Buffer>((resolve) => {
    let acc = Buffer.alloc(0);
    sock.on('data', (d: Buffer) => {
      acc = Buffer.concat([acc, d]);
      if (acc.length >= 12 && acc.length >= 12 + acc.readUInt32LE(8)) resolve(acc);
    });
  });
  return { id: reply.readUInt32LE(4), value: JSON.parse(reply.subarray(12, 12 + reply.readUInt32LE(8)).toString()) };
}

/** Connects to a vsock device's Unix socket and asks for guest `port` (`CONNECT <port>`); resolves with the socket and the answer line. */
export async function connectThroughUds(udsPath: string, port: number): Promise<{ sock: net.Socket; answer: string }> {
  const sock = net.connect(udsPath);
  await new Promise<void>((r) => sock.once('connect', () => r()));
  sock.write(`CONNECT ${port}\n`);
  const answer = await new Promise<string>((r) => sock.once('data', (d: Buffer) => r(d.toString())));
  return { sock, answer };
}

/**
 * Starts vsock.elf on `vm` (which has a vsock device) with a host listener on port 7000 that
 * answers it, waits for its agent, and makes twelve invoke() calls (JSON, bytes, ten in a row on
 * one reused connection). Resolves with the output collector and the listener.
 */
export async function startVsockGuestAndInvoke(vm: MicroVM): Promise<{ out: SerialCollector; srv: { close(): void } }> {
  // Registered before start: the guest connects in its first milliseconds.
  const srv = vm.vsockListen(7000, answerVsockGuest);
  const out = collectSerial(vm);
  await vm.start();
  await out.waitFor('KT: vsock listening=1024');
  expect(await vm.invoke({ n: 1, s: 'x' })).toEqual({ n: 1, s: 'x' });
  expect((await vm.invoke(Buffer.from('bytes!'))) as Buffer).toEqual(Buffer.from('bytes!'));
  for (let i = 0; i < 10; i++) expect(await vm.invoke({ i })).toEqual({ i });
  return { out, srv };
}
