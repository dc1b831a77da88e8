#!/usr/bin/env bash
# ifsocks benchmark: builds its own client / proxy / upstream network
# namespaces, measures ifsocks, kernel forwarding and (when installed) Dante
# and microsocks side by side, prints a Markdown table and writes
# bench/RESULTS.md. Run as root:
#
#   bench/run.sh [--install] [--short] [--out FILE] [--repeat N] [--before REV]
#
# --install  apt-get install dante-server, microsocks and strace first
# --short    CI smoke mode: 2 s per test, 300 tunnels
# --seconds N  seconds per timed test (default 10; 2 with --short)
# --repeat N run each test N times (default 1); the report shows medians
#            and every repeat
# --before REV  also build ifsocks at git revision REV and measure it as
#            subject ifsocks-before, with ifsocks's configuration
# --out      where to write the report (default bench/RESULTS.md)
# --only     comma-separated subjects to run (kernel,bare,bare-socks5,
#            ifsocks,ifsocks-before,ifsocks-acct,dante,microsocks)
# --groups   comma-separated tests to run (tunnels,tcp,udp,connrate,hook,
#            twreuse,v6source,v6pool,httpconnect)
# --p-sysctl KEY=VALUE  set a sysctl in the proxy namespace (diagnosis,
#            e.g. net.ipv4.tcp_tw_reuse=1); recorded in the report
#
# Every test gets a fresh topology and fresh processes, so one test's
# sockets in TIME_WAIT or grown heap cannot change the next one's figures.
# The subjects of a test take turns (kernel, bare, ifsocks, ..., then the
# next repeat), so a drift of the machine hits them alike.
# Traffic stays inside the namespaces created here (10.233.0.0/16); they are
# removed on exit, failure or interrupt.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
short=0 install=0 out="$here/RESULTS.md" only="" only_groups="" p_sysctl=()
repeat=1 before="" seconds=""
while [ $# -gt 0 ]; do
	case "$1" in
	--short) short=1 ;;
	--seconds) seconds=${2:?--seconds needs a number}; shift ;;
	--repeat) repeat=${2:?--repeat needs a number}; shift ;;
	--before) before=${2:?--before needs a git revision}; shift ;;
	--install) install=1 ;;
	--out) out=${2:?--out needs a file}; shift ;;
	--only) only=${2:?--only needs a list}; shift ;;
	--groups) only_groups=${2:?--groups needs a list}; shift ;;
	--p-sysctl) p_sysctl+=("${2:?--p-sysctl needs KEY=VALUE}"); shift ;;
	-h | --help) sed -n '2,29p' "$0"; exit 0 ;;
	*) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
[ "$(id -u)" = 0 ] || { echo "run.sh: must run as root (network namespaces)" >&2; exit 1; }
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

