#!/usr/bin/perl
# haul's wait for its answer to a held CRIU action (src/criu/run/action-script.ts). Argument: the
# answers FIFO. Exits 0 on "ok", 1 on anything else, and 1 at once when haul is not there to
# answer: the FIFO is opened without waiting for a writer, and reads its end when haul, its only
# writer, is gone (or removed it, or never held it).
use strict;
use Fcntl;
sysopen(my $fifo, $ARGV[0], O_RDONLY | O_NONBLOCK) or exit 1;
my $said = '';
for (;;) {
  # read first: with no writer left it says so (0); poll would not (Linux reports a FIFO's hangup
  # only for writers that came after the reader opened it), so it only waits, briefly, for data
  my $n = sysread($fifo, my $chunk, 64);
  if (!defined $n) {
    exit 1 unless $!{EAGAIN} || $!{EINTR};
    my $readable = '';
    vec($readable, fileno($fifo), 1) = 1;
    select($readable, undef, undef, 0.05);
    next;
  }
  exit 1 if $n == 0;
  $said .= $chunk;
  exit($1 eq 'ok' ? 0 : 1) if $said =~ /^([^\n]*)\n/;
  exit 1 if length $said > 64;
}
