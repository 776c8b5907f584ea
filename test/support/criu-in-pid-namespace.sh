#!/bin/bash
# Stands in for criu on a second "host" on this machine: runs `criu ARGS` in a fresh pid and mount
# namespace whose init (a small reaping shell) stays behind to hold whatever was restored, since the
# frozen source still holds its pids here. Exits with criu's status. The init's pid is appended to
# $HAUL_TEST_HOLDERS so the test can end the namespace. A --pidfile CRIU writes names the restored
# root inside that namespace; it is rewritten to the pid this machine's root namespace knows it by,
# which is what the caller (the image-cache, outside the namespace) signals.
set -u
# the destination's CRIU build (test/support/criu-matrix.ts sets it for each pass of the matrix)
criu=${HAUL_TEST_DESTINATION_CRIU:-/usr/local/sbin/criu}
# what CRIU this is: asked of it directly (haul reads the version of the CRIU it is given); and
# the lazy-pages daemon runs where it did for the restores these tests were written with, in this
# machine's pid namespace, which sees the restored tasks of every namespace below it
case "${1:-}" in --version|lazy-pages) exec "$criu" "$@" ;; esac
state=$(mktemp -d)
setsid unshare --pid --fork --kill-child --mount-proc /bin/sh -c '
  "$@"; echo $? > "'"$state"'/rc"
  while :; do sleep 3600 & wait $!; done' sh "$criu" "$@" </dev/null >/dev/null 2>&1 &
holder=$!
echo $holder >> "${HAUL_TEST_HOLDERS:-/dev/null}"
while [ ! -s "$state/rc" ]; do sleep 0.05; done
rc=$(cat "$state/rc"); rm -rf "$state"

pidfile=
while [ $# -gt 0 ]; do [ "$1" = --pidfile ] && pidfile=${2:-}; shift; done
if [ "$rc" = 0 ] && [ -n "$pidfile" ] && [ -s "$pidfile" ]; then
  inner=$(cat "$pidfile")
  init=$(pgrep -P "$holder" | head -n1)
  ns=$(readlink "/proc/$init/ns/pid")
  for dir in /proc/[0-9]*; do
    [ "$(readlink "$dir/ns/pid" 2>/dev/null)" = "$ns" ] || continue
    if [ "$(awk '/^NSpid:/ { print $NF }' "$dir/status" 2>/dev/null)" = "$inner" ]; then
      echo "${dir#/proc/}" > "$pidfile"
      break
    fi
  done
fi
exit "$rc"
