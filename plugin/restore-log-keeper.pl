#!/usr/bin/perl
# haul's restore-log gatekeeper; plugin/restore-log-gate.ts starts it and says what it does.
use strict;
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
