#!/usr/bin/env bash
# Prints `--add-host NAME:IP` for every package registry a build may need, for hosts where
# containers cannot resolve names themselves (dockerd --dns 127.0.0.1, see docs/deployment.md).
# The names are read at run time from apt's sources, pip's configuration and pip's default index,
# so no registry host name is written into this repository. Extra names: VAE_BUILD_HOSTS="a b".
# A name that resolves to a private-range address is skipped: builds must not reach those.
set -euo pipefail

python_bin=${PYTHON:-python3}

apt_hosts() {
  # One-line sources (deb URL suite ...) and deb822 sources (URIs: URL ...).
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1 ~ /^deb(-src)?$/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; break } }' || true
  cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' || true
}

pip_hosts() {
  # Configured indexes (files and environment), then pip's own default index and file host.
  "$python_bin" -m pip config list 2>/dev/null | sed -n "s/.*index-url='\(.*\)'/\1/p" | tr ' ' '\n' || true
  printf '%s\n' ${PIP_INDEX_URL:-} ${PIP_EXTRA_INDEX_URL:-}
  "$python_bin" - <<'PY' 2>/dev/null || true
from pip._internal.models.index import PyPI
print(PyPI.url)
print("https://" + PyPI.file_storage_domain + "/")
PY
}

is_private() {
  case "$1" in
    10.*|192.168.*|127.*) return 0 ;;
    172.1[6-9].*|172.2[0-9].*|172.3[01].*) return 0 ;;
  esac
  return 1
}

names=$(
  { apt_hosts; pip_hosts; printf '%s\n' ${VAE_BUILD_HOSTS:-}; } \
    | sed -n 's#^[a-zA-Z][a-zA-Z0-9+.-]*://\([^/:@]*@\)\{0,1\}\([^/:]*\).*#\2#p; /^[A-Za-z0-9.-]*$/p' \
    | grep -v '^$' | sort -u || true
)
for name in $names; do
  ip=$(getent ahostsv4 "$name" | awk 'NR == 1 { print $1 }') || true
  if [ -z "$ip" ]; then
    echo "registry-hosts: $name does not resolve; skipped" >&2
  elif is_private "$ip"; then
    echo "registry-hosts: $name resolves to private address $ip; skipped" >&2
  else
    echo "--add-host $name:$ip"
  fi
done
