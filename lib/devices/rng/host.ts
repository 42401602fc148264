/**
 * What the entropy device needs from the host: random bytes. `lib/vm/rng-host.ts` implements it
 * with the host CSPRNG; tests implement it deterministically.
 * @module
 */

/** Host operations of the entropy device. */
export interface EntropyHost {
  /**
   * Fills `view` (guest memory) with cryptographically secure random bytes, synchronously.
   * A throw is counted and the request completes with nothing written.
   */
  randomFill(view: Uint8Array): void;
}
