/**
 * Loads the C++ addon (build/Release/iwpm_native.node, built by `npm run build:native`).
 * Importing this module loads the addon; code that must run without it (core/, unit
 * tests) imports only ./types.js and gets the binder injected.
 */
import { createRequire } from 'node:module';
import type { Native } from './types.js';

export * from './types.js';

const require = createRequire(import.meta.url);

export const native: Native = (require('bindings') as (name: string) => unknown)('iwpm_native') as Native;
