#!/usr/bin/env bash
# The package test (run by .ci/run, as root, on a machine without ifsocks
# installed): build the .debs with packaging/deb.sh, check them with
# lintian, install this machine's with dpkg -i, run the installed
# /usr/sbin/ifsocks -version and -check, start the installed binary as the
# ifsocks user with the installed configuration in a network namespace
# and make one flow through it with curl to an upstream in a second
# namespace, then purge the package and check that nothing of it is left.
# Needs: dpkg, lintian, iproute2, curl, python3, util-linux (setpriv).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "package test: $*"; }
fail() { echo "package test: FAIL: $*" >&2; exit 1; }

if dpkg-query -W -f='${Status}' ifsocks 2>/dev/null | grep -q "installed"; then
	fail "ifsocks is already installed here; the test installs and purges it"
fi

packaging/deb.sh
version=$(packaging/deb.sh --version)
arch=$(dpkg --print-architecture)
deb=dist/ifsocks_${version}_${arch}.deb
[ -f "$deb" ] || fail "packaging/deb.sh did not write $deb"
for d in dist/ifsocks_"$version"_*.deb; do
	say "lintian $d"
	lintian --fail-on error,warning "$d"
done

px="h17px$$" up="h17up$$" tmp=$(mktemp -d)
daemon="" upstream=""
cleanup() {
	[ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
	[ -n "$upstream" ] && kill "$upstream" 2>/dev/null && wait "$upstream" 2>/dev/null || true
	ip netns del "$px" 2>/dev/null || true
	ip netns del "$up" 2>/dev/null || true
	if dpkg-query -W -f='${Status}' ifsocks 2>/dev/null | grep -q "installed"; then
		dpkg --purge ifsocks >/dev/null 2>&1 || echo "cleanup: dpkg --purge ifsocks failed" >&2
	fi
	rm -rf "$tmp"
	return 0
}
trap cleanup EXIT

say "dpkg -i $deb"
dpkg -i "$deb"
dpkg-query -L ifsocks | sort >"$tmp/files"

# What the package installed, and how.
out=$(/usr/sbin/ifsocks -version)
# The first words are the package version; build details follow.
case "$out" in
"ifsocks $version" | "ifsocks $version "*) ;;
*) fail "-version says \"$out\", want \"ifsocks $version ...\"" ;;
esac
/usr/sbin/ifsocks -config /etc/ifsocks/config.toml -check
getent passwd ifsocks >/dev/null || fail "no ifsocks user"
perm=$(stat -c '%U:%G %a' /etc/ifsocks/config.toml)
[ "$perm" = "root:ifsocks 640" ] || fail "/etc/ifsocks/config.toml is $perm, want root:ifsocks 640"
dpkg-query -W -f='${Conffiles}\n' ifsocks | grep -q " /etc/ifsocks/config.toml " ||
	fail "/etc/ifsocks/config.toml is not a conffile"
cmp systemd/ifsocks.service /lib/systemd/system/ifsocks.service ||
	fail "the installed unit differs from systemd/ifsocks.service"
[ -f /usr/share/man/man8/ifsocks.8.gz ] && [ -f /usr/lib/sysusers.d/ifsocks.conf ] ||
	fail "man page or sysusers.d file missing"

# Installing again (as an upgrade does) keeps a changed configuration and
# its group and mode; a configuration that -check rejects is reported and
# the installation still succeeds.
cp /etc/ifsocks/config.toml "$tmp/config.good"
printf '# changed by the package test\nbogus_key = 1\n' >>/etc/ifsocks/config.toml
dpkg -i --force-confold "$deb" >"$tmp/reinstall.log" 2>&1 || { cat "$tmp/reinstall.log" >&2; fail "reinstall with a bad configuration failed"; }
grep -q "bogus_key" "$tmp/reinstall.log" && grep -q "the check above found problems" "$tmp/reinstall.log" ||
	{ cat "$tmp/reinstall.log" >&2; fail "postinst did not report the bad configuration"; }
grep -q "^# changed by the package test" /etc/ifsocks/config.toml || fail "reinstall replaced the changed configuration"
perm=$(stat -c '%U:%G %a' /etc/ifsocks/config.toml)
[ "$perm" = "root:ifsocks 640" ] || fail "after reinstall /etc/ifsocks/config.toml is $perm"
cat "$tmp/config.good" >/etc/ifsocks/config.toml

