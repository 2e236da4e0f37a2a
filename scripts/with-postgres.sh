#!/usr/bin/env bash
# Renamed: scripts/with-services.sh starts PostgreSQL and Redis. Kept so older commands keep working.
exec bash "$(dirname "$0")/with-services.sh" "$@"
