#!/bin/bash
# Stands in for criu on a second "host" on this machine: runs `criu ARGS` in a fresh pid and mount
# namespace whose init (a small reaping shell) stays behind to hold whatever was restored, since the
# frozen source still holds its pids here. Exits with criu's status. The init's pid is appended to
# $HAUL_TEST_HOLDERS so the test can end the namespace.
set -u
state=$(mktemp -d)
setsid unshare --pid --fork --kill-child --mount-proc /bin/sh -c '
  "$@"; echo $? > "'"$state"'/rc"
  while :; do sleep 3600 & wait $!; done' sh /usr/local/sbin/criu "$@" </dev/null >/dev/null 2>&1 &
echo $! >> "${HAUL_TEST_HOLDERS:-/dev/null}"
while [ ! -s "$state/rc" ]; do sleep 0.05; done
rc=$(cat "$state/rc"); rm -rf "$state"
exit "$rc"
