#!/usr/bin/env bash
# Builds a stand-in for `python:3.11-slim` where no image registry can be reached: a Debian
# bookworm minbase root file system made with debootstrap, with python3, python3-venv and the
# host's CA certificates (registries are reached through an intercepting proxy), imported with
# `docker import`. The root file system tarball is cached, so later runs only import it. Without
# TAG the image is tagged with the tarball's key, and kept where the engine has it already: a new
# import would be a new base, and every layer built on the old one would be built again.
#
#   scripts/docker/build-base-image.sh [TAG]      (default TAG: mnist-vae-base:bookworm-<key>)
#
# Environment: VAE_CACHE_DIR (default ~/.cache/mnist-vae). Needs root, debootstrap and docker.
set -euo pipefail

suite=bookworm
cache_dir=${VAE_CACHE_DIR:-$HOME/.cache/mnist-vae}
packages=python3,python3-venv,ca-certificates

# The mirror comes from the host's apt sources (never written into this repository).
mirror=$(
  { cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | awk 'tolower($1) == "uris:" { print $2 }' || true
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; break } }' || true
  } | grep -E '/debian/?$' | head -n 1 || true
)
[ -n "$mirror" ] || { echo "build-base-image: no Debian mirror in the host's apt sources" >&2; exit 1; }

# The cache key covers what goes into the tarball: suite, packages and the CA certificates.
key=$( { echo "$suite $packages v1"; cat /usr/local/share/ca-certificates/* 2>/dev/null; } \
  | sha256sum | cut -c1-16)
tarball=$cache_dir/rootfs-$suite-$key.tar
tag=${1:-mnist-vae-base:$suite-$key}
if [ $# -eq 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi

if [ ! -s "$tarball" ]; then
  mkdir -p "$cache_dir"
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/vae-rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  start=$SECONDS
  debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
    >"$cache_dir/debootstrap.log" 2>&1 \
    || { tail -n 20 "$cache_dir/debootstrap.log" >&2; exit 1; }
  cp -a /etc/apt/sources.list.d/. "$rootfs/etc/apt/sources.list.d/"
  [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$rootfs/etc/apt/"
  cp -a /etc/apt/apt.conf.d/. "$rootfs/etc/apt/apt.conf.d/"
  if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
    cp -a /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
  fi
  : >"$rootfs/etc/resolv.conf"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -cf "$tarball.$$.tmp" .
  mv "$tarball.$$.tmp" "$tarball"   # atomic: a concurrent run sees no half-written tarball
  echo "build-base-image: debootstrap + tarball took $((SECONDS - start)) s" >&2
fi

docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$tarball" "$tag" >/dev/null
echo "$tag"
