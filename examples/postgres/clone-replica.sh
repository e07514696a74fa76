#!/bin/sh
# clone-replica.sh ID PRIMARY_ADDRESS: copies the primary at PRIMARY_ADDRESS (host:port) into
# PGDATA and starts the copy as a replica streaming from it, as the member ID.
. "$(dirname "$0")/env.sh"
LEADERD_ID=${1:?usage: clone-replica.sh ID PRIMARY_ADDRESS}
LEADERD_LEADER_ADDRESS=${2:?usage: clone-replica.sh ID PRIMARY_ADDRESS}
# -R (--write-recovery-conf): standby.signal, and primary_conninfo pointing at the primary.
# --no-slot: see follow.sh (a copy streaming through a slot counts as a synchronous standby).
pg_basebackup -D "$PGDATA" -d "$(leader_conninfo)" -R -X stream -c fast --no-slot
start_postgres
echo "$PGDATA: a replica of $LEADERD_LEADER_ADDRESS on port $PGPORT"
