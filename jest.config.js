/** Default test tier: unit tests (no KVM) and freestanding-guest tests (KVM, skipped without it). */
const path = require('path');

// These tiers load the test build of the addon, the one with the `_testing` hooks (`npm run
// build:native:test`; `npm test` builds it first). Set here, in the parent process, so that the
// workers and the Node processes the tests start inherit it.
process.env.KINDLING_ADDON = process.env.KINDLING_ADDON || path.join(__dirname, 'build-test', 'Release', 'kindling.node');

module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  rootDir: '.',
  testMatch: ['**/test/unit/**/*.test.ts', '**/test/kvm/**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', {}] },
  // Tests and examples import the package by name; test the sources, not a possibly stale dist/.
  moduleNameMapper: { '^kindling$': '<rootDir>/lib/index.ts', '^kindling/testing$': '<rootDir>/lib/testing/index.ts' },
  testTimeout: 120000,
};
