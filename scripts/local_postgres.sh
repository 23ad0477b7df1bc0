#!/usr/bin/env bash
# A throwaway PostgreSQL on loopback, for trying and testing a search across machines (tests marked `postgres`).
#
#   sudo scripts/local_postgres.sh up       # install Debian's postgresql if missing, initdb, start on 127.0.0.1
#   export MNIST_ARCH_TEST_POSTGRES=postgresql://mnist@127.0.0.1:55432/mnist_arch   # (printed by `up`)
#   export PGPASSWORD=...                   # (printed by `up`): the password, off the command line
#   sudo scripts/local_postgres.sh down     # stop it and remove its folder
#   sudo scripts/local_postgres.sh stop|start|restart   # the same server, its data kept (the tests' faults)
#   scripts/local_postgres.sh status        # exits 1 when it is not up
#
# Everything lives in $LOCAL_POSTGRES_DIR (default /tmp/mnist_arch_postgres): the cluster, its log, its socket.
# As root, the server runs as the `postgres` system user (initdb refuses root); it listens on 127.0.0.1 only,
# port $LOCAL_POSTGRES_PORT (55432), with one role (`mnist`, a password) and one database (`mnist_arch`).
set -euo pipefail
DIR=${LOCAL_POSTGRES_DIR:-/tmp/mnist_arch_postgres}
PORT=${LOCAL_POSTGRES_PORT:-55432}
PASSWORD=${LOCAL_POSTGRES_PASSWORD:-mnist-arch-test}
URL="postgresql://mnist@127.0.0.1:$PORT/mnist_arch"

bin_dir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

as_server() {  # run a server command as the user that owns the cluster
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_if_missing() {
  [ -n "$(bin_dir)" ] && return
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || {
    echo "error: PostgreSQL is not installed (Debian: apt-get install postgresql, as root)" >&2; exit 2; }
  echo "installing postgresql (apt-get) ..." >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null
}

up() {
  install_if_missing
  local bin; bin=$(bin_dir)
  if status >/dev/null 2>&1; then echo "already up" >&2; print_env; return; fi
  rm -rf "$DIR"; mkdir -p "$DIR"; chmod 700 "$DIR"
  echo "$PASSWORD" > "$DIR/password"; chmod 600 "$DIR/password"
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$DIR"; fi
  as_server "$bin/initdb" -D "$DIR/data" -A scram-sha-256 -U postgres --pwfile="$DIR/password" >"$DIR/initdb.log"
  as_server "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c max_connections=200" start >/dev/null
  PGPASSWORD=$PASSWORD "$bin/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE mnist LOGIN PASSWORD '$PASSWORD'" -c "CREATE DATABASE mnist_arch OWNER mnist" >/dev/null
  print_env
}

print_env() {
  echo "export MNIST_ARCH_TEST_POSTGRES=$URL"
  echo "export PGPASSWORD=$PASSWORD"
}

down() {
  local bin; bin=$(bin_dir)
  [ -n "$bin" ] && [ -d "$DIR/data" ] && as_server "$bin/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}

server_ctl() {  # stop | start | restart, keeping the data
  local bin; bin=$(bin_dir)
  as_server "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 -m fast \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c max_connections=200" "$1" >/dev/null
}

status() {
  local bin; bin=$(bin_dir)
  [ -n "$bin" ] && "$bin/pg_isready" -h 127.0.0.1 -p "$PORT" -q
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  stop|start|restart) server_ctl "$1" ;;
  status) status && echo "up: $URL" || { echo "down"; exit 1; } ;;
  *) echo "usage: $0 up|down|stop|start|restart|status" >&2; exit 2 ;;
esac
