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

# One run at a time: leaderd runs this hook again when it fails and kills a run part way when
# newer news comes, and a run it gave up on (a timeout, a restart of the sidecar) may still be at
# work. Every step below can be cut short and taken again. (The servers started here must not
# inherit the lock: `9>&-`.)
exec 9>"$PGDATA.lock"
flock -n 9 || { echo "another follow.sh is at work on $PGDATA" >&2; exit 1; }

# A server started by the replay step below, which a run cut short may leave running (still
# replaying, perhaps not answering yet), has primary_conninfo on its command line, where ALTER
# SYSTEM cannot change it: stop it, and follow as a stopped server does.
if running && grep -q "primary_conninfo=" "$PGDATA/postmaster.opts" 2>/dev/null; then
  pg_ctl stop -D "$PGDATA" -m immediate -w >/dev/null
fi
if running; then
  in_recovery=$(sql 'select pg_is_in_recovery()') || { echo "PostgreSQL runs but does not answer" >&2; exit 1; }
  if [ "$in_recovery" = t ]; then
    sql "alter system set primary_conninfo = '$conninfo'"
    sql "select pg_reload_conf()" >/dev/null
    echo "following $LEADERD_LEADER_ID at $LEADERD_LEADER_ADDRESS"
    exit 0
  else
    # Still a primary (its demote failed): it must stop before it can follow.
    pg_ctl stop -D "$PGDATA" -m fast -w -t 10 >/dev/null
  fi
fi

# A set-aside of the data that a run did not finish (see below): finish it.
if [ -d "$PGDATA.old.new" ]; then
  rm -rf "$PGDATA.old"
  mv "$PGDATA.old.new" "$PGDATA.old"
fi

# A stopped standby (crashed, stopped by a demote or by a run of this hook) first replays all the
# WAL it holds. pg_rewind takes the end of a standby's WAL to be where its replay stopped: WAL it
# holds beyond that, past the point where its history and the leader's parted, would go unseen
# ("no rewind required") and be replayed once it starts. And pg_rewind cannot finish a crashed
# standby's recovery itself: it would run it in single-user mode, which refuses a standby
# ("standby mode is not supported by single-user servers"). So the standby is started as it is,
# with nothing to stream from and no archive (it writes no WAL of its own: the histories stay as
# they were), until its replay position stands still, then stopped cleanly. A standby that cannot
# start so within 60 s (one that fetched the new primary's timeline history while its own WAL had
# gone past the fork refuses to start at all) is left to pg_rewind, which reads its control file.
if [ ! -f "$PGDATA.copying" ] && [ ! -f "$PGDATA.rewinding" ] && [ -f "$PGDATA/PG_VERSION" ] && [ -f "$PGDATA/standby.signal" ]; then
  if pg_ctl start -D "$PGDATA" -l "$PG_LOG" -o "-p $PGPORT -c primary_conninfo='' -c restore_command=''" -w -t 60 >/dev/null 9>&-; then
    replayed=""
    while at=$(sql 'select pg_last_wal_replay_lsn()' 2>/dev/null) && [ "$at" != "$replayed" ]; do
      replayed=$at
      sleep 1
    done
    pg_ctl stop -D "$PGDATA" -m fast -w -t 10 >/dev/null || true
    echo "replayed its own WAL to $replayed"
  else
    echo "cannot replay its own WAL (see $PG_LOG): left to pg_rewind"
  fi
  ! running || pg_ctl stop -D "$PGDATA" -m immediate -w >/dev/null
fi

# leaderd names the leader as soon as it comes first, before its promote hook has run. Rewinding
# against a server that is still a replica would find nothing to rewind, then fail to follow it
# once its promotion forks the history below this node's WAL: wait for the promotion. A member
# can also come first and step back (another one is better, or a switchover names another): the
# hook for the next leader then follows that one, so stop waiting. When the sidecar names nobody
# (its own session is down) or does not answer, this run fails, to be run again.
deadline=$(($(date +%s) + 60))
until [ "$(psql -XAtq -d "$conninfo" -c 'select pg_is_in_recovery()' 2>/dev/null)" = f ]; do
  leader=$(current_leader)
  case "$leader" in
    "$LEADERD_LEADER_ID" | "?") ;;
    "") echo "the sidecar names no leader now" >&2; exit 1 ;;
    *) echo "$LEADERD_LEADER_ID no longer leads"; exit 0 ;;
  esac
  [ "$(date +%s)" -lt $deadline ] || { echo "$LEADERD_LEADER_ID is not a primary after 60 s" >&2; exit 1; }
  sleep 0.2
done

# A promoted server writes its new timeline into its control file, which pg_rewind reads, only at
# its next checkpoint: ask for one, or pg_rewind may see the old timeline and rewind to the wrong point.
psql -XAtq -d "$conninfo" -c checkpoint

# A rewind or a fresh copy in progress is marked ($PGDATA.rewinding, $PGDATA.copying): a data
# directory one of them left half done, or none at all, is never rewound nor started, only copied
# afresh. $PGDATA.old is this node's own data, set aside when a rewind failed (through
# $PGDATA.old.new, so that a run cut short never leaves neither); a run replaces it only with a
# whole data directory.
if [ -f "$PGDATA.copying" ] || [ -f "$PGDATA.rewinding" ] || [ ! -f "$PGDATA/PG_VERSION" ]; then
  echo "no whole data directory (a copy or a rewind was cut short): copying $LEADERD_LEADER_ID afresh"
  # A rewind cut short may have changed nothing yet: keep that data when nothing else is kept.
  if [ -f "$PGDATA.rewinding" ] && [ -d "$PGDATA" ] && [ ! -d "$PGDATA.old" ]; then mv "$PGDATA" "$PGDATA.old"; fi
  rm -rf "$PGDATA"
  rm -f "$PGDATA.rewinding"
else
  touch "$PGDATA.rewinding"
  # -R (--write-recovery-conf) leaves standby.signal and primary_conninfo for the leader.
  if pg_rewind -D "$PGDATA" --source-server="$conninfo" -R 2>&1; then
    echo "pg_rewind done"
  else
    echo "pg_rewind failed: copying $LEADERD_LEADER_ID afresh"
    mv "$PGDATA" "$PGDATA.old.new"
    rm -rf "$PGDATA.old"
    mv "$PGDATA.old.new" "$PGDATA.old"
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
start_postgres 9>&-
echo "following $LEADERD_LEADER_ID at $LEADERD_LEADER_ADDRESS"
