#!/usr/bin/env bash
# Starts a Docker daemon on a machine without systemd, without a bridge and without NAT, so that
# containers use the host network only and never reach a private-range address. It resolves no
# names (--dns 127.0.0.1): builds get registry hosts through --add-host (registry-hosts.sh).
#
#   scripts/docker/start-dockerd.sh [STATE_DIR [DATA_ROOT]]
#
# With STATE_DIR, the daemon keeps everything there (data-root, exec-root, pidfile, socket), so it
# clashes with no other daemon; DATA_ROOT puts its images and layer cache elsewhere (a folder kept
# between runs, so that an unchanged layer is not built again). Prints
# `DOCKER_HOST=... DOCKERD_PID=...` once `docker info` answers.
# Stop it with: kill "$DOCKERD_PID".
set -euo pipefail

args=(--bridge=none --iptables=false --ip-masq=false --ip6tables=false --dns 127.0.0.1)
if [ $# -ge 1 ]; then
  state=$(mkdir -p "$1" && cd "$1" && pwd)
  host=unix://$state/docker.sock
  data=${2:-$state/data}
  args+=(--data-root "$data" --exec-root "$state/exec" --pidfile "$state/dockerd.pid"
         --host "$host")
  log=$state/dockerd.log
else
  host=unix:///var/run/docker.sock
  log=/var/log/dockerd.log
fi

if DOCKER_HOST=$host docker info >/dev/null 2>&1; then
  echo "start-dockerd: a daemon already answers on $host" >&2
  echo "DOCKER_HOST=$host"
  exit 0
fi

nohup dockerd "${args[@]}" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 60); do
  if DOCKER_HOST=$host docker info >/dev/null 2>&1; then
    echo "DOCKER_HOST=$host DOCKERD_PID=$pid"
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
echo "start-dockerd: the daemon did not come up; last lines of $log:" >&2
tail -n 20 "$log" >&2
kill "$pid" 2>/dev/null || true
exit 1