# The proxy's namespace has loopback (where the installed configuration
# listens) and a veth to the upstream's namespace.
ip netns add "$px"
ip netns add "$up"
ip link add h17a$$ netns "$px" type veth peer name h17b$$ netns "$up"
ip -n "$px" addr add 10.217.0.1/24 dev h17a$$
ip -n "$up" addr add 10.217.0.2/24 dev h17b$$
for ns in "$px" "$up"; do
	ip -n "$ns" link set lo up
done
ip -n "$px" link set h17a$$ up
ip -n "$up" link set h17b$$ up

mkdir "$tmp/www"
head -c 100000 /dev/urandom | base64 >"$tmp/www/payload"
ip netns exec "$up" python3 -m http.server --bind 10.217.0.2 --directory "$tmp/www" 8080 \
	>"$tmp/upstream.log" 2>&1 &
upstream=$!

# The installed binary with the installed configuration, as the user the
# unit runs it as (so the group's read access to the file is tested too).
ip netns exec "$px" setpriv --reuid=ifsocks --regid=ifsocks --init-groups \
	/usr/sbin/ifsocks -config /etc/ifsocks/config.toml >"$tmp/daemon.log" 2>&1 &
daemon=$!

ready=""
for _ in $(seq 100); do
	if ip netns exec "$px" bash -c 'exec 3<>/dev/tcp/127.0.0.1/1080' 2>/dev/null &&
		ip netns exec "$up" bash -c 'exec 3<>/dev/tcp/10.217.0.2/8080' 2>/dev/null; then
		ready=1
		break
	fi
	kill -0 "$daemon" 2>/dev/null || { cat "$tmp/daemon.log" >&2; fail "the daemon exited"; }
	sleep 0.1
done
[ -n "$ready" ] || { cat "$tmp/daemon.log" >&2; fail "daemon or upstream not listening after 10 s"; }

say "one flow: curl through 127.0.0.1:1080 to 10.217.0.2:8080"
ip netns exec "$px" curl -sS --max-time 20 --socks5-hostname 127.0.0.1:1080 \
	-o "$tmp/got" http://10.217.0.2:8080/payload
cmp "$tmp/got" "$tmp/www/payload" || fail "the payload came back changed"

# A loopback target is refused by default, and the log line says which
# setting to change.
if ip netns exec "$px" curl -sS --max-time 20 --socks5-hostname 127.0.0.1:1080 \
	-o /dev/null http://127.0.0.1:1080/ 2>/dev/null; then
	fail "a loopback target was not refused"
fi

kill "$daemon"
wait "$daemon" || true
daemon=""
cat "$tmp/daemon.log"
grep '"msg":"flow"' "$tmp/daemon.log" | grep '"target":"10.217.0.2:8080"' | grep -q '"outcome":"ok"' ||
	fail "no flow line with outcome ok for 10.217.0.2:8080"
grep '"msg":"flow"' "$tmp/daemon.log" | grep '"outcome":"denied"' | grep '"level":"info"' | grep -q 'server.deny' ||
	fail "the refusal of 127.0.0.1 was not logged at info naming server.deny"

# As systemd's StateDirectory= would have made it on a start.
install -d -o ifsocks -g ifsocks -m 0750 /var/lib/ifsocks
touch /var/lib/ifsocks/state

say "dpkg --purge ifsocks"
dpkg --purge ifsocks
dpkg-query -W -f='${Status}' ifsocks 2>/dev/null | grep -q "installed" && fail "still installed after purge"
left=()
while read -r f; do
	# Directories the package shares with others (/usr/sbin, ...) stay.
	if [ -e "$f" ] && ! { [ -d "$f" ] && [ -n "$(ls -A "$f")" ]; }; then
		left+=("$f")
	fi
done <"$tmp/files"
for f in /etc/ifsocks /var/lib/ifsocks /usr/share/doc/ifsocks \
	/etc/systemd/system/multi-user.target.wants/ifsocks.service \
	/etc/systemd/system/ifsocks.service \
	/var/lib/systemd/deb-systemd-helper-enabled/ifsocks.service.dsh-also \
	/var/lib/systemd/deb-systemd-helper-masked/ifsocks.service; do
	[ -e "$f" ] || [ -L "$f" ] && left+=("$f")
done
[ ${#left[@]} -eq 0 ] || fail "left after purge: ${left[*]}"
# The ifsocks system user stays, as Debian leaves system users (postrm).
say "PASS (version $version; the ifsocks system user stays by design)"
