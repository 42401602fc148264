// Lets `node -r bench/register-ts.js file.ts` run the TypeScript benchmarks straight from lib/
// sources by transpiling each .ts module on require (TypeScript's own transpileModule; no type check).
'use strict';
const fs = require('fs');
const ts = require('typescript');
require.extensions['.ts'] = function (module, filename) {
  const src = fs.readFileSync(filename, 'utf8');
  const out = ts.transpileModule(src, {
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    fileName: filename,
  });
  module._compile(out.outputText, filename);
};
