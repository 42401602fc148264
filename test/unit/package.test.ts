/**
 * The package works from both CommonJS `require` and ESM `import` (of the built `dist/`).
 */
import { execFileSync } from 'child_process';
import * as path from 'path';
import * as fs from 'fs';

const root = path.join(__dirname, '..', '..');

describe('package entry points', () => {
  it('is built (npm run build:ts)', () => {
    expect(fs.existsSync(path.join(root, 'dist/cjs/index.js'))).toBe(true);
    expect(fs.existsSync(path.join(root, 'dist/esm/index.mjs'))).toBe(true);
  });

  it('exports MicroVM through require()', () => {
    const out = execFileSync(process.execPath, ['-e', "const k = require('kindling'); console.log(typeof k.MicroVM, typeof k.ConfigError, new k.MicroVM({id:'x'}).id)"], { cwd: root }).toString();
    expect(out.trim()).toBe('function function x');
  });

  it('exports the same MicroVM through import', () => {
    const script = "import { MicroVM, ConfigError } from 'kindling'; import { createRequire } from 'module'; const r = createRequire(import.meta.url); console.log(MicroVM === r('kindling').MicroVM, typeof ConfigError);";
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root }).toString();
    expect(out.trim()).toBe('true function');
  });
});
