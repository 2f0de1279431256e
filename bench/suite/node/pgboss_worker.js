'use strict'
// The pg-boss benchmark worker. pg-boss 10 has no per-worker concurrency option (teamSize and
// teamConcurrency were removed in 10): a work() worker fetches up to batchSize jobs, hands them to
// the handler as an array and completes (or fails) them together once the handler resolves. So one
// work() with batchSize = BENCH_CONCURRENCY (C), running the batch's jobs at once, gives C concurrent
// jobs. BENCH_PGBOSS_BATCH_SIZE, when set, fetches bigger batches, still running at most C of their
// jobs at a time.
// A worker waits for its polling interval (pollingIntervalSeconds, default 2 s) after each fetch,
// i.e. at most batchSize jobs per 2 s; when a fetch came back full, the handler calls
// notifyWorker(id) (pg-boss's documented way to bypass the polling interval for the next iteration)
// so that a backlog drains without waiting. Everything else is pg-boss's default (no LISTEN/NOTIFY;
// completed jobs stay in the job table as 'completed' until maintenance archives them after 12 h).

const PgBoss = require('pg-boss')
const { record } = require('./record')

async function task (job) {
  record(job.data.n)
}

// Runs the jobs with at most `limit` of them at once.
async function runAll (jobs, limit) {
  let next = 0
  const runner = async () => {
    while (next < jobs.length) {
      await task(jobs[next++])
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, runner))
}

async function main () {
  const queue = process.env.BENCH_QUEUE
  const concurrency = Number(process.env.BENCH_CONCURRENCY || '1')
  const batchSize = Number(process.env.BENCH_PGBOSS_BATCH_SIZE || concurrency)
  const boss = new PgBoss(process.env.BENCH_DATABASE_URL)
  boss.on('error', (err) => console.error(err))
  await boss.start()

  let workerId = null
  workerId = await boss.work(queue, { batchSize }, async (jobs) => {
    await runAll(jobs, concurrency)
    if (jobs.length === batchSize && workerId !== null) {
      boss.notifyWorker(workerId)
    }
  })

  let stopping = false
  const stop = async () => {
    if (stopping) return
    stopping = true
    try {
      await boss.stop({ graceful: true, wait: true })
    } finally {
      process.exit(0)
    }
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
