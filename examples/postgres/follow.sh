#!/bin/sh
# leaderd --on-leader-change: follow the new leader.
#  - A running replica is pointed at it: PostgreSQL restarts its WAL receiver on reload.
#  - A stopped server (a former primary, killed or demoted) may hold WAL the new primary never got:
#    pg_rewind takes it back to the point where their histories parted, then it starts as a replica.
#    When pg_rewind cannot (the WAL it needs is gone, say), a fresh copy of the leader replaces it.
. "$(dirname "$0")/env.sh"
[ -n "$LEADERD_LEADER_ADDRESS" ] || exit 0
[ "$LEADERD_LEADER_ID" != "$LEADERD_ID" ] || exit 0 # the leader is this node: promote.sh's turn
conninfo=$(leader_conninfo)

if running; then
  in_recovery=$(sql 'select pg_is_in_recovery()') || { echo "PostgreSQL runs but does not answer" >&2; exit 1; }
  # A standby started by the crash-recovery step below (which a run cut short may leave running)
  # has primary_conninfo on its command line, where ALTER SYSTEM cannot change it: stop it, and
  # follow as a stopped server does.
  from=$(sql "select source from pg_settings where name = 'primary_conninfo'")
  if [ "$in_recovery" = t ] && [ "$from" = "command line" ]; then
    pg_ctl stop -D "$PGDATA" -m fast -w -t 10 >/dev/null
  elif [ "$in_recovery" = t ]; then
    sql "alter system set primary_conninfo = '$conninfo'"
    sql "select pg_reload_conf()" >/dev/null
    echo "following $LEADERD_LEADER_ID at $LEADERD_LEADER_ADDRESS"
    exit 0
  else
    # Still a primary (its demote failed): it must stop before it can follow.
    pg_ctl stop -D "$PGDATA" -m fast -w -t 10 >/dev/null
  fi
fi

# A replica that crashed (kill -9, its host down) must finish its crash recovery before pg_rewind
# can read it. pg_rewind would run that recovery in single-user mode, which refuses a standby
# ("standby mode is not supported by single-user servers"), and the fallback below, a fresh copy
# of the leader, costs as much as the whole database: the chaos run's killed replicas all took it.
# So it is started as the standby it is, with no primary to stream from (nothing new arrives),
# until it is consistent, then stopped cleanly ("shut down in recovery", which pg_rewind accepts).
# A standby writes no WAL of its own: pg_rewind then compares the histories as they were. It is
# stopped only once it has replayed all the WAL it holds (its replay position stands still with
# nothing to stream): stopped earlier, pg_rewind would take the end of its WAL to be where replay
# stopped, and could miss a divergence beyond it. A server that cannot get consistent on its own
# WAL is stopped again and left to pg_rewind.
if [ ! -f "$PGDATA.copying" ] && [ ! -f "$PGDATA.rewinding" ] && [ -f "$PGDATA/standby.signal" ] &&
  ! LC_ALL=C pg_controldata "$PGDATA" | grep -q '^Database cluster state: *shut down'; then
  pg_ctl start -D "$PGDATA" -l "$PG_LOG" -o "-p $PGPORT -c primary_conninfo=''" -w -t 60 >/dev/null || true
  replayed=""
  while at=$(sql 'select pg_last_wal_replay_lsn()' 2>/dev/null) && [ "$at" != "$replayed" ]; do
    replayed=$at
    sleep 0.5
  done
  pg_ctl stop -D "$PGDATA" -m fast -w -t 10 >/dev/null || pg_ctl stop -D "$PGDATA" -m immediate -w >/dev/null || true
  echo "crash recovery done"
fi

# leaderd names the leader as soon as it comes first, before its promote hook has run. Rewinding
# against a server that is still a replica would find nothing to rewind, then fail to follow it
# once its promotion forks the history below this node's WAL: wait for the promotion. A member
# can also come first and step back (another one is better, or a switchover names another): the
# hook for the next leader then follows this one, so stop waiting.
deadline=$(($(date +%s) + 60))
until [ "$(psql -XAtq -d "$conninfo" -c 'select pg_is_in_recovery()' 2>/dev/null)" = f ]; do
  leader=$(current_leader)
  # (A sidecar that did not answer, "?", says nothing: keep waiting.)
  [ "$leader" = "$LEADERD_LEADER_ID" ] || [ "$leader" = "?" ] || { echo "$LEADERD_LEADER_ID no longer leads"; exit 0; }
  [ "$(date +%s)" -lt $deadline ] || { echo "$LEADERD_LEADER_ID is not a primary after 60 s" >&2; exit 1; }
  sleep 0.2
done

# A promoted server writes its new timeline into its control file, which pg_rewind reads, only at
# its next checkpoint: ask for one, or pg_rewind may see the old timeline and rewind to the wrong point.
psql -XAtq -d "$conninfo" -c checkpoint
# leaderd runs this hook again when it fails, and may kill a run part way: every step below can be
# cut short and taken again. A rewind or a fresh copy in progress is marked ($PGDATA.rewinding,
# $PGDATA.copying): a data directory one of them left half done (or none at all) is never rewound
# nor set aside, only copied afresh. $PGDATA.old, the data set aside when a rewind failed, is this
# node's own, and a later run replaces it only with a whole data directory.
if [ -f "$PGDATA.copying" ] || [ -f "$PGDATA.rewinding" ] || [ ! -f "$PGDATA/PG_VERSION" ]; then
  echo "no whole data directory (a copy or a rewind was cut short): copying $LEADERD_LEADER_ID afresh"
  rm -rf "$PGDATA"
  rm -f "$PGDATA.rewinding"
else
  touch "$PGDATA.rewinding"
  # -R (--write-recovery-conf) leaves standby.signal and primary_conninfo for the leader.
  if pg_rewind -D "$PGDATA" --source-server="$conninfo" -R 2>&1; then
    echo "pg_rewind done"
  else
    echo "pg_rewind failed: copying $LEADERD_LEADER_ID afresh"
    rm -rf "$PGDATA.old"
    mv "$PGDATA" "$PGDATA.old"
  fi
  rm "$PGDATA.rewinding"
fi
# Started only on a rewound directory or a finished copy: with `set -e` (env.sh), any step that
# failed above has ended the run, and nothing half done is ever started as it is.
if [ ! -d "$PGDATA" ]; then
  touch "$PGDATA.copying"
  # --no-slot: with a replication slot, pg_basebackup reports how far it has written the WAL it
  # streams, under this node's name, which synchronous_standby_names lists: a half-made copy would
  # count as the standby that confirms commits.
  pg_basebackup -D "$PGDATA" -d "$conninfo" -R -X stream -c fast --no-slot
  rm "$PGDATA.copying"
fi
start_postgres
echo "following $LEADERD_LEADER_ID at $LEADERD_LEADER_ADDRESS"
