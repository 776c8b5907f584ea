#!/bin/sh
# haul, with the Node runtime it was built and tested with (the package's own, not the host's)
exec /usr/lib/haul/node /usr/lib/haul/app/dist/cli/haul.js "$@"
