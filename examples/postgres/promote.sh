#!/bin/sh
# leaderd --on-promote: this node leads. Make PostgreSQL the primary, then record the fencing token
# in the one-row table leaderd_fence, where writers check it: a writer commits only to a node whose
# token is the one its sidecar hands out (see writer.mjs). A non-zero exit makes leaderd resign.
. "$(dirname "$0")/env.sh"
running || { echo "PostgreSQL is not running: cannot promote" >&2; exit 1; }

# Synchronous replication is configured before the promotion, so that no commit on the new
# primary is ever acknowledged before a standby has it. ANY 1 over the other members: whichever
# standby confirms first.
if [ "${PG_SYNCHRONOUS:-off}" = on ]; then
  standbys=$(for member in ${PG_MEMBERS:?list the members in PG_MEMBERS}; do
    [ "$member" = "$LEADERD_ID" ] || printf '"%s",' "$member"; done)
  sql "alter system set synchronous_standby_names = 'ANY 1 (${standbys%,})'"
else
  sql "alter system reset synchronous_standby_names"
fi
sql "select pg_reload_conf()" >/dev/null

if [ "$(sql 'select pg_is_in_recovery()')" = t ]; then
  # Waits (up to 60 s) until the promotion is done and the server accepts writes.
  [ "$(sql 'select pg_promote(true, 60)')" = t ] || { echo "pg_promote did not finish" >&2; exit 1; }
  echo "promoted $LEADERD_ID"
fi
# The token's row needs no standby's confirmation: a lost one is replaced by the next promotion.
psql -XAtq -v ON_ERROR_STOP=1 -c "set synchronous_commit = local" \
  -c "update leaderd_fence set token = $LEADERD_FENCING_TOKEN" >/dev/null
echo "fencing token $LEADERD_FENCING_TOKEN recorded"