# whole N: N is a whole number of at least 1.
whole() { case "$1" in '' | *[!0-9]*) return 1 ;; esac; [ "$((10#$1))" -ge 1 ]; }
whole "$repeat" || { echo "run.sh: --repeat $repeat: want a whole number from 1" >&2; exit 2; }
[ -z "$seconds" ] || whole "$seconds" || { echo "run.sh: --seconds $seconds: want a whole number from 1" >&2; exit 2; }
repeat=$((10#$repeat))
[ -z "$seconds" ] || seconds=$((10#$seconds))
if [ "$short" = 1 ]; then
	durs=2 tunnels=300 strace_dur=1s
else
	durs=10 tunnels=10000 strace_dur=3s
fi
durs=${seconds:-$durs} dur="${seconds:-$durs}s"
case ",$only," in
*,ifsocks-before,*) [ -n "$before" ] || { echo "run.sh: --only ifsocks-before needs --before REV" >&2; exit 2; } ;;
esac

if [ "$install" = 1 ]; then
	export DEBIAN_FRONTEND=noninteractive
	pkgs=(dante-server microsocks strace)
	timeout 600 apt-get install -y --no-install-recommends "${pkgs[@]}" ||
		{ timeout 300 apt-get update && timeout 600 apt-get install -y --no-install-recommends "${pkgs[@]}"; }
fi

# Addresses: C c0 .0.2 -> P cl0 .0.1 (proxy listens) ; P wan1 .1.1 / wan2 .2.1
# -> U up1 .1.2 / up2 .2.2 ; service address 10.233.9.9 on U's loopback.
readonly CLIENT=10.233.0.2 LISTEN=10.233.0.1 WAN2=10.233.2.1 UP2=10.233.2.2 SVC=10.233.9.9
# IPv6 of the address pool rows (topo_v6): wan2, up2, the service, the pool.
readonly WAN2_6=fd33:2::1 UP2_6=fd33:2::2 SVC6=fd33:9::9 POOL6=fd33:80::/80
pfx="ifsbench-$$"
C="$pfx-c" P="$pfx-p" U="$pfx-u"
failed=() # ifsocks or kernel tests that failed: the run exits non-zero
pids=()   # processes this script started and has not yet stopped
extra_sysctl=() # sysctls for the proxy netns of the current test
v6=0 ifsocks_conf=ifsocks.toml probe_target=() # set per test by run_one
rep=1 # the repeat being measured
# shellcheck source=lib.sh
. "$here/lib.sh"
work=$(mktemp -d /tmp/ifsbench.XXXXXX)
results="$work/results.jsonl"
cleanup() {
	set +e
	topo_down
	rm -rf "$work"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM HUP

# --- the tests -------------------------------------------------------------

# tests_of GROUP: the tests of a group, each measured on a fresh topology.
# "strace" is not measured: it counts the system calls of ifsocks (and of
# the bare forwarder and the before build), once.
tests_of() {
	case "$1" in
	tcp) echo tcp-1-up tcp-1-down tcp-8-up tcp-8-down strace ;;
	httpconnect) echo http-tcp-1-up http-tcp-1-down http-connrate ;;
	hook) echo connrate-hook ;;
	twreuse) echo connrate-tw ;;
	v6source) echo connrate-v6-source ;;
	v6pool) echo connrate-v6-pool ;;
	*) echo "$1" ;;
	esac
}

# measure_test SUBJECT TEST: one test, on the topology and proxy run_one
# set up.
measure_test() {
	local s=$1 t=$2 n dir
	case "$t" in
	tunnels)
		measure "$s" 420 tunnels tunnels "${via[@]}" -n "$tunnels" -rss-pid "$ppid" -hold 1s -open-timeout 5m ;;
	tcp-*-*)
		n=${t#tcp-} dir=${n#*-} n=${n%%-*}
		measure "$s" $((durs + 90)) "$t" tcp "${via[@]}" -streams "$n" -dir "$dir" -duration "$dur" ;;
	strace) strace_run "$s" ;;
	# The same tunnels asked for with HTTP CONNECT and Basic proxy
	# credentials instead of SOCKS5 (ifsocks serves both on one port).
	http-tcp-1-*)
		measure "$s" $((durs + 90)) "$t" tcp "${via[@]}" -proxy-proto http -streams 1 -dir "${t##*-}" -duration "$dur" -test "$t" ;;
	http-connrate)
		measure "$s" $((durs + 60)) "$t" connrate "${via[@]}" -proxy-proto http -concurrency 50 -duration "$dur" -test "$t" ;;
	udp)
		measure "$s" $((durs + 60)) udp udp "${via[@]}" -window 64 -size 512 -duration "$dur" ;;
	# connrate: the connection test. connrate-v6-*: to an IPv6 target,
	# ifsocks binding one source_ip, then a /80 pool with a random address
	# per connection (source_rotation = "flow"): the pool must cost no
	# more per connection, and its TIME_WAIT sockets spread over many
	# addresses. connrate-hook: the user from an HTTP auth hook ([auth]
	# backend = "http"): after the first login every one is answered from
	# the cache. connrate-tw: tcp_tw_reuse=1 in the proxy namespace (set
	# by run_one): when the default run collapses, this tells whether
	# ports held in TIME_WAIT were the cause.
	connrate | connrate-*)
		local target=()
		case "$t" in connrate-v6-*) target=(-target "[$SVC6]:5002") ;; esac
		measure "$s" $((durs + 60)) "$t" connrate "${via[@]}" -concurrency 50 -duration "$dur" "${target[@]}" -test "$t"
		[ "$t" = connrate-hook ] || tw_count "$s" "$t" ;;
	*) log "unknown test $t"; return 1 ;;
	esac
}

