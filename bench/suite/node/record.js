'use strict'
// What every benchmark task does (the Node.js twin of ../record.py): append "<n> <unix ns>\n" to
// $BENCH_RECORD_DIR/<pid>.log, one write per task on a file opened once per process.

const fs = require('node:fs')
const path = require('node:path')
const { performance } = require('node:perf_hooks')

let fd = -1

function record (n) {
  if (fd < 0) {
    fd = fs.openSync(path.join(process.env.BENCH_RECORD_DIR, `${process.pid}.log`), 'a')
  }
  // performance.timeOrigin + performance.now() is Unix time in milliseconds with sub-microsecond
  // resolution; whole microseconds (below 2^53) followed by "000" make the nanosecond integer.
  const micros = Math.round((performance.timeOrigin + performance.now()) * 1000)
  fs.writeSync(fd, `${n} ${micros}000\n`)
}

module.exports = { record }
