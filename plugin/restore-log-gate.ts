import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants, lstatSync, openSync, unlinkSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import type { ProcessIdentity } from '../src/host/index.js';

/** What the gatekeeper does by itself when the agent leaves it without a word. */
export interface GateContainment {
  /** The restore's CRIU: killed if it still runs. */
  readonly criu?: ProcessIdentity;
  /** `ss` filters (`dst A and src B`) of incusd's connections to the source's incusd: cut. */
  readonly cutFilters: readonly string[];
}

/** Part of Debian's perl-base, which is Essential. */
const PERL = '/usr/bin/perl';
/** How long the gate waits for its word before the agent is taken to be gone. */
const READY_MS = 10_000;

/**
 * The gatekeeper, a detached perl process (it must outlive the agent). Arguments: the gate's path
 * (where incusd reads CRIU's restore log), the log CRIU really writes, the longest wait in
 * seconds, the restore's CRIU (pid and start time, 0 0 for none), then `ss` filters for incusd's
 * connections to the source's incusd. It makes the gate a FIFO it holds open, says `ready`, and
 * waits for the word `release` on stdin, or its end (the agent is gone), or the longest wait. Left
 * without that word, and unless the agent said `restored` (the restore succeeded), it contains the
 * restore as the agent would have: it kills that CRIU with what it made and cuts those connections, so that Incus
 * fails the move rather than report a failed restore as a success. Then it puts a copy of the log
 * in the FIFO's place (later opens read the file) and writes the log into the FIFO for whoever
 * opened it meanwhile, giving up after 30 s without a reader. The gate sits in Incus' restore dir,
 * which the source's rsync filled: every name it writes there is unlinked first and made anew
 * (mkfifo, and sysopen with O_CREAT | O_EXCL | O_NOFOLLOW), so that a link planted there is never
 * written through.
 */
const GATEKEEPER = String.raw`
use POSIX ();
use Fcntl;
my ($gate, $log, $max_wait, $criu_pid, $criu_start, @cuts) = @ARGV;
sub stat_of {
  my ($pid) = @_;
  open(my $stat, "<", "/proc/$pid/stat") or return;
  my $fields = <$stat>; close $stat;
  $fields =~ s/^.*\) //s;
  my @field = split / /, $fields;
  return ($field[1], $field[19], $field[0]);
}
$SIG{PIPE} = "IGNORE"; $SIG{HUP} = "IGNORE"; $SIG{INT} = "IGNORE";
$| = 1;
unlink $gate;
POSIX::mkfifo($gate, 0600) or do { print "error cannot make the FIFO $gate: $!\n"; exit 1; };
sysopen(my $fifo, $gate, O_RDWR | O_NONBLOCK | O_NOFOLLOW) or do { print "error cannot open $gate: $!\n"; unlink $gate; exit 1; };
print "ready\n";
my $word = "";
eval {
  local $SIG{ALRM} = sub { die "late\n" };
  local $SIG{TERM} = sub { die "ended\n" };
  alarm $max_wait;
  while (defined(my $line = <STDIN>)) { chomp $line; $word = $line; last if $word eq "release"; }
  alarm 0;
};
alarm 0; $SIG{TERM} = "IGNORE"; # from here on it ends by itself, the FIFO gone
if ($word ne "release" && $word ne "restored") {
  # CRIU and every process it made, as killRestoreTree does (src/host/process-tree.ts: the keeper
  # outlives the agent, so it carries the same steps): each the same process still (its start
  # time, field 22 of /proc/PID/stat), not one that reused the pid
  my ($criu_ppid, $start, $state) = $criu_pid > 0 ? stat_of($criu_pid) : ();
  if (defined $start && $start eq $criu_start && $state ne "Z") {
    kill "STOP", $criu_pid;
    # taken only once CRIU is seen stopped: until then it may still clone the root task
    for (1 .. 500) { my (undef, undef, $now) = stat_of($criu_pid); last if !defined $now || $now eq "T" || $now eq "t" || $now eq "Z"; select(undef, undef, undef, 0.002); }
    my (%started, %children);
    opendir(my $proc, "/proc");
    for my $pid (grep { /^\d+$/ } readdir $proc) {
      my ($ppid, $at) = stat_of($pid);
      next unless defined $at;
      $started{$pid} = $at; push @{$children{$ppid}}, $pid;
    }
    closedir $proc;
    my $ours = readlink("/proc/$$/ns/pid");
    my @siblings = $criu_ppid > 1 && defined $ours ? grep { my $ns = readlink("/proc/$_/ns/pid"); $_ != $criu_pid && $started{$_} >= $criu_start && defined $ns && $ns ne $ours } @{$children{$criu_ppid} // []} : ();
    my @pending = (@{$children{$criu_pid} // []}, @siblings);
    my %found;
    while (@pending) { my $pid = pop @pending; next if $found{$pid}++; push @pending, @{$children{$pid} // []}; }
    for my $pid (keys %found) { my (undef, $at) = stat_of($pid); kill "KILL", $pid if defined $at && $at eq $started{$pid}; }
    kill "KILL", $criu_pid;
  }
  open(my $quiet, ">", "/dev/null");
  for my $filter (@cuts) {
    my $pid = fork;
    if (defined $pid && $pid == 0) { open(STDOUT, ">&", $quiet); open(STDERR, ">&", $quiet); exec "ss", "-K", "-t", "-n", $filter; POSIX::_exit(127); }
    waitpid($pid, 0) if defined $pid;
  }
}
my $copy = "$gate.haul-copy";
my $placed = 0;
unlink $copy; # whatever the source's rsync left there: a link is never written through
if (sysopen(my $out, $copy, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0644)) {
  if (open(my $in, "<", $log)) { local $/ = \65536; while (my $chunk = <$in>) { print $out $chunk; } }
  $placed = close($out) && rename($copy, $gate);
  unlink $copy unless $placed;
}
unlink $gate unless $placed; # a FIFO nobody writes to would hold its next reader for good
open(my $in, "<", $log) or exit 0;
my $progress = time;
while (sysread($in, my $chunk, 65536)) {
  my $at = 0;
  while ($at < length $chunk) {
    my $n = syswrite($fifo, $chunk, length($chunk) - $at, $at);
    if (defined $n) { $at += $n; $progress = time; next; }
    exit 0 unless $!{EAGAIN} && time - $progress < 30;
    my $writable = ""; vec($writable, fileno($fifo), 1) = 1;
    select(undef, $writable, undef, 1);
  }
}
exit 0;
`;

