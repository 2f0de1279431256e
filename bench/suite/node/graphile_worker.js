'use strict'
// The graphile-worker benchmark worker: run() with one task, "record", whose payload is {"n": n}.
// Concurrency = BENCH_CONCURRENCY; everything else is graphile-worker's default (LISTEN/NOTIFY for
// new jobs, a 2 s poll for future/retried jobs, a pool of 10, successful jobs deleted). It handles
// SIGTERM itself (graceful shutdown). Start it with NO_LOG_SUCCESS=1 to skip the per-job info line.

const { run } = require('graphile-worker')
const { record } = require('./record')

async function main () {
  const runner = await run({
    connectionString: process.env.BENCH_DATABASE_URL,
    concurrency: Number(process.env.BENCH_CONCURRENCY || '1'),
    taskList: {
      record: async (payload) => {
        record(payload.n)
      }
    }
  })
  await runner.promise
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
