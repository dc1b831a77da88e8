package link

import (
	"reflect"
	"sync"
	"testing"

	"go.uber.org/zap"
)

type change struct {
	name     string
	old, new State
}

func recorder() (*Watcher, func() []change) {
	var mu sync.Mutex
	var got []change
	w := New(zap.NewNop(), func(name string, old, new State) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, change{name, old, new})
	})
	return w, func() []change {
		mu.Lock()
		defer mu.Unlock()
		out := got
		got = nil
		return out
	}
}

// TestUpdate drives the state machine with the events netlink delivers.
func TestUpdate(t *testing.T) {
	type event struct {
		idx  int
		name string // "" = RTM_DELLINK
		st   State
	}
	tests := []struct {
		name   string
		watch  []string
		events []event
		want   []change
		final  map[string]State
	}{
		{"appears up", []string{"eth1"}, []event{{2, "eth1", Up}},
			[]change{{"eth1", Missing, Up}}, map[string]State{"eth1": Up}},
		{"down then up", []string{"eth1"}, []event{{2, "eth1", Up}, {2, "eth1", Down}, {2, "eth1", Up}},
			[]change{{"eth1", Missing, Up}, {"eth1", Up, Down}, {"eth1", Down, Up}}, map[string]State{"eth1": Up}},
		{"repeated state is no change", []string{"eth1"}, []event{{2, "eth1", Up}, {2, "eth1", Up}},
			[]change{{"eth1", Missing, Up}}, map[string]State{"eth1": Up}},
		{"deleted", []string{"eth1"}, []event{{2, "eth1", Up}, {2, "", Missing}},
			[]change{{"eth1", Missing, Up}, {"eth1", Up, Missing}}, map[string]State{"eth1": Missing}},
		{"renamed away and another takes the name", []string{"eth1"},
			[]event{{2, "eth1", Up}, {2, "old1", Up}, {3, "eth1", Down}},
			[]change{{"eth1", Missing, Up}, {"eth1", Up, Missing}, {"old1", Missing, Up}, {"eth1", Missing, Down}}, map[string]State{"eth1": Down}},
		{"unwatched interfaces are reported too", []string{"eth1"}, []event{{4, "eth9", Up}, {4, "", Missing}},
			[]change{{"eth9", Missing, Up}, {"eth9", Up, Missing}}, map[string]State{"eth1": Missing}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, got := recorder()
			w.Watch(tt.watch)
			for _, e := range tt.events {
				w.update(e.idx, e.name, e.st)
			}
			if g := got(); !reflect.DeepEqual(g, tt.want) {
				t.Errorf("changes %v, want %v", g, tt.want)
			}
			if g := w.Watched(); !reflect.DeepEqual(g, tt.final) {
				t.Errorf("Watched() = %v, want %v", g, tt.final)
			}
		})
	}
}

func TestWatchReplacesSet(t *testing.T) {
	w, got := recorder()
	w.Watch([]string{"a"})
	w.update(1, "a", Up)
	w.Watch([]string{"b"})
	w.update(1, "a", Down) // no longer watched, still reported
	w.update(2, "b", Up)
	if g := got(); !reflect.DeepEqual(g, []change{{"a", Missing, Up}, {"a", Up, Down}, {"b", Missing, Up}}) {
		t.Fatalf("changes %v", g)
	}
	if w.State("a") != Down {
		t.Fatalf("state of an unwatched interface is still tracked: got %v", w.State("a"))
	}
}
