/** Default test tier: unit tests (no KVM) and freestanding-guest tests (KVM, skipped without it). */
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
