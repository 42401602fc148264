/**
 * CPU configuration: CPUID normalization, MSR indexes and host-specific workarounds.
 * @module
 */

export * from './errors';
export * from './msrs';
export * from './cpuid';
export * from './host-quirks';