/**
 * Holds back incusd's reading of CRIU's restore log until haul lets it go. Incus 6.0.4 reads that
 * log (collectCRIULogFile, then getCRIULogErrors in driver_lxc.go's migrate) after CRIU has ended
 * and before it reports the restore; and its MigrateReceive can report a failed restore as a
 * success when nothing has cancelled the migration by then (the state goroutine closes
 * stateTransferDone before its errgroup cancels the context), after which `incus move` deletes the
 * source. So CRIU writes its log into haul's directory, the name Incus reads is a FIFO, and what
 * reads it waits until haul has had the migration cancelled. The gatekeeper is a process of its
 * own: if the agent dies, it lets go at once, and no incusd waits on a dead agent.
 */
export class RestoreLogGate {
  private released = false;
  private pending = false;

  private constructor(private readonly keeper: ChildProcess) {}

  /**
   * Makes `gatePath` the gate for the log CRIU writes at `logPath`; lets go after `maxWaitMs` in any
   * case. `containment`: what the keeper does itself when it is left without the agent's word (the
   * agent died, or never answered): kill the restore's CRIU, and cut incusd's connections (`ss`
   * filters, connectionFilters) to the source's incusd.
   */
  static async open(gatePath: string, logPath: string, maxWaitMs: number, containment: GateContainment = { cutFilters: [] }): Promise<RestoreLogGate> {
    const criu = containment.criu ? [String(containment.criu.pid), containment.criu.startTime] : ['0', '0'];
    const keeper = spawn(PERL, ['-e', GATEKEEPER, gatePath, logPath, String(Math.ceil(maxWaitMs / 1000)), ...criu, ...containment.cutFilters], { detached: true, stdio: ['pipe', 'pipe', 'ignore'] });
    keeper.stdin!.on('error', () => {});
    const lines = createInterface({ input: keeper.stdout! });
    try {
      const first = await new Promise<string>((resolve, reject) => {
        const late = setTimeout(() => reject(new Error(`the restore log's gatekeeper did not start within ${READY_MS / 1000} s`)), READY_MS);
        lines.once('line', (line) => (clearTimeout(late), resolve(line)));
        keeper.once('error', (error) => (clearTimeout(late), reject(error)));
        keeper.once('exit', (code) => (clearTimeout(late), reject(new Error(`the restore log's gatekeeper ended (${code}) before it was ready`))));
      });
      if (first !== 'ready') throw new Error(`the restore log's gatekeeper: ${first.replace(/^error /, '')}`);
    } catch (error) {
      keeper.kill('SIGKILL');
      unblock(gatePath);
      throw error;
    } finally {
      lines.close();
      keeper.stdout!.destroy();
    }
    // it must outlive a shortage of memory: killed, it would leave readers of the FIFO waiting
    try {
      writeFileSync(`/proc/${keeper.pid}/oom_score_adj`, '-1000');
    } catch {
      // not root: the kernel's default
    }
    // killed all the same (by hand): whoever waits at the gate must not wait for good
    keeper.once('exit', (_code, signal) => signal !== null && unblock(gatePath));
    keeper.unref();
    (keeper.stdin as unknown as { unref(): void }).unref(); // the agent's end of it, open until release
    return new RestoreLogGate(keeper);
  }

  /** The restore succeeded: whatever happens to the agent now, the keeper only lets go. */
  restored(): void {
    if (!this.released) this.keeper.stdin!.write('restored\n');
  }

  /** Lets incusd read the log (idempotent). */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.keeper.stdin!.end('release\n');
  }

  /** Leaves the gate to the keeper without a word: it contains the restore (see open), then lets go. */
  abandon(): void {
    if (this.released) return;
    this.released = true;
    this.keeper.stdin!.end();
  }

  /** Lets incusd read the log once `done` settles; `abandonUnlessPending` then leaves it to that. */
  releaseWhen(done: Promise<unknown>): void {
    this.pending = true;
    void done.finally(() => this.release()).catch(() => {});
  }

  /** After an error on the agent's way: incusd must not wait for good, nor go on uncontained. */
  abandonUnlessPending(): void {
    if (!this.pending) this.abandon();
  }
}

/**
 * Takes away a gate whose keeper is gone: a reader waiting to open it gets an empty log (opening the
 * write end lets it through, closing it ends its read), and the name goes, so no later open waits.
 */
function unblock(gatePath: string): void {
  try {
    if (!lstatSync(gatePath).isFIFO()) return;
  } catch {
    return;
  }
  let writer: number | undefined;
  try {
    writer = openSync(gatePath, constants.O_WRONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
  } catch {
    // ENXIO: nobody is waiting to read
  }
  try {
    unlinkSync(gatePath);
  } catch {
    // gone already
  }
  if (writer !== undefined) closeSync(writer);
}
