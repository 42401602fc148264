/**
 * What the jailed-mode tests need besides KVM: root, and the package's compiled code for the
 * child to run. The child runs JavaScript, not these TypeScript sources, so the sources are
 * compiled once into a private directory (`KINDLING_JAIL_CODE`) that is rebuilt whenever a source
 * file is newer; the shared `dist/` that other suites read is left alone.
 */
import { execFileSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from './harness';

const ROOT = path.join(__dirname, '..', '..');
const isRoot = typeof process.geteuid === 'function' && process.geteuid() === 0;
if (!isRoot) {
  // eslint-disable-next-line no-console
  console.warn('SKIPPING jailed-mode tests: they need root (namespaces, mounts, cgroups)');
}

/** `describe` where KVM works and this process is root; `describe.skip` elsewhere. */
export const describeJail: jest.Describe = isRoot ? describeKvm : describe.skip;

/** A user and group no process of the host runs as. */
export const JAIL_UID = 64321;
/** See {@link JAIL_UID}. */
export const JAIL_GID = 64321;

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

/**
 * Compiles lib/ into `<tmp>/kindling-jail-code-<hash>/dist/cjs` (with the package.json beside it,
 * as in the package) unless that is already there, and points KINDLING_JAIL_CODE at it. The
 * directories are world-readable: the jail's user must be able to read what is bound in.
 */
export function ensureJailCode(): string {
  const files = sources(path.join(ROOT, 'lib')).sort();
  const hash = crypto.createHash('sha256');
  for (const f of files) hash.update(f).update(fs.readFileSync(f));
  const dir = path.join(os.tmpdir(), `kindling-jail-code-${hash.digest('hex').slice(0, 16)}`);
  const code = path.join(dir, 'dist', 'cjs');
  if (!fs.existsSync(path.join(code, 'jail', 'child.js'))) {
    const building = `${dir}.building-${process.pid}`;
    fs.rmSync(building, { recursive: true, force: true });
    execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', path.join(ROOT, 'tsconfig.build.json'), '--outDir', path.join(building, 'dist', 'cjs')], { stdio: 'inherit' });
    fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(building, 'package.json'));
    for (const d of [building, path.join(building, 'dist')]) fs.chmodSync(d, 0o755);
    try {
      fs.renameSync(building, dir);
    } catch {
      // Another test file built it meanwhile.
      fs.rmSync(building, { recursive: true, force: true });
    }
  }
  process.env.KINDLING_JAIL_CODE = code;
  return code;
}

/** A fresh, world-traversable chrootBase. */
export function chrootBase(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-jails-'));
  fs.chmodSync(dir, 0o755);
  return dir;
}
