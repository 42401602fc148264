/**
 * The root of Kindling's error family.
 *
 * Every error a user can get from Kindling is a {@link KindlingError}: one class per module
 * (`ConfigError`, `VmError`, `BootError`, `NativeError`, `VirtioError`, `DeviceError`…), each with a
 * discriminated `code`. `err instanceof KindlingError` holds for all of them, from the CommonJS and
 * the ES module entry points alike (the ESM entry re-exports the CommonJS classes, so there is one
 * copy of each class).
 * @module
 */

/** Base class of every error Kindling throws or rejects with. */
export abstract class KindlingError extends Error {
  /** Discriminant for programmatic handling; each subclass narrows it to its own union. */
  abstract readonly code: string;

  /**
   * @param message human-readable details
   * @param options `cause`: the underlying error, when there is one
   */
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    // Subclasses set `name`; keep stack traces pointing at the subclass constructor's caller.
    this.name = new.target.name;
  }
}
