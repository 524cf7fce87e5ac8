#!/bin/sh
# The engine service: own the shared socket folder and the data volume, then run the server as `postgres`
# (the socket is mode 0660, so the PostgreSQL backends of the other container, also uid postgres, connect).
set -eu
mkdir -p /run/drift /var/lib/drift
chown postgres:postgres /run/drift /var/lib/drift
exec gosu postgres drift-engine serve --data /var/lib/drift/data --listen unix:/run/drift/drift.sock "$@"
