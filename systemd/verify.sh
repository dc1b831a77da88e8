#!/usr/bin/env bash
# Checks systemd/ifsocks.service with systemd-analyze verify, and its
# exposure with systemd-analyze security (at most 2.0). The unit's
# ExecStart binary need not be installed: a copy of the unit points at a
# dummy executable.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
printf '#!/bin/sh\nexit 0\n' >"$tmp/ifsocks"
chmod +x "$tmp/ifsocks"
# verify also runs man for Documentation=man:ifsocks(8), which only the
# package installs: the copy leaves it out.
sed -e "s#^ExecStart=/usr/sbin/ifsocks#ExecStart=$tmp/ifsocks#" -e "s#man:ifsocks(8) ##" \
	"$here/ifsocks.service" >"$tmp/ifsocks.service"
out="$(systemd-analyze verify "$tmp/ifsocks.service" 2>&1)" || { echo "$out" >&2; exit 1; }
# verify exits 0 on some warnings; treat any output about our unit as failure.
if grep -q "ifsocks.service" <<<"$out"; then
	echo "$out" >&2
	exit 1
fi
# Exposure as systemd-analyze security rates it (0 best, 10 worst), offline
# (no running systemd needed); --threshold is in tenths of that scale.
max_exposure=20
sec="$(systemd-analyze security --offline=true --threshold="$max_exposure" "$tmp/ifsocks.service" 2>&1)" || {
	echo "$sec" >&2
	echo "systemd unit: exposure over $((max_exposure / 10)).$((max_exposure % 10))" >&2
	exit 1
}
echo "systemd unit OK ($(tail -n 1 <<<"$sec" | grep -o 'level for [^ ]*: [0-9.]*' | sed 's/.*: /exposure /'))"
