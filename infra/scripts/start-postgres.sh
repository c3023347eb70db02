#!/usr/bin/env bash
# Starts Debian's PostgreSQL cluster (it listens on localhost only) and makes sure the role
# given by MODELYARD_TEST_PG_USER / _PASSWORD (default modelyard/modelyard) exists.
set -euo pipefail
user="${MODELYARD_TEST_PG_USER:-modelyard}"
password="${MODELYARD_TEST_PG_PASSWORD:-modelyard}"
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | grep -q .; then
  pg_createcluster "$version" main >/dev/null
fi
cluster=$(pg_lsclusters -h | head -n 1)
ver=$(echo "$cluster" | awk '{print $1}'); name=$(echo "$cluster" | awk '{print $2}')
if ! echo "$cluster" | grep -q online; then
  pg_ctlcluster "$ver" "$name" start
fi
for _ in $(seq 30); do
  runuser -u postgres -- pg_isready -q -h 127.0.0.1 && break
  sleep 1
done
as_pg() { runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtA -h 127.0.0.1 "$@" 2>/dev/null || runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(as_pg -c "SELECT 1 FROM pg_roles WHERE rolname='${user}'")" != "1" ]; then
  as_pg -c "CREATE ROLE ${user} LOGIN PASSWORD '${password}' CREATEDB"
fi
port=$(echo "$cluster" | awk '{print $3}')
echo "postgresql://${user}:${password}@127.0.0.1:${port}/modelyard"
