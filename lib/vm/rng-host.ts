/**
 * The entropy device's host service: the host CSPRNG through Node's `crypto.randomFillSync`
 * (getrandom(2) underneath). No addon is needed.
 * @module
 */
import { randomFillSync } from 'crypto';
import type { EntropyHost } from '../devices/rng/host';

/** An {@link EntropyHost} over the host CSPRNG. */
export function createEntropyHost(): EntropyHost {
  return {
    randomFill: (view) => {
      randomFillSync(view);
    },
  };
}
