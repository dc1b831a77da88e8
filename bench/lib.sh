# shellcheck shell=bash
# shellcheck disable=SC2154 # the globals are run.sh's
# Helpers of run.sh, sourced by it: logging, the namespace topology, the
# processes it starts, the proxies' configuration and one measurement.
# They use run.sh's globals (C P U, work, results, pids, the addresses).
log() { printf '[run.sh %s] %s\n' "$(date +%T)" "$*" >&2; }

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() {
	local pid=$1
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

topo_down() {
	local ns pid
	for pid in "${pids[@]}"; do stop_pid "$pid"; done
	pids=()
	for ns in "$C" "$P" "$U"; do
		[ -e "/run/netns/$ns" ] || continue
		# Only processes this script started live in its namespaces.
		for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
		ip netns del "$ns" 2>/dev/null || true
	done
	rm -rf "/etc/netns/$P"
}

sys() { ip netns exec "$1" sysctl -q -w "${@:2}" >/dev/null; }

# topo_up SUBJECT: the three namespaces. For "kernel" P forwards between
# C and U itself; otherwise P does not route and only the proxy connects
# C and U. Either way the upstream traffic leaves by wan2, which is not
# P's preferred default route (wan1 has the lower metric).
topo_up() {
	local ns
	for ns in "$C" "$P" "$U"; do
		ip netns add "$ns"
		ip -n "$ns" link set lo up
	done
	ip -n "$C" link add c0 type veth peer name cl0 netns "$P"
	ip -n "$P" link add wan1 type veth peer name up1 netns "$U"
	ip -n "$P" link add wan2 type veth peer name up2 netns "$U"
	ip -n "$C" addr add "$CLIENT/24" dev c0
	ip -n "$P" addr add "$LISTEN/24" dev cl0
	ip -n "$P" addr add 10.233.1.1/24 dev wan1
	ip -n "$P" addr add "$WAN2/24" dev wan2
	ip -n "$U" addr add 10.233.1.2/24 dev up1
	ip -n "$U" addr add "$UP2/24" dev up2
	ip -n "$U" addr add "$SVC/32" dev lo
	ip -n "$C" link set c0 up
	for dev in cl0 wan1 wan2; do ip -n "$P" link set "$dev" up; done
	for dev in up1 up2; do ip -n "$U" link set "$dev" up; done
	ip -n "$C" route add default via "$LISTEN"
	ip -n "$P" route add default via 10.233.1.2 dev wan1 metric 100
	ip -n "$P" route add default via "$UP2" dev wan2 metric 200
	# Source policy route: Dante and microsocks can only bind the source
	# address; this sends what leaves from it out of wan2.
	ip -n "$P" route add default via "$UP2" dev wan2 table 102
	ip -n "$P" rule add from "$WAN2" table 102
	ip -n "$U" route add 10.233.0.0/24 via "$WAN2" dev up2
	if [ "${v6:-0}" = 1 ]; then topo_v6; fi
	# The client must not be what runs out of ports in the connection test.
	sys "$C" net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
	# Replies to wan2's flows arrive on wan2 while the main table's best
	# route back is wan1: no reverse-path filter in P.
	sys "$P" net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
	if [ ${#p_sysctl[@]} -gt 0 ]; then sys "$P" "${p_sysctl[@]}"; fi
	if [ ${#extra_sysctl[@]} -gt 0 ]; then sys "$P" "${extra_sysctl[@]}"; fi
	if [ "$1" = kernel ]; then
		ip -n "$P" rule add iif cl0 table 102
		sys "$P" net.ipv4.ip_forward=1
	else
		sys "$P" net.ipv4.ip_forward=0
	fi
	if [ "$1" = dante ]; then dante_etc; fi
}

# topo_v6 adds IPv6 on the wan2 path for the address pool tests: wan2
# fd33:2::1 -- up2 fd33:2::2, the service address fd33:9::9 on U, and
# fd33:80::/80 routed by U to P, where a local route makes every address of
# it P's own ("AnyIP", as for a prefix delegated to an AWS ENI).
topo_v6() {
	# nodad: usable at once, not "tentative" for a second or two.
	ip -n "$P" -6 addr add "$WAN2_6/64" dev wan2 nodad
	ip -n "$U" -6 addr add "$UP2_6/64" dev up2 nodad
	ip -n "$U" -6 addr add "$SVC6/128" dev lo
	ip -n "$P" -6 route add default via "$UP2_6" dev wan2
	ip -n "$P" -6 route add local "$POOL6" dev lo
	ip -n "$U" -6 route add "$POOL6" via "$WAN2_6" dev up2
}

# bg NAME NS CMD...: start CMD in namespace NS in the background; its pid
# (ip netns exec execs the command in place) is left in $bgpid.
bg() {
	local name=$1 ns=$2
	shift 2
	ip netns exec "$ns" "$@" >"$work/$name.log" 2>&1 &
	bgpid=$!
	pids+=("$bgpid")
}

# note KIND [ifsbench note flags]: append a record to the results.
note() { "$work/ifsbench" note -kind "$@" >>"$results"; }

# --- the proxies -----------------------------------------------------------

# dante_etc gives P's processes their own /etc/passwd and /etc/shadow
# (`ip netns exec` bind-mounts /etc/netns/P/*), holding the benchmark user
# with the same bcrypt hash ifsocks gets: Dante's username method checks
# system users with crypt(3), and Debian's libxcrypt reads bcrypt. The
# host's own user files are neither read nor changed.
dante_etc() {
	mkdir -p "/etc/netns/$P"
	cat >"/etc/netns/$P/passwd" <<PASSWD
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
bench:x:64999:65534:ifsbench:/nonexistent:/usr/sbin/nologin
PASSWD
	printf 'root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\nbench:%s:19000:0:99999:7:::\n' "$hash" >"/etc/netns/$P/shadow"
	chmod 0640 "/etc/netns/$P/shadow"
}

write_configs() {
	cat >"$work/ifsocks.toml" <<TOML
# Defaults everywhere except where it listens and the one user.
[server]
listen = ["$LISTEN:1080"]

[[users]]
name = "bench"
password_hash = "$hash"
interface = "wan2"
TOML
	# The same with accounting on: every byte counted per user, flushed
	# to an SQLite file every 10 s (the default).
	{ cat "$work/ifsocks.toml"; printf '\n[accounting]\npath = "%s"\n' "$work/usage.db"; } >"$work/ifsocks-acct.toml"
	# The address pool rows: the same user with one IPv6 source_ip, and
	# with a /80 pool rotated per connection.
	sed 's/^interface = "wan2"$/source_ip = "'"$WAN2_6"'"/' "$work/ifsocks.toml" >"$work/ifsocks-v6-source.toml"
	sed 's|^interface = "wan2"$|interface = "wan2"\nsource_ips = ["'"$POOL6"'"]|' "$work/ifsocks.toml" >"$work/ifsocks-v6-pool.toml"
	# The auth hook row: the same user, from an HTTP hook (ifsbench
	# authhook in P) instead of [[users]]; its answer is cached.
	cat >"$work/ifsocks-hook.toml" <<TOML
[server]
listen = ["$LISTEN:1080"]

[auth]
backend = "http"

[auth.http]
url = "http://127.0.0.1:9009/ifsocks/auth"
TOML
	local method
	for method in username none; do
		cat >"$work/danted-$method.conf" <<DANTE
logoutput: stderr
internal: $LISTEN port = 1080
external: $WAN2
clientmethod: none
socksmethod: $method
user.privileged: root
user.unprivileged: nobody
client pass {
	from: 10.233.0.0/24 to: 0.0.0.0/0
	log: error
}
socks pass {
	from: 10.233.0.0/24 to: 0.0.0.0/0
	command: connect udpassociate
	log: error
}
socks pass {
	from: 0.0.0.0/0 to: 10.233.0.0/24
	command: udpreply
	log: error
}
DANTE
	done
}

# start_proxy SUBJECT: start it in P, wait until it answers a probe.
# Sets ppid (the proxy's pid, 0 for kernel) and auth (client flags).
start_proxy() {
	ppid=0 auth=()
	# IFSBENCH_IFSOCKS_ARGS is split into flags on purpose.
	# shellcheck disable=SC2086
	case "$1" in
	kernel)
		timeout 20 ip netns exec "$C" "$work/ifsbench" probe || return 1
		return 0
		;;
	ifsocks) bg ifsocks "$P" "$work/ifsocks" -config "$work/${ifsocks_conf:-ifsocks.toml}" ${IFSBENCH_IFSOCKS_ARGS:-} ;;
	# The build of --before REV, with ifsocks's configuration.
	ifsocks-before) bg ifsocks-before "$P" "$work/ifsocks-before" -config "$work/${ifsocks_conf:-ifsocks.toml}" ${IFSBENCH_IFSOCKS_ARGS:-} ;;
	# The bare forwarder: the bench's ports, to the same ports upstream,
	# leaving by wan2 as the ifsocks user does; no protocol, so no auth.
	bare)
		bg bare "$P" "$work/ifsbare" -listen "$LISTEN" -upstream "$SVC" -interface wan2 -tcp 5001,5002 -udp 5003 -lifetime 2h
		ppid=$bgpid
		timeout 20 ip netns exec "$C" "$work/ifsbench" wait -addr "$LISTEN:5002" -timeout 15s || return 1
		timeout 20 ip netns exec "$C" "$work/ifsbench" probe -forward "$LISTEN" || return 1
		return 0
		;;
	# The bare SOCKS5 relay: ifsocks's port, user and password (plaintext:
	# it has no bcrypt), leaving by wan2; reached exactly as ifsocks is.
	bare-socks5) bg bare-socks5 "$P" "$work/ifsbare" -listen "$LISTEN" -interface wan2 -tcp 1080 -socks5 "bench:$pass" -lifetime 2h ;;
	ifsocks-acct) rm -f "$work"/usage.db*; bg ifsocks-acct "$P" "$work/ifsocks" -config "$work/ifsocks-acct.toml" ${IFSBENCH_IFSOCKS_ARGS:-} ;;
	dante) bg dante "$P" danted -f "$work/danted-$dante_method.conf" -p "$work/danted.pid" ;;
	microsocks) bg microsocks "$P" microsocks -i "$LISTEN" -p 1080 -u bench -P "$pass" -b "$WAN2" ;;
	esac
	ppid=$bgpid
	if [ "$1" != dante ] || [ "$dante_method" = username ]; then auth=(-user bench -pass "$pass"); fi
	# Called in a condition, where set -e does not apply: return by hand.
	timeout 20 ip netns exec "$C" "$work/ifsbench" wait -addr "$LISTEN:1080" -timeout 15s || return 1
	timeout 20 ip netns exec "$C" "$work/ifsbench" probe -proxy "$LISTEN:1080" "${auth[@]}" "${probe_target[@]}" || return 1
}

