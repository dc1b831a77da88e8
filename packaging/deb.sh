#!/usr/bin/env bash
# Builds the Debian packages of ifsocks: dist/ifsocks_VERSION_ARCH.deb for
# amd64 and arm64 (ARCHES="amd64" for one). VERSION is the latest git tag
# (a leading "v" dropped), or 0.0.0+COMMIT when there is none. Needs only
# Go: nfpm is a Go tool pinned in go.mod (go tool nfpm), and the manual
# page and the installed configuration are generated from README.md and
# config.toml.example by packaging/gen, so neither can drift.
# packaging/deb.sh --version prints the version and builds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

if tag=$(git describe --tags --abbrev=0 2>/dev/null); then
	version=${tag#v}
	# v1.2.0-rc1 -> 1.2.0~rc1, which Debian sorts before 1.2.0.
	version=${version//-/\~}
else
	version="0.0.0+$(git rev-parse --short=12 HEAD)"
fi
# A native Debian version: no hyphen (that would name a Debian revision).
if ! [[ $version =~ ^[0-9][A-Za-z0-9.+~]*$ ]]; then
	echo "deb.sh: version \"$version\" (from git) is not a Debian native version: it must start with a digit and use only letters, digits, . + ~" >&2
	exit 1
fi
if [ "${1:-}" = "--version" ]; then
	echo "$version"
	exit 0
fi
export VERSION=$version
export MAINTAINER=${DEB_MAINTAINER:-"ifsocks maintainers <ifsocks@users.noreply.github.com>"}

build=build/deb
rm -rf "$build"
mkdir -p "$build/common" dist
go run ./packaging/gen config config.toml.example >"$build/common/config.toml"
go run ./packaging/gen man README.md main.go "$version" | gzip -9n >"$build/common/ifsocks.8.gz"
# The changelog of a native package, dated by the commit so that two
# builds of one commit are alike.
when=$(git log -1 --format=%cD)
printf 'ifsocks (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- %s  %s\n' \
	"$version" "$(git rev-parse HEAD)" "$MAINTAINER" "$when" | gzip -9n >"$build/common/changelog.gz"

for arch in ${ARCHES:-amd64 arm64}; do
	export ARCH=$arch BUILD=$build/$arch
	mkdir -p "$BUILD"
	cp "$build"/common/* "$BUILD/"
	# Static (no cgo), position-independent, without symbols or DWARF.
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -buildmode=pie \
		-ldflags "-s -w -X main.version=$version" -o "$BUILD/ifsocks" .
	out="dist/ifsocks_${version}_${arch}.deb"
	rm -f "$out"
	go tool nfpm package --config packaging/nfpm.yaml --packager deb --target "$out"
done
