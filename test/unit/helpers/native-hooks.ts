/**
 * The test build's `_testing` hooks (src-native/test_hooks.cc) and the way tests run Node
 * programs against that build. Only the test build (`npm run build:native:test`, what jest loads)
 * has them.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';

import type { NativeAddon, NativeVcpu, NativeVm } from '../../../lib/native/types';

/** Script steps understood by startScript. */
export type Step =
  | ['w', number, number, number, number]
  | ['r', number, number, number]
  | ['e', number]
  | ['spin']
  | ['x', RefusedCall];

/** The refused calls a filtered thread can be made to attempt. */
export type RefusedCall = 'execve' | 'open' | 'socket' | 'ioctl';

/** A system call as [nr, ...args] (numbers or bigints, at most 6 arguments). */
export type RawCall = (number | bigint)[];

/** How a seccompRun child ended. */
export interface RunOutcome {
  /** The call came back (the filter let it through, or answered ERRNO). */
  returned: boolean;
  /** Its return value (-errno on failure), when it came back. */
  value: number | null;
  /** The signal that ended the child, if one did (SIGSYS = 31 for a trap). */
  signal: number | null;
  /** The child's exit status, if it exited. */
  exitCode: number | null;
}

/** `_testing`. */
export interface TestHooks {
  createVm(): NativeVm;
  /** V8's external-memory count (what `napi_adjust_external_memory` adjusts), in bytes. */
  externalMemory(): number;
  startScript(vm: NativeVm, id: number, steps: Step[], filter?: Uint8Array): void;
  scriptResults(vm: NativeVm, id: number): number[];
  attemptOnStart(vcpu: NativeVcpu, what: RefusedCall): void;
  /** The kernel's answer to each call under `filter` (which must answer ERRNO); nothing is executed. */
  seccompEvaluate(filter: Uint8Array, calls: RawCall[]): number[];
  /** Installs `filter` in a forked child and makes `call` for real. */
  seccompRun(filter: Uint8Array, call: RawCall): RunOutcome;
}

/** The hooks of a loaded test build; throws with a hint on a build without them. */
export function testHooks(addon: NativeAddon): TestHooks {
  const hooks = (addon as unknown as { _testing?: TestHooks })._testing;
  if (!hooks) throw new Error('the addon has no _testing hooks: jest must load the test build (npm run build:native:test)');
  return hooks;
}

/** The addon file jest loads (jest.config.js sets KINDLING_ADDON), for the Node processes tests start. */
export const ADDON_PATH = process.env.KINDLING_ADDON ?? path.resolve(__dirname, '../../../build-test/Release/kindling.node');

/** What a Node program run by {@link runNode} did. */
export interface NodeRun {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `script` with `node -e` (and --expose-gc). Core dumps are off: some of these programs are
 * meant to be killed.
 */
export function runNode(script: string, env: Record<string, string> = {}): NodeRun {
  const r = spawnSync('/bin/sh', ['-c', 'ulimit -c 0; exec "$0" --expose-gc -e "$1"', process.execPath, script], {
    timeout: 20000,
    encoding: 'utf8',
    env: { ...process.env, ...env },
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}
