#!/usr/bin/env bash
# Best effort: the Debian packages that the browser, Docker, Fashion-MNIST, Kubernetes manifest
# and monitoring tests use. Tests that need one skip with a clear message where it cannot be installed, so a
# failure here is not fatal.
set -u
want=()
command -v chromium >/dev/null 2>&1 || want+=(chromium)
command -v dockerd >/dev/null 2>&1 || want+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || want+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || want+=(debootstrap)
[ -d /usr/share/datasets/fashion-mnist ] || want+=(dataset-fashion-mnist)
command -v kubectl >/dev/null 2>&1 || want+=(kubernetes-client)  # kubectl kustomize
command -v promtool >/dev/null 2>&1 || want+=(prometheus)  # prometheus and promtool
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: not root or no apt-get; tests needing ${want[*]} will skip" >&2
  exit 0
fi
echo "system-deps: installing ${want[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
(apt-get update -qq && apt-get install -y -qq --no-install-recommends "${want[@]}") >/tmp/system-deps.log 2>&1 \
  || echo "system-deps: apt-get failed (see /tmp/system-deps.log); dependent tests will skip" >&2
exit 0
