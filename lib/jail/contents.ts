/**
 * What a jail's root holds: read-only bind mounts of exactly what the child needs to run, at the
 * paths it has on the host. That is the Node binary, its dynamic loader and the shared libraries
 * it and the addon load (as the loader itself lists them: `ld.so --list`), the package's compiled
 * code (`dist/cjs`) and its `package.json`, and the addon. Nothing else of the host is visible
 * inside; the writable `/snapshot` directory is the launcher's own.
 * @module
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { JailError } from './errors';

/** One read-only bind mount: host `source` (a real path) at `target` inside the jail. */
export interface JailBind {
  /** The host file or directory (no symlinks). */
  source: string;
  /** Where it appears in the jail (the path programs use, which may be a symlink on the host). */
  target: string;
}

/** Everything the launcher needs to populate a jail and start the child in it. */
export interface JailContents {
  /** The bind mounts, in mount order (parents before children). */
  binds: JailBind[];
  /** The Node binary, as the child execs it. */
  node: string;
  /** The child's entry script (`<code>/jail/child.js`). */
  childScript: string;
  /** The addon the child loads (`KINDLING_ADDON`). */
  addon: string;
  /** Directories of the shared libraries (`LD_LIBRARY_PATH`: the jail has no ld.so.cache). */
  libraryDirs: string[];
}

/** Environment variable naming the compiled code to run in the child (default: the package's `dist/cjs`). */
export const JAIL_CODE_ENV = 'KINDLING_JAIL_CODE';

/** The compiled code the child runs: `dist/cjs` of this package (this file is in it, or in `lib/` of a checkout). */
export function jailCodeDir(): string {
  const fromEnv = process.env[JAIL_CODE_ENV];
  if (fromEnv) return path.resolve(fromEnv);
  const parent = path.dirname(__dirname);
  if (path.basename(parent) === 'cjs') return parent;
  return path.join(parent, '..', 'dist', 'cjs');
}

let cached: { key: string; contents: JailContents } | undefined;

/**
 * The jail's contents for the Node binary running this process and `addonPath`. Computed once
 * per addon (it runs the dynamic loader twice).
 * @throws JailError LAUNCH_FAILED when something it needs is missing (unbuilt code, an unresolvable library)
 */
export function jailContents(addonPath: string): JailContents {
  const code = jailCodeDir();
  const key = `${addonPath}\0${code}`;
  if (cached?.key === key) return cached.contents;
  const childScript = path.join(realpath(code, 'the compiled package code (npm run build:ts)'), 'jail', 'child.js');
  if (!fs.existsSync(childScript)) {
    throw new JailError('LAUNCH_FAILED', `the jailed child's code ${childScript} is missing: run npm run build:ts`);
  }
  const codeReal = path.dirname(path.dirname(childScript));
  const pkgJson = path.join(codeReal, '..', '..', 'package.json');
  const node = process.execPath;
  const addon = realpath(addonPath, 'the addon');
  const interp = elfInterpreter(realpath(node, 'the Node binary'));
  const libs = new Map<string, string>();
  for (const obj of [node, addon]) {
    for (const lib of loaderList(interp, obj)) libs.set(lib, realpath(lib, `the library ${lib}`));
  }
  const binds: JailBind[] = [
    { source: realpath(node, 'the Node binary'), target: node },
    ...[...libs].map(([target, source]) => ({ source, target })),
    { source: codeReal, target: codeReal },
    { source: addon, target: addon },
  ];
  if (fs.existsSync(pkgJson)) binds.push({ source: realpath(pkgJson, 'package.json'), target: path.resolve(pkgJson) });
  for (const b of binds) {
    if (b.source.includes(':') || b.target.includes(':')) {
      throw new JailError('LAUNCH_FAILED', `cannot bind ${b.source} into a jail: paths with ':' are not supported`);
    }
  }
  const libraryDirs = [...new Set([...libs.keys()].map((l) => path.dirname(l)))];
  const contents = { binds: dedupe(binds), node, childScript, addon, libraryDirs };
  cached = { key, contents };
  return contents;
}

function dedupe(binds: JailBind[]): JailBind[] {
  const seen = new Set<string>();
  return binds.filter((b) => (seen.has(b.target) ? false : (seen.add(b.target), true)));
}

function realpath(p: string, what: string): string {
  try {
    return fs.realpathSync(p);
  } catch (e) {
    throw new JailError('LAUNCH_FAILED', `${what} (${p}) cannot be found: ${(e as Error).message}`, { cause: e });
  }
}

/** PT_INTERP of an ELF64 executable: the dynamic loader it names. */
export function elfInterpreter(file: string): string {
  const fd = fs.openSync(file, 'r');
  try {
    const eh = Buffer.alloc(64);
    fs.readSync(fd, eh, 0, 64, 0);
    if (eh.readUInt32BE(0) !== 0x7f454c46 || eh[4] !== 2) throw new Error('not an ELF64 file');
    const phoff = Number(eh.readBigUInt64LE(0x20));
    const phentsize = eh.readUInt16LE(0x36);
    const phnum = eh.readUInt16LE(0x38);
    const ph = Buffer.alloc(phentsize * phnum);
    fs.readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) {
      const at = i * phentsize;
      if (ph.readUInt32LE(at) !== 3) continue; // PT_INTERP
      const offset = Number(ph.readBigUInt64LE(at + 8));
      const size = Number(ph.readBigUInt64LE(at + 32));
      if (size === 0 || size > 4096) break;
      const s = Buffer.alloc(size);
      fs.readSync(fd, s, 0, size, offset);
      return s.toString('utf8').replace(/\0.*$/s, '');
    }
    throw new Error('no PT_INTERP (a static binary?)');
  } catch (e) {
    throw new JailError('LAUNCH_FAILED', `cannot find the dynamic loader of ${file}: ${(e as Error).message}`, { cause: e });
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The shared objects `file` loads, as the dynamic loader resolves them (`<ld.so> --list file`,
 * what ldd runs), including the loader itself.
 */
export function loaderList(interp: string, file: string): string[] {
  let out: string;
  try {
    out = execFileSync(interp, ['--list', file], { encoding: 'utf8', env: {}, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    throw new JailError('LAUNCH_FAILED', `${interp} --list ${file} failed: ${(e as Error).message}`, { cause: e });
  }
  const libs: string[] = [];
  for (const line of out.split('\n')) {
    const t = line.trim();
    if (t.length === 0) continue;
    const arrow = /^(\S+) => (.*?)(?: \(0x[0-9a-f]+\))?$/.exec(t);
    if (arrow) {
      if (arrow[2] === 'not found') throw new JailError('LAUNCH_FAILED', `${file} needs ${arrow[1]}, which the dynamic loader cannot find`);
      if (path.isAbsolute(arrow[2])) libs.push(arrow[2]);
      continue;
    }
    const plain = /^(\/\S+) \(0x[0-9a-f]+\)$/.exec(t);
    if (plain) libs.push(plain[1]);
  }
  return libs;
}
