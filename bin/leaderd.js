#!/usr/bin/env node
// The published entry point: the compiled CLI lives in dist/ (built by `npm ci` through `prepare`).
// Deprecation warnings speak to leaderd's developers, not its operators, and Node writes them to
// stderr outside the log: the gRPC client's TLS to an IP address (DEP0123) would print one at
// every start on etcd with https:// endpoints.
process.noDeprecation = true;
import('../dist/src/cli.js').then((cli) => cli.main(process.argv.slice(2)));
