/**
 * Snapshots: the state file format and its validation, taking a snapshot from native handles,
 * the pieces of restoring one, diff merging, MSR selection and the CPUID compatibility check.
 * @module
 */
export * from './errors';
export * from './bitmap';
export * from './format';
export * from './msrs';
export * from './cpuid-compat';
export * from './codec';
export * from './dirty-memory';
export * from './snapshot';
export * from './merge';