# setup SUBJECT: fresh topology and upstream servers. Sets spid.
setup() {
	topo_up "$1"
	bg serve "$U" "$work/ifsbench" serve -addr "$SVC" -lifetime 2h
	spid=$bgpid
	timeout 20 ip netns exec "$U" "$work/ifsbench" wait -addr "$SVC:5002" -timeout 15s
	if [ "${v6:-0}" = 1 ]; then
		bg serve6 "$U" "$work/ifsbench" serve -addr "$SVC6" -lifetime 2h
		timeout 20 ip netns exec "$U" "$work/ifsbench" wait -addr "[$SVC6]:5002" -timeout 15s
	fi
}

# measure SUBJECT LIMIT TEST ARGS...: one load run (ifsbench ARGS in C),
# repeat $rep; its record goes to the results. A failure is noted and,
# unless the subject is one fatal (run.sh) excuses, fails the run.
measure() {
	local subject=$1 limit=$2 test=$3
	shift 3
	local cpu="server=$spid"
	[ "$ppid" = 0 ] || cpu="proxy=$ppid,$cpu"
	log "$subject: $test"
	if timeout -k 5 "$limit" ip netns exec "$C" "$work/ifsbench" "$@" -subject "$subject" -run "$rep" -cpu "$cpu" \
		>"$work/out.json" 2>"$work/err.txt"; then
		cat "$work/out.json" >>"$results"
		return 0
	fi
	local why
	why=$(tail -n 3 "$work/err.txt" | tr '\n' ' ')
	log "$subject $test failed: $why"
	note note -value "$subject $test failed: ${why:-timed out}"
	note skip -subject "$subject" -test "$test" -value failed
	if fatal "$subject"; then failed+=("$subject $test"); fi
}
