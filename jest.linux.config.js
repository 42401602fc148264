/** Slow tier: boots a real Linux kernel (minutes on emulated KVM). `npm run test:linux`. */
module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/test/linux/**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', {}] },
  testTimeout: 30 * 60 * 1000,
};
