import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DUMP_ANSWER_MS, MIGRATION_ID_FILE, RESTORE_ANSWER_MS } from './hook-protocol.js';
import { shellWord } from '../src/shell-words.js';

/** How long the hook waits for the agent's answer, by call (the restore's waits for the pages); it tells the agent. */
const DUMP_ANSWER_S = DUMP_ANSWER_MS / 1000;
const RESTORE_ANSWER_S = RESTORE_ANSWER_MS / 1000;
/** Part of Debian's perl-base, which is Essential. */
const PERL = '/usr/bin/perl';

/** Marks a file as haul's hook, so that uninstall removes only what install wrote. */
const MARK = '# haul-criu-hook';

/**
 * What the hook becomes for a dump or a restore: perl (Debian's perl-base is Essential, and it
 * starts in a few milliseconds; Node takes 0.12 s here, and the restore's call is inside the
 * container's downtime). Arguments: the real CRIU, the agent's socket, then CRIU's. It sends the
 * request as one JSON line, reads the reply (plugin/hook-protocol.ts), and execs CRIU with the
 * agent's arguments, in this same process: liblxc looks for the restored init among its own
 * children. A `ps-socket` in the reply is connected here and handed to CRIU as --ps-socket, the one
 * descriptor left open across the exec. It exits 1 (saying why on stderr) when the agent says the
 * call must fail, and runs CRIU unchanged when no agent listens or answers in time, unless the
 * restore needs the pages haul moved. No single quote may appear in it.
 */
const ASK_AGENT_THEN_EXEC = String.raw`
use Socket;
use Fcntl;
my $criu = shift @ARGV;
my $path = shift @ARGV;
my @args = @ARGV;
sub js { my $v = shift; $v =~ s/(["\\])/\\$1/g; $v =~ s/([\x00-\x1f])/sprintf("\\u%04x", ord $1)/ge; return "\"$v\""; }
sub run_criu {
  alarm 0; # a pending alarm and an ignored signal would outlive the exec
  $SIG{PIPE} = "DEFAULT"; $SIG{ALRM} = "DEFAULT";
  exec { $criu } $criu, @_;
  print STDERR "haul hook: cannot run $criu: $!\n"; exit 1;
}
sub needs_haul {
  return 0 unless $args[0] eq "restore";
  my $dir; for my $i (0 .. $#args - 1) { $dir = $args[$i + 1] if $args[$i] eq "-D"; }
  return defined $dir && -f "$dir/${MIGRATION_ID_FILE}";
}
# runs CRIU unchanged, saying why ($why) unless no agent is installed here at all; but a restore
# whose pages went through haul cannot run without haul: say so ($missing) rather than let CRIU fail
# on missing pages (the file is the one the source agent leaves in the checkpoint directory)
sub native {
  my ($why, $missing) = @_;
  print STDERR "haul hook: $why; running criu $args[0] unchanged\n" if defined $why;
  if (needs_haul()) { print STDERR "haul: this restore needs the pages haul moved, and " . ($missing // "no haul agent answered") . "\n"; exit 1; }
  run_criu(@args);
}
native(undef, "no haul agent listens at $path") unless -S $path;
$SIG{PIPE} = "IGNORE"; # an agent gone mid-request: a failed write, said on stderr, not a silent death
socket(my $s, PF_UNIX, SOCK_STREAM, 0) or native("no socket: $!");
connect($s, pack_sockaddr_un($path)) or native("the haul agent at $path does not answer: $!");
$SIG{ALRM} = sub { native("the haul agent at $path did not answer in time") };
my $within = $args[0] eq "dump" ? ${DUMP_ANSWER_S} : ${RESTORE_ANSWER_S};
alarm($within);
my $request = "{\"call\":" . js($args[0]) . ",\"pid\":$$,\"answer_within_ms\":" . ($within * 1000) . ",\"args\":[" . join(",", map { js($_) } @args) . "]}\n";
for (my $sent = 0; $sent < length $request;) {
  my $n = syswrite($s, $request, length($request) - $sent, $sent);
  native("the haul agent at $path went away: $!") unless defined $n;
  $sent += $n;
}
my $line = <$s>;
native("the haul agent at $path closed without answering") unless defined $line;
chomp $line;
if ($line =~ /^error (.*)$/s) { print STDERR "$1\n"; exit 1; }
my $page_server;
if ($line =~ /^ps-socket (.+)$/s) {
  my $ps_path = $1;
  socket($page_server, PF_UNIX, SOCK_STREAM, 0) or native("no socket: $!");
  # no fallback past this point: the agent waits for this dump on its page server
  connect($page_server, pack_sockaddr_un($ps_path)) or do { print STDERR "haul hook: cannot reach haul page server at $ps_path: $!\n"; exit 1; };
  my $flags = fcntl($page_server, F_GETFD, 0);
  fcntl($page_server, F_SETFD, $flags & ~FD_CLOEXEC);
  $line = <$s>;
  native("the haul agent at $path stopped in the middle of its answer") unless defined $line;
  chomp $line;
}
native("the haul agent at $path answered something else") unless $line =~ /^args (\d+)$/;
my @new;
{
  local $/ = "\0";
  for (1 .. $1) {
    my $arg = <$s>;
    native("the haul agent at $path stopped in the middle of its answer") unless defined $arg && chomp($arg);
    push @new, $arg;
  }
}
close $s;
push @new, "--ps-socket", fileno($page_server) if defined $page_server;
run_criu(@new);
`;

/**
 * The hook liblxc runs as `criu`: POSIX sh, then the perl above (liblxc needs the real CRIU to
 * replace it, so it ends in an exec). It prints nothing on stdout (liblxc parses `criu --version`
 * there), passes every call but the final dump and the restore straight to the real CRIU, and
 * becomes the perl for those two, which asks the haul agent and becomes CRIU. With no agent socket,
 * or no agent answering, the call runs unchanged and the move stays native; a restore whose pages
 * went through haul then fails, saying why (the perl decides both).
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
exec ${PERL} -e ${shellWord(ASK_AGENT_THEN_EXEC)} "$real_criu" "$socket" "$@"
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
