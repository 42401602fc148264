// The table of issue #12: every KVM figure against the C baseline (bench/baseline), same run.
'use strict';
const path = require('path');
const fs = require('fs');

exports.run = async function run() {
  process.env.KINDLING_BENCH_CONSOLE = 'tiny';
  const rate = await require('./startrate.bench').measure();
  const setup = require('./setup.bench');
  const tiny = await setup.measure(path.join(__dirname, '../test/guests/out/hello.elf'));
  const kernel = setup.KERNEL;
  const big = fs.existsSync(kernel) ? await setup.measure(kernel) : undefined;
  const con = await require('./console.bench').measure();
  const dens = await require('./density.bench').measure();
  const last = dens.kindling[dens.kindling.length - 1];
  const f = (x, d = 1) => x.toFixed(d);
  const rows = [
    ['figure', 'Kindling', 'baseline', 'Kindling / baseline'],
    [`start rate, ${rate.n} tiny guests at once, each to its exit (median of ${rate.rounds} rounds)`, `${f(rate.kindlingRate)} VMs/s`, `${f(rate.baselineRate)} processes/s`, f(rate.ratio, 2)],
    [`start() to running vCPUs, tiny guest, 128 MiB (median of ${tiny.runs})`, `${f(tiny.kindling.median, 2)} ms`, `${f(tiny.baseline.median, 2)} ms`, f(tiny.ratio, 2)],
    ...(big ? [[`start() to running vCPUs, ${big.kernel} (17 MB), 128 MiB (median of ${big.runs})`, `${f(big.kindling.median, 2)} ms`, `${f(big.baseline.median, 2)} ms`, f(big.ratio, 2)]] : []),
    [`longest event-loop stall while ${rate.n} VMs start and run (of which JS-thread CPU)`, `${f(rate.maxDelayMs)} ms (${f(rate.maxCpuMs)} ms)`, `${f(rate.idleMaxDelayMs)} ms (idle loop)`, f(rate.maxDelayMs / rate.idleMaxDelayMs, 2)],
    [`p99 event-loop delay, same (median of ${rate.rounds} rounds)`, `${f(rate.p99DelayMs)} ms`, `${f(rate.idleP99DelayMs)} ms (idle loop)`, f(rate.p99DelayMs / rate.idleP99DelayMs, 2)],
    ['JavaScript-thread CPU time per VM (start, console, exit, teardown)', `${f(rate.jsCpuMsPerVm, 2)} ms`, '', ''],
    ['JavaScript callbacks per console byte, steady output', f(con.jsCallsPerByte, 4), 'none (C)', ''],
    ["'serial' events per console byte, steady output", f(con.serialEventsPerByte, 4), '', ''],
    [`host RSS per idle VM, 32 MiB guests (${last.n} VMs in one process / ${dens.baselineProcesses} processes)`, `${f(last.perVmKiB, 0)} KiB`, `${f(dens.baselinePerVmKiB, 0)} KiB`, f(last.perVmKiB / dens.baselinePerVmKiB, 3)],
  ];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const [i, r] of rows.entries()) {
    console.log(`| ${r.map((x, c) => x.padEnd(widths[c])).join(' | ')} |`);
    if (i === 0) console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  }
};
