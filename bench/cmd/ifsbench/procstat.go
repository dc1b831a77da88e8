package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat and /proc/stat
// times. It is 100 on every Linux architecture Go supports, and Go has no
// sysconf(_SC_CLK_TCK) without cgo.
const clockTicks = 100

// watched is a process whose CPU time a test reports, counted with all
// its descendants: Dante forks children for its sessions.
type watched struct {
	role string
	pid  int
}

// cpuMeter takes CPU readings at the start and end of a test.
type cpuMeter struct {
	watch []watched
	start map[string]float64
}

func startCPU(watch []watched) *cpuMeter {
	return &cpuMeter{watch: watch, start: readCPU(watch)}
}

// stop returns the seconds each role used since startCPU.
func (m *cpuMeter) stop() map[string]float64 {
	end := readCPU(m.watch)
	out := make(map[string]float64, len(end))
	for k, v := range end {
		out[k] = v - m.start[k]
	}
	return out
}

func readCPU(watch []watched) map[string]float64 {
	out := map[string]float64{"client": selfCPU(), "host": hostBusy()}
	if len(watch) == 0 {
		return out
	}
	procs := readProcs()
	for _, w := range watch {
		var user, sys uint64
		for _, pid := range tree(procs, w.pid) {
			user += procs[pid].user
			sys += procs[pid].sys
		}
		out[w.role] = float64(user+sys) / clockTicks
		// The kernel's share tells system-call and TCP stack cost
		// from the process's own work.
		out[w.role+"_sys"] = float64(sys) / clockTicks
	}
	return out
}

// proc is what the benchmark needs of /proc/<pid>/stat.
type proc struct {
	ppid int
	// user is utime+cutime, sys stime+cstime: a child that exits and is
	// reaped during the test moves its time into its parent's c-fields,
	// so the sum over a tree stays whole.
	user, sys uint64
}

func readProcs() map[int]proc {
	out := make(map[int]proc)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readStat(pid); ok {
			out[pid] = p
		}
	}
	return out
}

func readStat(pid int) (proc, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return proc{}, false
	}
	// The command name may hold spaces and parentheses: fields start
	// after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return proc{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return proc{}, false
	}
	p := proc{}
	p.ppid, _ = strconv.Atoi(f[1])
	var t [4]uint64 // utime stime cutime cstime
	for i, s := range f[11:15] {
		t[i], _ = strconv.ParseUint(s, 10, 64)
	}
	p.user, p.sys = t[0]+t[2], t[1]+t[3]
	return p, true
}

// tree returns root and its living descendants.
func tree(procs map[int]proc, root int) []int {
	if _, ok := procs[root]; !ok {
		return nil
	}
	children := make(map[int][]int)
	for pid, p := range procs {
		children[p.ppid] = append(children[p.ppid], pid)
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return tvSeconds(ru.Utime) + tvSeconds(ru.Stime)
}

func tvSeconds(tv syscall.Timeval) float64 {
	return float64(tv.Sec) + float64(tv.Usec)/1e6
}

// hostBusy is the machine's non-idle CPU time in seconds, all cores, from
// the first line of /proc/stat. Guest time is already inside user, and
// steal is another guest's work on a shared host.
func hostBusy() float64 {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0
	}
	fields := strings.Fields(sc.Text())
	var busy uint64
	for i, s := range fields[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		switch i {
		case 3, 4, 7, 8, 9: // idle, iowait, steal, guest, guest_nice
			continue
		}
		busy += v
	}
	return float64(busy) / clockTicks
}

// memory is what the memory test reads of a process tree.
type memory struct {
	rss int // VmRSS, KiB, summed: pages shared by forked children count once per process
	pss int // Pss, KiB: shared pages divided among their sharers, so the sum is fair to forking servers
	fds int // open descriptors
}

func treeMemory(root int) memory {
	var m memory
	for _, pid := range tree(readProcs(), root) {
		m.rss += procField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
		m.pss += procField(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss:")
		if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
			m.fds += len(ents)
		}
	}
	return m
}

// procField returns the number after key in a /proc file of "Key: N kB"
// lines (or 0).
func procField(path, key string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
	}
	return 0
}
