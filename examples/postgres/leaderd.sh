#!/bin/sh
# leaderd.sh [LEADERD FLAGS]: this node's leaderd, with the example's check and hooks. Give it the
# election's flags (--backend, --election, --id, ...) and, in its environment, what env.sh asks
# for, and LEADERD_HTTP (default 127.0.0.1:7070), where it listens. Its --address is this node's
# PostgreSQL, which the others replicate from while it leads.
here=$(dirname "$0")
. "$here/env.sh"
# Where this sidecar listens, for its hooks to ask who leads now (follow.sh): leaderd reads
# LEADERD_HTTP itself, and takes it out of its hooks' environment, so a copy is kept for them.
# (Not --http: the hooks would not see it.)
export PG_SIDECAR_HTTP="${LEADERD_HTTP:-127.0.0.1:7070}"
# --check-timeout, --unhealthy-after: a check slowed down by a busy host is not an outage.
# --hook-timeout: a pg_rewind or a fresh copy of a large database takes a while.
# --max-lag: Patroni's default maximum_lag_on_failover, 1 MiB of WAL.
exec node "$here/../../bin/leaderd.js" \
  --address "127.0.0.1:$PGPORT" \
  --check "$here/check.sh" \
  --on-promote "$here/promote.sh" \
  --on-demote "$here/demote.sh" \
  --on-leader-change "$here/follow.sh" \
  --check-timeout 2 --unhealthy-after 5 --hook-timeout 120 \
  --max-lag 1048576 \
  "$@"
