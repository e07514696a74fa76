# Sourced by every script here: where this node's PostgreSQL lives. leaderd passes its own
# environment on to its hooks and its check (without its LEADERD_* settings), so set these where
# leaderd starts:
#   PGDATA          this node's data directory (required)
#   PGPORT          its port on 127.0.0.1 (required); the node's --address is 127.0.0.1:PGPORT
#   PG_BINDIR       PostgreSQL's programs (default: Debian's /usr/lib/postgresql/15/bin)
#   PG_SYNCHRONOUS  "on": a commit is acknowledged only once a standby has it (default "off")
#   PG_MEMBERS      every member's id, space separated (the standbys a synchronous primary waits for)
# Every script runs as the user that owns the data directory (postgres), like leaderd itself.
set -eu
: "${PGDATA:?set PGDATA to the data directory of this node}"
: "${PGPORT:?set PGPORT to the port of this node}"
# The example trusts connections on loopback as the superuser postgres: pg_rewind needs a
# superuser (or a role granted its functions). Use a password or certificates off a test host.
export PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE=postgres
PATH=${PG_BINDIR:-/usr/lib/postgresql/15/bin}:$PATH
# Outside the data directory: pg_rewind and pg_basebackup replace what is in it.
PG_LOG=${PG_LOG:-$PGDATA.log}

sql() { psql -XAtq -v ON_ERROR_STOP=1 -c "$1"; }

# The port goes on the command line, not in postgresql.conf: pg_rewind and pg_basebackup copy the
# configuration files from the primary, which runs on another port.
start_postgres() { pg_ctl start -D "$PGDATA" -l "$PG_LOG" -o "-p $PGPORT" -w -t 120 >/dev/null; }
running() { pg_ctl status -D "$PGDATA" >/dev/null 2>&1; }

# Who leads now, as this node's sidecar sees it ("" for nobody, "?" when the sidecar did not
# answer): leaderd.sh tells the hooks where the sidecar listens.
current_leader() {
  node -e 'fetch(`http://${process.argv[1]}/role`, { signal: AbortSignal.timeout(2000) })
    .then((r) => r.json()).then((b) => console.log(b.leader?.id ?? ""), () => console.log("?"))' "${PG_SIDECAR_HTTP:?}"
}

# libpq connection string to the leader leaderd names (LEADERD_LEADER_ADDRESS is its --address,
# host:port), as this node: a standby's application_name is its id, which synchronous_standby_names
# lists.
leader_conninfo() {
  echo "host=${LEADERD_LEADER_ADDRESS%:*} port=${LEADERD_LEADER_ADDRESS##*:} user=postgres application_name=$LEADERD_ID"
}
