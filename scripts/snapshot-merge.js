#!/usr/bin/env node
// Merges a diff snapshot onto its base, giving a full snapshot of the moment the diff was taken.
//
//   node scripts/snapshot-merge.js BASE_DIR DIFF_DIR [OUT_DIR]
//
// Without OUT_DIR the base directory is updated in place (its state file is removed first, so an
// interrupted merge leaves nothing restorable half-done). Exit status 0 on success, 1 with the
// SnapshotError's code and message otherwise. See lib/snapshot/merge.ts.
'use strict';
const fs = require('fs');
const path = require('path');

function loadSnapshotModule() {
  const built = path.join(__dirname, '..', 'dist', 'cjs', 'snapshot', 'index.js');
  if (fs.existsSync(built)) return require(built);
  // A checkout without `npm run build:ts`: run the TypeScript sources.
  require(path.join(__dirname, '..', 'bench', 'register-ts.js'));
  return require(path.join(__dirname, '..', 'lib', 'snapshot', 'index.ts'));
}

async function main() {
  const args = process.argv.slice(2);
  if (args.length < 2 || args.length > 3 || args.some((a) => a.startsWith('-'))) {
    console.error('usage: node scripts/snapshot-merge.js BASE_DIR DIFF_DIR [OUT_DIR]');
    process.exit(2);
  }
  const { mergeSnapshots } = loadSnapshotModule();
  const [base, diff, out] = args;
  const r = await mergeSnapshots(base, diff, out);
  console.log(`merged ${r.pagesMerged} pages into ${r.dir} (snapshot ${r.snapshotId})`);
}

main().catch((e) => {
  console.error(`snapshot-merge: ${e.code ? `${e.code}: ` : ''}${e.message}`);
  process.exit(1);
});
