import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    // The suites start real servers and time real failovers: one file at a time keeps the two
    // cores free for the processes under test.
    fileParallelism: false,
    testTimeout: 60000,
    hookTimeout: 60000,
    reporters: ['default', 'json'],
    outputFile: { json: '.test-results.json' },
  },
});
