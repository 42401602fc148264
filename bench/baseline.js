// The bare C baseline (bench/baseline/vmm.c): built on demand, run as one process per VM, so that
// Kindling's figures can be given as ratios to it, measured in the same run.
'use strict';
const path = require('path');
const fs = require('fs');
const { spawn, spawnSync } = require('child_process');

const DIR = path.join(__dirname, 'baseline');
const BIN = path.join(DIR, 'out', 'vmm');

/** Builds the baseline if needed; returns its path. */
function build() {
  const r = spawnSync('make', ['-s', '-C', DIR], { stdio: 'inherit' });
  if (r.status !== 0 || !fs.existsSync(BIN)) throw new Error('building bench/baseline failed (needs cc and make)');
  return BIN;
}

function parseSummary(line) {
  const m = /setup_ns=(\d+) run_ns=(\d+) bytes=(\d+) exit=(\w+)/.exec(line);
  return m ? { setupNs: Number(m[1]), runNs: Number(m[2]), bytes: Number(m[3]), exit: m[4] } : undefined;
}

/**
 * Starts `n` baseline VMs at once (the C launcher forks them, so no Node.js cost is counted) and
 * waits for all; returns the wall time and each process's summary.
 */
function spawnMany(n, kernel, memMib, cmdline) {
  const r = spawnSync(BIN, ['--spawn', String(n), kernel, String(memMib), cmdline], { encoding: 'utf8', maxBuffer: 1 << 24 });
  const lines = r.stdout.split('\n');
  const m = /wall_ns=(\d+) ok=(\d+)/.exec(lines[0] || '');
  if (!m) throw new Error(`baseline --spawn failed: ${r.stderr || r.stdout}`);
  return { wallNs: Number(m[1]), ok: Number(m[2]), runs: lines.slice(1).map(parseSummary).filter(Boolean) };
}

/** {@link spawnMany} without blocking the event loop (so that its stalls can be measured meanwhile). */
function spawnManyAsync(n, kernel, memMib, cmdline) {
  return new Promise((resolve, reject) => {
    const p = spawn(BIN, ['--spawn', String(n), kernel, String(memMib), cmdline], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('error', reject);
    p.on('close', () => {
      const lines = out.split('\n');
      const m = /wall_ns=(\d+) ok=(\d+)/.exec(lines[0] || '');
      if (!m) reject(new Error(`baseline --spawn failed: ${err || out}`));
      else resolve({ wallNs: Number(m[1]), ok: Number(m[2]), runs: lines.slice(1).map(parseSummary).filter(Boolean) });
    });
  });
}

/** One baseline VM, run to its end (or, with setupOnly, to the instant before its first KVM_RUN). */
function runOne(kernel, memMib, cmdline, setupOnly = false) {
  const args = setupOnly ? ['--setup-only', kernel, String(memMib), cmdline] : [kernel, String(memMib), cmdline];
  const r = spawnSync(BIN, args, { encoding: 'utf8', maxBuffer: 1 << 24 });
  const s = parseSummary(r.stderr);
  if (!s) throw new Error(`baseline run failed: ${r.stderr}`);
  return { ...s, output: r.stdout };
}

/**
 * Starts `n` idle baseline VMs (a guest that waits for input) one after the other, each waited for
 * until it prints "KT: READY"; returns their pids and a stop() that ends them all.
 */
async function startIdle(n, kernel, memMib, cmdline) {
  const procs = [];
  for (let i = 0; i < n; i++) {
    const p = spawn(BIN, ['--idle', kernel, String(memMib), cmdline], { stdio: ['ignore', 'ignore', 'pipe'] });
    await new Promise((resolve, reject) => {
      let err = '';
      p.stderr.on('data', (d) => {
        err += d;
        if (err.includes('ready')) resolve();
      });
      p.on('exit', (code) => reject(new Error(`baseline idle VM exited (${code}): ${err}`)));
    });
    procs.push(p);
  }
  return {
    pids: procs.map((p) => p.pid),
    async stop() {
      await Promise.all(procs.map((p) => new Promise((resolve) => {
        p.removeAllListeners('exit');
        p.on('exit', resolve);
        p.kill('SIGTERM');
      })));
    },
  };
}

/**
 * Resident bytes of a process from one read of its smaps: all mappings, and those of exactly
 * `guestBytes` (guest RAM), so their difference is the VMM's own.
 */
function residentOf(pid, guestBytes) {
  const smaps = fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n');
  let total = 0;
  let guest = 0;
  let isGuest = false;
  for (const line of smaps) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (m) {
      isGuest = parseInt(m[2], 16) - parseInt(m[1], 16) === guestBytes;
      continue;
    }
    const r = /^Rss:\s+(\d+) kB/.exec(line);
    if (!r) continue;
    total += Number(r[1]) * 1024;
    if (isGuest) guest += Number(r[1]) * 1024;
  }
  return { total, guest };
}

module.exports = { build, spawnMany, spawnManyAsync, runOne, startIdle, residentOf, BIN };
