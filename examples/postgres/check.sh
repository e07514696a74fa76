#!/bin/sh
# leaderd --check: healthy when PostgreSQL answers (a server still replaying to a consistent state,
# after a crash or a pg_rewind, does not). Prints {"position": N, "eligible": B}, N in bytes of WAL:
#  - a primary: pg_current_wal_lsn(), what it has written.
#  - a replica: pg_last_wal_receive_lsn(), what it has received *and flushed*, not what it has
#    replayed. A synchronous commit is acknowledged once a standby has flushed it, and a promotion
#    replays everything received before it accepts writes, so the replica that received the most
#    holds every acknowledged commit. Replay may lag or be paused (pg_wal_replay_pause()) without
#    losing anything; a WAL receiver that is frozen or cut off does lose, and its position stops.
#  - eligible: false while a replica has received nothing since it started (just cloned,
#    restarted or rewound): its position is then its replay position, possibly of an old timeline.
. "$(dirname "$0")/env.sh"
sql "select json_build_object(
       'position', pg_wal_lsn_diff(case when not pg_is_in_recovery() then pg_current_wal_lsn()
                                        else coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) end,
                                   '0/0')::bigint,
       'eligible', not pg_is_in_recovery() or pg_last_wal_receive_lsn() is not null)"