# tw_count SUBJECT TEST notes how many of the proxy namespace's sockets
# are in TIME_WAIT after a connection test, against its ephemeral port
# range.
tw_count() {
	local tw range which=$2
	[ "$repeat" = 1 ] || which+=" #$rep"
	tw=$(ip netns exec "$P" ss -Htan state time-wait 2>/dev/null | wc -l)
	range=$(ip netns exec "$P" sysctl -n net.ipv4.ip_local_port_range | tr -s ' \t' '-')
	note note -value "$1 $which: $tw sockets in TIME_WAIT in the proxy netns afterwards (ephemeral ports $range, tcp_tw_reuse=$(ip netns exec "$P" sysctl -n net.ipv4.tcp_tw_reuse))"
}

# strace_run SUBJECT counts the proxy's splice/read/write calls during
# one more transfer each way (not a measured one: ptrace slows the
# process).
strace_run() {
	local dir sp bytes
	if ! command -v strace >/dev/null; then
		[ "$1" != ifsocks ] || note note -value "strace is not installed: no system call counts (run.sh --install)"
		return 0
	fi
	for dir in down up; do
		timeout -k 2 120 strace -f -c -e trace=splice,read,write -o "$work/strace-$dir.txt" -p "$ppid" 2>"$work/strace.err" &
		sp=$!
		for _ in $(seq 100); do
			grep -q attached "$work/strace.err" 2>/dev/null && break
			sleep 0.1
		done
		timeout -k 5 60 ip netns exec "$C" "$work/ifsbench" tcp "${via[@]}" -streams 1 -dir "$dir" -duration "$strace_dur" \
			>"$work/strace-run.json" 2>>"$work/strace.err" || true
		kill -INT "$sp" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$sp" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$sp" 2>/dev/null || true
		wait "$sp" 2>/dev/null || true
		bytes=$(grep -o '"bytes":[0-9.e+]*' "$work/strace-run.json" | cut -d: -f2 || true)
		note strace -subject "$1" -test "1 stream $dir, $(awk -v b="${bytes:-0}" 'BEGIN{printf "%.0f MB", b/1e6}') relayed" -file "$work/strace-$dir.txt"
	done
}

# start_dante: the first time, try username authentication; if Dante
# cannot be made to accept the user, fall back to no authentication and
# say so in the report.
start_dante() {
	if [ -z "$dante_method" ]; then
		dante_method=username
		if start_proxy dante; then
			note meta -key "Dante authentication" -value "username (RFC 1929) against crypt(3) with the same bcrypt cost-10 hash as ifsocks"
			note note -value "Dante checks the password with crypt(3) on every connection (no cache): one bcrypt of cost 10 per connection bounds its connection rate and the time it takes to open the tunnels of the memory test. ifsocks caches a successful check for 5 minutes; microsocks compares plaintext."
			return 0
		fi
		log "dante: username authentication failed; retrying with socksmethod none"
		stop_pid "$ppid"
		dante_method=none
		note meta -key "Dante authentication" -value "none: username authentication could not be made to work ($(tail -n 2 "$work/dante.log" | tr '\n' ' '))"
	fi
	start_proxy dante
}

