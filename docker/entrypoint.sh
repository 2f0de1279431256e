#!/bin/sh
# The image's entrypoint: runs the command given (`celeriac worker -A proj …`, `celeriac
# migrate`, `celeriac dashboard …`, or anything else); arguments that start with a dash are
# celeriac's (`docker run IMAGE -A proj worker`). With CELERIAC_MIGRATE=1 the schema is
# created or upgraded first (idempotent, safe when several containers start at once).
set -eu
case "${1:-}" in
    -*) set -- celeriac "$@" ;;
esac
if [ "${CELERIAC_MIGRATE:-0}" = 1 ]; then
    celeriac migrate
fi
exec "$@"
