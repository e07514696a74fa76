#!/usr/bin/env node
// The published entry point: the compiled CLI lives in dist/ (built by `npm ci` through `prepare`).
import('../dist/src/cli.js').then((cli) => cli.main(process.argv.slice(2)));
