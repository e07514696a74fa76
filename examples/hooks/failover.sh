#!/bin/sh
# An example failover hook for a replicated application. leaderd runs it without a shell
# interpreter of its own (this script brings its own), one event at a time, with:
#   LEADERD_EVENT           promote | demote | leader-change
#   LEADERD_ELECTION, LEADERD_ID, LEADERD_ROLE
#   LEADERD_LEADER_ID, LEADERD_LEADER_ADDRESS   (empty when no leader is known)
#   LEADERD_FENCING_TOKEN   grows with every term: hand it to whatever you write to
# A non-zero exit from promote makes this node resign (see --promote-failure).
set -eu

case "$LEADERD_EVENT" in
  promote)
    echo "promoting $LEADERD_ID with fencing token $LEADERD_FENCING_TOKEN"
    # e.g. pg_ctl promote -D "$PGDATA"; record the token where writers check it
    ;;
  demote)
    echo "demoting $LEADERD_ID (term $LEADERD_FENCING_TOKEN is over)"
    # e.g. stop accepting writes now; leaderd releases leadership only after this returns
    ;;
  leader-change)
    if [ "$LEADERD_LEADER_ID" != "$LEADERD_ID" ]; then
      echo "following the new primary $LEADERD_LEADER_ID at $LEADERD_LEADER_ADDRESS"
      # e.g. re-point replication at "$LEADERD_LEADER_ADDRESS"
    fi
    ;;
esac