# plan_subject SUBJECT: the groups it runs, into plan[SUBJECT]; notes
# once what it does not run and why.
plan_subject() {
	local s=$1 t groups="tunnels tcp udp connrate hook twreuse v6source v6pool httpconnect"
	case "$s" in
	ifsocks | ifsocks-before) ;;
	*)
		for t in connrate-hook connrate-v6-source connrate-v6-pool http-tcp-1-up http-tcp-1-down http-connrate; do
			note skip -subject "$s" -test "$t" -value "ifsocks only"
		done
		;;
	esac
	case "$s" in
	kernel)
		groups="tcp udp connrate"
		note skip -subject kernel -test tunnels -value "no proxy"
		note skip -subject kernel -test connrate-tw -value "not needed"
		;;
	bare)
		groups="tcp udp connrate twreuse"
		note skip -subject bare -test tunnels -value "—"
		;;
	# After its handshake bare-socks5 relays with bare's very code, so a
	# bulk transfer would measure bare again (one handshake per 10 s
	# stream): it runs the connection rows only, where the handshake is
	# the cost. No UDP ASSOCIATE.
	bare-socks5)
		groups="connrate twreuse"
		for t in tcp-1-up tcp-1-down tcp-8-up tcp-8-down; do
			note skip -subject bare-socks5 -test "$t" -value "as bare"
		done
		note skip -subject bare-socks5 -test udp -value "no UDP"
		note skip -subject bare-socks5 -test tunnels -value "—"
		;;
	dante)
		groups="tunnels tcp udp connrate"
		note skip -subject dante -test connrate-tw -value "bcrypt-bound"
		;;
	ifsocks-acct)
		groups="tcp connrate"
		note skip -subject ifsocks-acct -test tunnels -value "as ifsocks"
		note skip -subject ifsocks-acct -test udp -value "not run"
		note skip -subject ifsocks-acct -test connrate-tw -value "not run"
		;;
	microsocks)
		groups="tunnels tcp connrate twreuse"
		note skip -subject microsocks -test udp -value "no UDP"
		;;
	esac
	plan[$s]=" $groups "
}

# run_one SUBJECT GROUP TEST: a fresh topology, the subject's proxy, one
# test, and everything torn down again. $rep is the repeat.
run_one() {
	local s=$1 g=$2 t=$3 t0=$SECONDS
	log "$s: $t${rep:+ #$rep}"
	extra_sysctl=()
	[ "$g" != twreuse ] || extra_sysctl=(net.ipv4.tcp_tw_reuse=1)
	v6=0 ifsocks_conf=ifsocks.toml probe_target=()
	case "$g" in
	v6source) v6=1 ifsocks_conf=ifsocks-v6-source.toml probe_target=(-target "[$SVC6]:5002") ;;
	v6pool) v6=1 ifsocks_conf=ifsocks-v6-pool.toml probe_target=(-target "[$SVC6]:5002") ;;
	hook) ifsocks_conf=ifsocks-hook.toml ;;
	esac
	setup "$s"
	if [ "$g" = hook ]; then
		bg authhook "$P" "$work/ifsbench" authhook -addr 127.0.0.1:9009 -user bench -pass "$pass" -interface wan2
		timeout 20 ip netns exec "$P" "$work/ifsbench" wait -addr 127.0.0.1:9009 -timeout 15s
	fi
	local ok=1
	if [ "$s" = dante ]; then start_dante || ok=0; else start_proxy "$s" || ok=0; fi
	if [ "$ok" = 0 ]; then
		log "$s did not start or failed its probe; see its log"
		note note -value "$s $t: did not start or failed its probe: $(tail -n 2 "$work/$s.log" 2>/dev/null | tr '\n' ' ')"
		note skip -subject "$s" -test "$t" -value failed
		if fatal "$s"; then failed+=("$s $t setup"); fi
		topo_down
		return 0
	fi
	case "$s" in
	kernel) via=() ;;
	bare) via=(-forward "$LISTEN") ;;
	*) via=(-proxy "$LISTEN:1080" "${auth[@]}") ;;
	esac
	measure_test "$s" "$t"
	topo_down
	log "$s: $t${rep:+ #$rep} took $((SECONDS - t0)) s in all"
}

# fatal SUBJECT: whether a failure of SUBJECT fails the run. The peers
# and an older ifsocks (which may lack what a test configures) do not.
fatal() {
	case "$1" in dante | microsocks | ifsocks-before) return 1 ;; esac
	return 0
}

