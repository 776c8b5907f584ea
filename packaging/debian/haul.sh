#!/bin/sh
# haul, with the Node runtime it was built and tested with (the package's own, not the host's),
# and haul's Node flags (cli/node-flags)
exec /usr/lib/haul/node @NODE_FLAGS@/usr/lib/haul/app/dist/cli/haul.js "$@"
