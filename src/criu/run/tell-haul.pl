#!/usr/bin/perl
# haul's action script telling haul one line (src/criu/run/action-script.ts). Arguments: the events
# FIFO, the line. Not sh's `1<>`: that creates a plain file where haul has removed the FIFO (a
# detached step may end after haul has gone), which then stands in a directory haul removes. This
# opens the FIFO as it is, for writing, without waiting: when it is gone, or haul no longer holds it,
# nothing is written and nothing is made. One write of under PIPE_BUF bytes: never interleaved, and
# whole or not at all; a full FIFO (haul behind in reading) is tried again for up to 5 s.
use strict;
use Fcntl;
my ($path, $line) = @ARGV;
exit 1 unless defined $line && length($line) < 512;
sysopen(my $fifo, $path, O_WRONLY | O_NONBLOCK) or exit 1;
exit 1 unless -p $fifo;
for (my $tries = 0; $tries < 250; $tries++) {
  my $written = syswrite($fifo, "$line\n");
  exit 0 if defined $written && $written == length($line) + 1;
  exit 1 if defined $written || !($!{EAGAIN} || $!{EINTR});
  select(undef, undef, undef, 0.02);
}
exit 1;