# --- main ------------------------------------------------------------------

# RLIMIT_NOFILE as the systemd unit's LimitNOFILE, if this host lets us
# raise the hard limit (it takes CAP_SYS_RESOURCE); else the hard limit.
nofile=262144
(ulimit -Hn "$nofile") 2>/dev/null || nofile=$(ulimit -Hn)
ulimit -Hn "$nofile"
ulimit -Sn "$nofile"
# ifsocks holds 2 descriptors per idle tunnel (its two sockets: an idle
# relay holds no splice pipe); fit the memory test into the limit.
fit=$(((nofile - 1000) / 2))
if [ "$tunnels" -gt "$fit" ]; then
	tunnels_note="RLIMIT_NOFILE is capped at $nofile on this host (the hard limit cannot be raised), and ifsocks holds 2 descriptors per idle tunnel, so the memory test opens $fit tunnels instead of $tunnels."
	tunnels=$fit
fi
export PATH="$PATH:/usr/local/go/bin"
log "building into $work"
version=$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)
(cd "$root" && go build -buildvcs=false -ldflags "-X main.version=$version" -o "$work/ifsocks" .)
(cd "$root" && go build -buildvcs=false -o "$work/ifsbench" ./bench/cmd/ifsbench)
(cd "$root" && go build -buildvcs=false -o "$work/ifsbare" ./bench/cmd/ifsbare)
if [ -n "$before" ]; then
	# The tree of REV, exported (not checked out: the repository and its
	# worktrees are left as they are), built with the same Go.
	before_rev=$(git -C "$root" rev-parse --verify --quiet "$before^{commit}") ||
		{ log "--before $before: not a git revision of $root"; exit 2; }
	before_version=$(git -C "$root" describe --always "$before_rev" 2>/dev/null || echo "$before_rev")
	log "building ifsocks at $before ($before_version)"
	mkdir "$work/before-src"
	git -C "$root" archive --format=tar "$before_rev" | tar -x -C "$work/before-src"
	(cd "$work/before-src" && go build -buildvcs=false -ldflags "-X main.version=$before_version" -o "$work/ifsocks-before" .)
	rm -rf "$work/before-src"
fi
pass=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
hash=$(printf '%s\n' "$pass" | "$work/ifsocks" hash-password)
write_configs
dante_method=""
: >"$results"

note meta -key date -value "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
note meta -key mode -value "$([ "$short" = 1 ] && echo "short (CI smoke test; figures not meaningful)" || echo full): $dur per test, $tunnels tunnels"
note meta -key kernel -value "$(uname -sr)"
note meta -key CPU -value "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
note meta -key memory -value "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
note meta -key Go -value "$(go version)"
note meta -key ifsocks -value "$version (defaults: JSON flow log at info, to a file)"
if [ -n "$before" ]; then note meta -key "ifsocks before" -value "$before_version (--before $before), the same configuration"; fi
if [ "$repeat" -gt 1 ]; then note meta -key repeats -value "$repeat per test, subjects taking turns; figures are medians"; fi
note meta -key "bare forwarder" -value "ifsbare: accept, connect by wan2 with the daemon's bind.Dialer (SO_BINDTODEVICE), io.Copy both ways (splice), half-close passed on; UDP: one socket each side, batched with the daemon's udpio (recvmmsg/sendmmsg)"
note meta -key "bare SOCKS5 relay" -value "ifsbare -socks5: the least a SOCKS5 CONNECT relay does: greeting, RFC 1929 login against one plaintext user (constant-time compare, no bcrypt), CONNECT dialled by wan2 with bind.Dialer, success reply, then the bare forwarder's relay; one read(2) per client message, no logs, no metrics, no policy"
subjects_run=(kernel bare bare-socks5 ifsocks)
if [ -n "$before" ]; then subjects_run+=(ifsocks-before); fi
subjects_run+=(ifsocks-acct)
if command -v danted >/dev/null; then
	subjects_run+=(dante)
	note meta -key Dante -value "$(danted -v 2>&1 | head -n1 | cut -c1-40)"
