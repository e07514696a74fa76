#!/bin/sh
# leaderd --on-demote: this node no longer leads; stop taking writes now. leaderd hands leadership
# on only after this returns (when it can: a lost lease is lost). A fast shutdown ends every
# session at once, and sends the standbys all the WAL written before it stops, so after a
# switchover this node can follow the new primary without losing or rewinding anything.
. "$(dirname "$0")/env.sh"
running || exit 0
# A server that does not stop within 10 s (stuck on I/O, say) is stopped without a checkpoint.
pg_ctl stop -D "$PGDATA" -m fast -w -t 10 >/dev/null || pg_ctl stop -D "$PGDATA" -m immediate -w >/dev/null
echo "PostgreSQL stopped"
