#!/usr/bin/env node
// Prints the plain summary line CI reads ("N passed, N failed, N skipped") from Vitest's own JSON
// report. Exits non-zero when the report is missing, or when a test was skipped under CI: a skipped
// test there means a backend was missing, which is a failure.
import { readFileSync } from 'node:fs';

const file = process.argv[2] ?? '.test-results.json';
let report;
try {
  report = JSON.parse(readFileSync(file, 'utf8'));
} catch (error) {
  console.error(`test-summary: no test report at ${file} (${error.code ?? error.message}): the test run did not complete`);
  process.exit(1);
}
const passed = report.numPassedTests ?? 0;
// A file that failed outside any test (an import error, a failed beforeAll) counts as one failure.
const brokenFiles = (report.testResults ?? []).filter(
  (file) => file.status === 'failed' && !(file.assertionResults ?? []).some((test) => test.status === 'failed'),
).length;
const failed = (report.numFailedTests ?? 0) + brokenFiles;
const skipped = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
if (process.env.CI && skipped > 0) {
  console.error('test-summary: tests were skipped; under CI every test must run');
  process.exit(1);
}
process.exit(failed > 0 || report.success === false ? 1 : 0);
