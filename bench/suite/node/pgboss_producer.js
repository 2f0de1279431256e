'use strict'
// The pg-boss producer, driven by the Python driver (pg-boss has no Python client): reads one JSON
// array of numbers per line on stdin, enqueues one job {n} per number on BENCH_QUEUE (send() for
// one, insert() for several: one INSERT statement), and writes "ok" once the jobs are committed.
// It writes "ready" once connected. This instance only sends: no maintenance, no cron scheduling,
// no migrations (the worker's instance does those).

const readline = require('node:readline')
const PgBoss = require('pg-boss')

async function main () {
  const queue = process.env.BENCH_QUEUE
  const boss = new PgBoss({
    connectionString: process.env.BENCH_DATABASE_URL,
    supervise: false,
    schedule: false,
    migrate: false
  })
  boss.on('error', (err) => console.error(err))
  await boss.start()
  process.stdout.write('ready\n')

  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  for await (const line of lines) {
    if (!line) continue
    const numbers = JSON.parse(line)
    if (numbers.length === 1) {
      await boss.send(queue, { n: numbers[0] })
    } else if (numbers.length > 1) {
      await boss.insert(numbers.map((n) => ({ name: queue, data: { n } })))
    }
    process.stdout.write('ok\n')
  }
  await boss.stop({ graceful: false })
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