else
	note skip -subject dante -test '*' -value "not installed"
	note note -value "Dante is not installed (danted): skipped; bench/run.sh --install installs it"
fi
if command -v microsocks >/dev/null; then
	subjects_run+=(microsocks)
	note meta -key microsocks -value "$(dpkg-query -W -f='${Version}' microsocks 2>/dev/null || echo unknown), plaintext user/password (-u/-P), no UDP"
else
	note skip -subject microsocks -test '*' -value "not installed"
	note note -value "microsocks is not installed: skipped; bench/run.sh --install installs it"
fi
if [ -n "${tunnels_note:-}" ]; then note note -value "$tunnels_note"; fi
if [ ${#p_sysctl[@]} -gt 0 ]; then note meta -key "proxy netns sysctl (--p-sysctl)" -value "${p_sysctl[*]}"; fi
note note -value "One $(nproc)-core VM, shared and noisy: the client, the proxy and the upstream servers all run on the same cores, so a proxy that needs more CPU also takes it from the load tool. Compare columns of one run, not runs."
note note -value "Topology: client netns -> proxy netns (listens on $LISTEN:1080; egress wan2 = $WAN2, not the preferred default route) -> upstream netns ($SVC). veth pairs, MTU 1500. kernel forwarding: ip_forward=1 in the proxy netns and a policy route sending the client's packets out of wan2; the client connects to $SVC directly."
note note -value "ifsocks user: password_hash (bcrypt cost 10) with interface = \"wan2\" (SO_BINDTODEVICE). Dante (external: $WAN2) and microsocks (-b $WAN2) bind the source address; a source policy route (from $WAN2 table 102) sends it out of wan2."
note note -value "Each test runs on a fresh topology with fresh processes. Client netns: ip_local_port_range 1024-65535 and tcp_tw_reuse=1 so the client never runs out of ports; the proxy and upstream namespaces keep kernel defaults. RLIMIT_NOFILE $nofile for every process."
note note -value "Connection test: $durs s, 50 concurrent clients, each cycle = TCP connect, greeting, RFC 1929 auth, CONNECT, 64-byte write, 64-byte echo, close (the bare SOCKS5 relay gets the same cycle and credentials as ifsocks; the bare forwarder: TCP connect, 64-byte write, echo, close); latency is connect to echo. UDP: closed loop, 64 datagrams of 512 bytes in flight, a datagram not echoed in 500 ms is counted lost and replaced."

# The subjects to run, and what each runs.
declare -A plan=()
subjects=()
for s in "${subjects_run[@]}"; do
	case ",${only:-$s}," in
	*",$s,"*) subjects+=("$s"); plan_subject "$s" ;;
	*) note skip -subject "$s" -test '*' -value "not run (--only)" ;;
	esac
done
# Group by group, test by test, repeat by repeat, the subjects take
# turns: kernel, bare, bare-socks5, ifsocks, ... on the same test, then
# again.
for g in tunnels tcp udp connrate hook twreuse v6source v6pool httpconnect; do
	case ",${only_groups:-$g}," in *",$g,"*) ;; *) continue ;; esac
	for t in $(tests_of "$g"); do
		for rep in $(seq "$repeat"); do
			for s in "${subjects[@]}"; do
				case "${plan[$s]}" in *" $g "*) ;; *) continue ;; esac
				# System calls are counted once, of ifsocks, bare and before.
				if [ "$t" = strace ]; then
					case "$s:$rep" in ifsocks:1 | bare:1 | ifsocks-before:1) ;; *) continue ;; esac
				fi
				run_one "$s" "$g" "$t"
			done
		done
	done
done
log "all tests took $SECONDS s"

"$work/ifsbench" report -in "$results" -out "$out"
log "wrote $out"
if [ ${#failed[@]} -gt 0 ]; then
	log "failed: ${failed[*]}"
	exit 1
fi
