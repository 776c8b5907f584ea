#!/usr/bin/perl
# haul-criu-hook: what haul's CRIU hook becomes for a dump or a restore; plugin/criu-hook.ts installs it
# and says what it does. Arguments: the real CRIU, the agent's socket, the migration id file's name,
# the seconds to wait for the agent's answer to a dump and to a restore, then CRIU's own.
use strict;
use Socket;
use Fcntl;
my ($criu, $path, $id_file, $dump_answer_s, $restore_answer_s, @args) = @ARGV;
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
  return defined $dir && -f "$dir/$id_file";
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
# /proc/PID/stat from its state on (the command name before it may hold spaces): [0] state,
# [1] parent, [19] start time
# (the whole file, cut after the last ')': a command name may hold ') ' and newlines, and the
# container names its own init)
sub stat_of {
  my $pid = shift;
  open(my $f, "<", "/proc/$pid/stat") or return;
  my $text = do { local $/; <$f> };
  close $f;
  return unless defined $text;
  my $end = rindex($text, ") ");
  return if $end < 0;
  return split / /, substr($text, $end + 2);
}
# liblxc's monitor of the container whose init is $_[0] (the init's parent, named "[lxc monitor]"
# by liblxc's setproctitle): its pid and start time, or nothing
sub monitor_of {
  my $init = shift;
  return unless defined $init && $init =~ /^\d+$/;
  my @init = stat_of($init) or return;
  my $parent = $init[1];
  open(my $f, "<", "/proc/$parent/cmdline") or return;
  my $cmdline = do { local $/; <$f> };
  close $f;
  return unless defined $cmdline && index($cmdline, "[lxc monitor]") == 0;
  my @monitor = stat_of($parent) or return;
  return ($parent, $monitor[19]);
}
# The final dump of a live move (liblxc passes an action script only then) kills the container,
# and Incus deletes the source instance as soon as the move's operation ends; liblxc 7's monitor
# of the killed container is still going away then, so the delete finds the instance running and
# `incus move` fails after the container had moved (docs/INCUS-7-PROBE.md). So this process waits:
# a child asks the agent and becomes CRIU, as for every other call (the agent knows CRIU by that
# child's pid), and this one ends with CRIU's status once CRIU has ended and the monitor has gone,
# at most MONITOR_WAIT_S later. Never for a restore: liblxc finds the restored init among its own
# children there.
my $MONITOR_WAIT_S = 10;
if ($args[0] eq "dump" && grep { $_ eq "--action-script" } @args) {
  my $init; for my $i (0 .. $#args - 1) { $init = $args[$i + 1] if $args[$i] eq "-t"; }
  my ($monitor, $monitor_start) = monitor_of($init);
  $SIG{CHLD} = "DEFAULT"; # an ignored SIGCHLD inherited from the caller would lose CRIU's status
  my $child = defined $monitor ? fork() : undef;
  if ($child) {
    $SIG{$_} = sub { kill $_[0], $child } for qw(TERM INT HUP QUIT);
    my $waited;
    do { $waited = waitpid($child, 0) } while ($waited == -1 && $!{EINTR});
    my $status = $?;
    $SIG{$_} = "DEFAULT" for qw(TERM INT HUP QUIT); # CRIU's pid is free for another process now
    if ($status == 0) {
      # counted in steps, not by the clock, which may be set back meanwhile
      for (1 .. $MONITOR_WAIT_S * 20) {
        my @now = stat_of($monitor);
        last unless @now && $now[19] eq $monitor_start && $now[0] ne "Z";
        select(undef, undef, undef, 0.05);
      }
    }
    exit($status & 127 ? 128 + ($status & 127) : $status >> 8);
  }
}
native(undef, "no haul agent listens at $path") unless -S $path;
$SIG{PIPE} = "IGNORE"; # an agent gone mid-request: a failed write, said on stderr, not a silent death
socket(my $s, PF_UNIX, SOCK_STREAM, 0) or native("no socket: $!");
connect($s, pack_sockaddr_un($path)) or native("the haul agent at $path does not answer: $!");
$SIG{ALRM} = sub { native("the haul agent at $path did not answer in time") };
my $within = $args[0] eq "dump" ? $dump_answer_s : $restore_answer_s;
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
