#!/usr/bin/perl
# Holds an exclusive lock on a file for haul (src/link/trust-store.ts). Arguments: the lock file, the
# seconds to wait for it. Prints "locked" once it holds the lock, then holds it until its stdin ends:
# haul closing it, or haul's process gone. A kernel lock (flock): it dies with its holder, so no
# lock is ever left behind, and no holder's lock is ever taken from it.
use strict;
use Fcntl qw(:DEFAULT :flock);
my ($path, $wait) = @ARGV;
# never through a link: the lock lives in haul's own state directory
sysopen(my $lock, $path, O_WRONLY | O_CREAT | O_NOFOLLOW, 0600) or do { print STDERR "cannot open $path: $!\n"; exit 2 };
my $deadline = time + ($wait // 10);
until (flock($lock, LOCK_EX | LOCK_NB)) {
  if (time >= $deadline) { print STDERR "$path stayed locked for $wait s\n"; exit 3 }
  select(undef, undef, undef, 0.02);
}
$| = 1;
print "locked\n";
my $ignored = <STDIN>;
exit 0;
