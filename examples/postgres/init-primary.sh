#!/bin/sh
# Creates the first member's data directory and starts it as the primary. The others are copies of
# it (clone-replica.sh).
. "$(dirname "$0")/env.sh"
# -k: data checksums, which pg_rewind needs (else wal_log_hints = on).
initdb -D "$PGDATA" -U postgres --auth=trust -k >/dev/null
# Every member runs with these: pg_basebackup and pg_rewind copy them to the others. initdb's
# defaults already stream WAL (wal_level replica, max_wal_senders 10, hot_standby on) and trust
# replication connections from loopback.
cat >>"$PGDATA/postgresql.conf" <<'CONF'
listen_addresses = '127.0.0.1'
unix_socket_directories = ''            # TCP on loopback only
wal_keep_size = '256MB'                 # kept for replicas catching up, and for pg_rewind
wal_retrieve_retry_interval = '500ms'   # a replica tries its primary again after 0.5 s, not 5 s
CONF
start_postgres
# The fencing token of the current primary (promote.sh), and writer.mjs's rows.
sql "create table leaderd_fence (token bigint not null); insert into leaderd_fence values (0);
     create table writes (id bigint primary key, token bigint not null)"
echo "$PGDATA: a primary on port $PGPORT"
