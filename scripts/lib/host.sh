# Paths and small helpers shared by scripts/setup-host, scripts/testbed and scripts/test.
# Sourced, never run. Everything haul installs or keeps on a host lives under these paths.

HAUL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

HAUL_CRIU_VERSION=4.1.1
HAUL_CRIU_ORIG_SHA256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
HAUL_CRIU_BIN=/usr/local/sbin/criu
# CRIU 4.2.1 beside it, from sid's source package (its page-server header is 32 bytes, not 24):
# never on a PATH, named where a test or a move wants it
HAUL_CRIU_NEXT_VERSION=4.2.1
HAUL_CRIU_NEXT_ORIG_SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
HAUL_CRIU_NEXT_BIN=/usr/local/lib/haul-testbed/criu-4.2.1/criu
HAUL_WORKLOAD_BIN=/usr/local/bin/haul-workload

HAUL_CACHE=/var/cache/haul                 # build trees and image tarballs, safe to delete
HAUL_TESTBED=/var/lib/haul-testbed          # the two test hosts' INCUS_DIRs, logs and client config
HAUL_INCUS_CONF=$HAUL_TESTBED/client        # INCUS_CONF of the client that knows remotes src and dst

# incusd and liblxc find criu through PATH; Debian's /etc/default/incus would put /usr/sbin (criu 3.17,
# which fails on this kernel) first, so every incusd we start gets /usr/local/sbin ahead of it, and
# haul's CRIU hook (`haul agent install`) ahead of everything: a hook of its own per test-bed host, so
# that each host may run another CRIU build (the hook execs the one it was installed with).
hook_dir() { echo "/usr/local/lib/haul/hook-$1"; }
incus_path() { echo "$(hook_dir "$1"):/usr/libexec/incus:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"; }

# the binary of a CRIU build setup-host installs, by version
criu_build() {
  case $1 in
    "$HAUL_CRIU_VERSION") echo "$HAUL_CRIU_BIN" ;;
    "$HAUL_CRIU_NEXT_VERSION") echo "$HAUL_CRIU_NEXT_BIN" ;;
    *) die "no CRIU $1 here (setup-host installs $HAUL_CRIU_VERSION and $HAUL_CRIU_NEXT_VERSION)" ;;
  esac
}

say() { printf '%s %s\n' "[$(basename "$0")]" "$*" >&2; }
die() { say "error: $*"; exit 1; }
# the Debian mirror this host installs from (its debian.sources), else Debian's own
debian_mirror() {
  local mirror
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  echo "${mirror:-http://deb.debian.org/debian}"
}

require_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts incusd)"
}

# Kernel settings that are lost on reboot, so both setup-host and `testbed up` apply them.
# fs.pipe-max-size: criu's lazy page server grows a pipe to ~3.2 MiB with F_SETPIPE_SZ; without
#   CAP_SYS_RESOURCE that fails above the limit (1 MiB by default), criu ignores the error and the first
#   page request dies in splice() with EBADF.
# vm.unprivileged_userfaultfd: a lazy restore of an unprivileged container opens userfaultfd inside the
#   container's user namespace.
apply_runtime_settings() {
  [ "$(cat /proc/sys/fs/pipe-max-size)" -ge 4194304 ] || echo 4194304 > /proc/sys/fs/pipe-max-size
  [ "$(cat /proc/sys/vm/unprivileged_userfaultfd)" = 1 ] || echo 1 > /proc/sys/vm/unprivileged_userfaultfd
  if [ -d /etc/sysctl.d ] && [ ! -f /etc/sysctl.d/90-haul.conf ]; then
    printf 'fs.pipe-max-size = 4194304\nvm.unprivileged_userfaultfd = 1\n' > /etc/sysctl.d/90-haul.conf
  fi
}

# The Node flags every haul process runs with (cli/node-flags: a flag a line, blank lines and lines
# from a # left out; test/support/build-cli.ts reads it the same way), each followed by a space.
haul_node_flags() {
  [ -r "$HAUL_ROOT/cli/node-flags" ] || die "$HAUL_ROOT/cli/node-flags is missing"
  sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' -e '/^#/d' -e '/^$/d' "$HAUL_ROOT/cli/node-flags" | tr '\n' ' '
}

# Node.js 20+ and the locked npm dependencies; npm ci runs only when the lock file changed.
install_node_dependencies() {
  local node_major lock_sum
  node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  [ "$node_major" -ge 20 ] || die "haul needs Node.js 20 or later with npm (found: $(node --version 2>/dev/null || echo none))"
  lock_sum=$(sha256sum "$HAUL_ROOT/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$HAUL_ROOT/node_modules/.haul-lock.sha256" 2>/dev/null)" != "$lock_sum" ]; then
    say "npm ci"
    (cd "$HAUL_ROOT" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$lock_sum" > "$HAUL_ROOT/node_modules/.haul-lock.sha256"
  fi
}

# Compiles haul into dist/ when a source is newer than the last build (dist/.built, which the test
# suite's global setup also writes); a running agent is restarted only when this rebuilt it.
build_haul() {
  local stamp=$HAUL_ROOT/dist/.built
  if [ -f "$stamp" ] && [ -z "$(find "$HAUL_ROOT/src" "$HAUL_ROOT/proxy" "$HAUL_ROOT/plugin" "$HAUL_ROOT/cli" "$HAUL_ROOT/scripts" "$HAUL_ROOT/test/support" "$HAUL_ROOT/package.json" -path "*/generated" -prune -o \
      \( -name '*.ts' -o -name '*.proto' -o -name '*.json' \) -newer "$stamp" -print -quit)" ]; then
    return 0
  fi
  say "building haul (dist/)"
  (cd "$HAUL_ROOT" && npm run --silent build >&2)
  touch "$stamp"
}
