'use strict'
// Creates pg-boss's schema (its own migrations, run by start()) and the benchmark queue
// (pg-boss 10 requires createQueue before send/work), then exits.

const PgBoss = require('pg-boss')

async function main () {
  const boss = new PgBoss({ connectionString: process.env.BENCH_DATABASE_URL, supervise: false, schedule: false })
  boss.on('error', (err) => console.error(err))
  await boss.start()
  await boss.createQueue(process.env.BENCH_QUEUE)
  await boss.stop({ graceful: false })
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
