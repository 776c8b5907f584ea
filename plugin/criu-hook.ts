import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MIGRATION_ID_FILE } from './hook-protocol.js';
import { shellWord } from './shell-words.js';

/** The hook's agent client exits with this when the agent says the CRIU call must fail. */
export const REFUSED_EXIT = 75;
/** How long the hook waits for the agent's answer, by call (the restore's waits for the pages). */
const DUMP_ANSWER_S = 30;
const RESTORE_ANSWER_S = 6 * 60;
/** Part of Debian's perl-base, which is Essential. */
const PERL = '/usr/bin/perl';

/** Marks a file as haul's hook, so that uninstall removes only what install wrote. */
const MARK = '# haul-criu-hook';

/**
 * What the hook runs to ask the agent: perl (Debian's perl-base is Essential, and it starts in a few
 * milliseconds; Node takes 0.12 s here, and the restore's call is inside the container's downtime).
 * Arguments: the agent's socket, then CRIU's. It sends the request as one JSON line, prints the
 * agent's arguments as shell words, and exits 0; REFUSED_EXIT (saying why on stderr) when the agent
 * says the call must fail; 3 when no agent answers in time. No single quote may appear in it.
 */
const ASK_AGENT = String.raw`
my $path = shift @ARGV;
my @args = @ARGV;
sub js { my $v = shift; $v =~ s/(["\\])/\\$1/g; $v =~ s/([\x00-\x1f])/sprintf("\\u%04x", ord $1)/ge; return "\"$v\""; }
sub native { print STDERR "haul hook: $_[0]; running criu $args[0] unchanged\n"; exit 3; }
use Socket;
$SIG{PIPE} = "IGNORE"; # an agent gone mid-request: a failed write, said on stderr, not a silent death
socket(my $s, PF_UNIX, SOCK_STREAM, 0) or native("no socket: $!");
connect($s, pack_sockaddr_un($path)) or native("the haul agent at $path does not answer: $!");
$SIG{ALRM} = sub { native("the haul agent at $path did not answer in time") };
alarm($args[0] eq "dump" ? ${DUMP_ANSWER_S} : ${RESTORE_ANSWER_S});
my $request = "{\"call\":" . js($args[0]) . ",\"pid\":$$,\"args\":[" . join(",", map { js($_) } @args) . "]}\n";
for (my $sent = 0; $sent < length $request;) {
  my $n = syswrite($s, $request, length($request) - $sent, $sent);
  native("the haul agent at $path went away: $!") unless defined $n;
  $sent += $n;
}
my $line = <$s>;
native("the haul agent at $path closed without answering") unless defined $line;
chomp $line;
if ($line =~ /^args (.*)$/s) { print "$1\n"; exit 0; }
if ($line =~ /^error (.*)$/s) { print STDERR "$1\n"; exit ${REFUSED_EXIT}; }
native("the haul agent at $path answered something else");
`;

/**
 * The hook liblxc runs as `criu`: POSIX sh with the perl above (liblxc needs the real CRIU to
 * replace it, so it must end in an exec). It prints nothing on stdout (liblxc parses `criu
 * --version` there), passes every call but the final dump and the restore straight to the real
 * CRIU, asks the haul agent about those two, and ends in an exec of CRIU with the agent's
 * arguments. With no agent socket, or no agent answering, the call runs unchanged and the move
 * stays native; a restore whose pages went through haul then fails, saying why.
 */
export function hookScript(realCriu: string): string {
  return `#!/bin/sh
${MARK}: installed by \`haul agent install\`; remove with \`haul agent uninstall\`.
real_criu=${shellWord(realCriu)}
case "\${1:-}" in
  dump|restore) ;;
  *) exec "$real_criu" "$@" ;;
esac
socket="\${INCUS_DIR:-/var/lib/incus}/haul-agent.sock"
# a restore whose pages went through haul cannot run without haul: say so rather than let CRIU fail
# on missing pages (the file is the one the source agent leaves in Incus' checkpoint directory)
needs_haul() {
  [ "$1" = restore ] || return 1
  dir=; previous=
  for arg in "$@"; do [ "$previous" = -D ] && dir=$arg; previous=$arg; done
  [ -n "$dir" ] && [ -f "$dir/${MIGRATION_ID_FILE}" ]
}
if ! [ -S "$socket" ]; then
  needs_haul "$@" && { echo "haul: this restore needs the pages haul moved, and no haul agent listens at $socket" >&2; exit 1; }
  exec "$real_criu" "$@"
fi
ask_agent=${shellWord(ASK_AGENT)}
args=$(${PERL} -e "$ask_agent" "$socket" "$@" </dev/null)
case $? in
  0) eval "set -- $args" ;;
  ${REFUSED_EXIT}) exit 1 ;;  # the agent says this call must fail (it said why on stderr)
  *) needs_haul "$@" && { echo "haul: this restore needs the pages haul moved, and no haul agent answered" >&2; exit 1; } ;;
esac
exec "$real_criu" "$@"
`;
}

export async function installHook(hookDir: string, realCriu: string): Promise<string> {
  const path = join(hookDir, 'criu');
  if (path === realCriu) throw new Error(`the hook would replace the real CRIU at ${realCriu}: install it into another directory`);
  const existing = await readFile(path, 'utf8').catch(() => undefined);
  if (existing !== undefined && !existing.includes(MARK)) throw new Error(`${path} exists and is not haul's hook; not replacing it`);
  await mkdir(hookDir, { recursive: true });
  await writeFile(path, hookScript(realCriu));
  await chmod(path, 0o755);
  return path;
}

export async function uninstallHook(hookDir: string): Promise<boolean> {
  const path = join(hookDir, 'criu');
  const existing = await readFile(path, 'utf8').catch(() => undefined);
  if (existing === undefined) return false;
  if (!existing.includes(MARK)) throw new Error(`${path} is not haul's hook; not removing it`);
  await rm(path);
  return true;
}
