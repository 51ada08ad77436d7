#!/bin/sh
# A read-only database role for optuna-dashboard: its UI can delete studies and has no
# login, so it connects as a role that can only SELECT. Run once by the postgres image
# (/docker-entrypoint-initdb.d/) with POSTGRES_USER, POSTGRES_DB and DASHBOARD_PASSWORD set;
# tests/test_docker.py runs it against a real server. Tables the owner creates later
# (the first `create`) are readable by the role through the default privileges.
set -eu
: "${DASHBOARD_PASSWORD:?set DASHBOARD_PASSWORD}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v reader_password="$DASHBOARD_PASSWORD" -v owner="$POSTGRES_USER" <<'SQL'
CREATE ROLE fmnist_reader LOGIN PASSWORD :'reader_password';
GRANT CONNECT ON DATABASE :"DBNAME" TO fmnist_reader;
GRANT USAGE ON SCHEMA public TO fmnist_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO fmnist_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO fmnist_reader;
SQL
