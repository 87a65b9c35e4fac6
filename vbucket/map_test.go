package vbucket

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// smallMap is a valid map: 4 vbuckets over 3 servers with one replica.
func smallMap() *Map {
	return &Map{
		Rev:      7,
		Replicas: 1,
		Servers: []Server{
			{Name: "a", KV: "127.0.0.1:11210", HTTP: "127.0.0.1:8091"},
			{Name: "b", KV: "127.0.0.1:11211"},
			{Name: "c", KV: "127.0.0.1:11212"},
		},
		VBuckets: [][]int{{0, 1}, {1, 2}, {2, 0}, {0, -1}},
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(m *Map)
		want   string // part of the error; "" for valid
	}{
		{"valid", func(m *Map) {}, ""},
		{"valid forward", func(m *Map) { m.Forward = [][]int{{1, 0}, {1, 2}, {2, 0}, {0, 2}} }, ""},
		{"valid no replicas", func(m *Map) { m.Replicas = 0; m.VBuckets = [][]int{{0}, {1}, {-1}, {2}} }, ""},
		{"valid no servers", func(m *Map) { m.Servers = nil; m.VBuckets = [][]int{{-1, -1}} }, ""},
		{"no vbuckets", func(m *Map) { m.VBuckets = nil }, "outside"},
		{"count not a power of two", func(m *Map) { m.VBuckets = m.VBuckets[:3] }, "power of two"},
		{"negative replicas", func(m *Map) { m.Replicas = -1 }, "negative"},
		{"short row", func(m *Map) { m.VBuckets[2] = []int{2} }, "row 2 has 1 entries"},
		{"long row", func(m *Map) { m.VBuckets[1] = []int{1, 2, 0} }, "row 1 has 3 entries"},
		{"index too high", func(m *Map) { m.VBuckets[0][1] = 3 }, "row 0 entry 1 is 3"},
		{"index below -1", func(m *Map) { m.VBuckets[3][0] = -2 }, "row 3 entry 0 is -2"},
		{"server twice", func(m *Map) { m.VBuckets[1] = []int{2, 2} }, "row 1 holds server 2 twice"},
		{"duplicate name", func(m *Map) { m.Servers[2].Name = "a" }, `"a" appears twice`},
		{"forward too few rows", func(m *Map) { m.Forward = [][]int{{0, 1}} }, "forward has 1 rows"},
		{"forward short row", func(m *Map) { m.Forward = [][]int{{0, 1}, {1}, {2, 0}, {0, 1}} }, "forward row 1"},
		{"forward bad index", func(m *Map) { m.Forward = [][]int{{0, 1}, {1, 2}, {2, 9}, {0, 1}} }, "forward row 2 entry 1 is 9"},
		{"forward server twice", func(m *Map) { m.Forward = [][]int{{0, 1}, {1, 2}, {2, 0}, {1, 1}} }, "forward row 3 holds server 1 twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := smallMap()
			tc.change(m)
			err := m.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidMap) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want ErrInvalidMap saying %q", err, tc.want)
			}
		})
	}
}

func TestMapAccessors(t *testing.T) {
	m := smallMap()
	if got := m.NumVBuckets(); got != 4 {
		t.Errorf("NumVBuckets = %d, want 4", got)
	}
	for _, tc := range []struct {
		vb   uint16
		want int
	}{{0, 0}, {1, 1}, {2, 2}, {3, 0}, {4, -1}, {65535, -1}} {
		if got := m.Active(tc.vb); got != tc.want {
			t.Errorf("Active(%d) = %d, want %d", tc.vb, got, tc.want)
		}
	}
	m.VBuckets[3][0] = -1
	if got := m.Active(3); got != -1 {
		t.Errorf("Active of a row without active = %d, want -1", got)
	}
	for name, want := range map[string]int{"a": 0, "b": 1, "c": 2, "d": -1, "": -1} {
		if got := m.IndexOf(name); got != want {
			t.Errorf("IndexOf(%q) = %d, want %d", name, got, want)
		}
	}
	active, replica := m.Counts()
	if !slices.Equal(active, []int{1, 1, 1}) || !slices.Equal(replica, []int{1, 1, 1}) {
		t.Errorf("Counts = %v, %v; want [1 1 1], [1 1 1]", active, replica)
	}
	if a := testing.AllocsPerRun(100, func() { m.Active(2) }); a != 0 {
		t.Errorf("Active allocates %v times a call", a)
	}
}

func TestSamePlacement(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(m *Map)
		want   bool
	}{
		{"identical", func(m *Map) {}, true},
		{"other rev", func(m *Map) { m.Rev++ }, true},
		{"empty forward", func(m *Map) { m.Forward = [][]int{} }, true},
		{"replicas", func(m *Map) { m.Replicas = 2 }, false},
		{"server address", func(m *Map) { m.Servers[1].KV = "127.0.0.1:1" }, false},
		{"server http", func(m *Map) { m.Servers[1].HTTP = "127.0.0.1:1" }, false},
		{"fewer servers", func(m *Map) { m.Servers = m.Servers[:2] }, false},
		{"vbucket entry", func(m *Map) { m.VBuckets[3][1] = 2 }, false},
		{"forward", func(m *Map) { m.Forward = [][]int{{0, 1}, {1, 2}, {2, 0}, {0, 2}} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := smallMap(), smallMap()
			tc.change(b)
			if got := a.SamePlacement(b); got != tc.want {
				t.Errorf("a.SamePlacement(b) = %v, want %v", got, tc.want)
			}
			if got := b.SamePlacement(a); got != tc.want {
				t.Errorf("b.SamePlacement(a) = %v, want %v", got, tc.want)
			}
		})
	}
	var none *Map
	if none.SamePlacement(smallMap()) || smallMap().SamePlacement(nil) || !none.SamePlacement(nil) {
		t.Error("SamePlacement with nil maps")
	}
}

func TestBuild(t *testing.T) {
	servers := []Server{
		{Name: "node2", KV: "10.0.0.2:11210"},
		{Name: "node0", KV: "10.0.0.0:11210"},
		{Name: "node1", KV: "10.0.0.1:11210"},
	}
	given := slices.Clone(servers)
	m, err := Build(5, servers, 64, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(servers, given) {
		t.Error("Build reordered the caller's servers")
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	if m.Rev != 5 || m.Replicas != 1 || m.NumVBuckets() != 64 || len(m.Forward) != 0 {
		t.Errorf("Build = rev %d, replicas %d, %d vbuckets, forward %v", m.Rev, m.Replicas, m.NumVBuckets(), m.Forward)
	}
	if !slices.IsSortedFunc(m.Servers, func(a, b Server) int { return strings.Compare(a.Name, b.Name) }) {
		t.Errorf("servers not sorted by name: %v", m.Servers)
	}
	// The same set in another order builds the same map.
	slices.Reverse(servers)
	again, err := Build(5, servers, 64, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !m.SamePlacement(again) {
		t.Error("Build depends on the order of servers")
	}
	rows, _ := Place([]string{"node0", "node1", "node2"}, 64, 1, 0)
	if !slices.EqualFunc(m.VBuckets, rows, slices.Equal) {
		t.Error("Build's rows differ from Place over the sorted names")
	}
	if _, err := Build(1, append(servers, Server{Name: "node1"}), 64, 1, 0); !errors.Is(err, ErrDuplicate) {
		t.Errorf("Build with a duplicate name: %v", err)
	}
	if _, err := Build(1, nil, 64, 1, 0); !errors.Is(err, ErrNoMembers) {
		t.Errorf("Build without servers: %v", err)
	}
}
