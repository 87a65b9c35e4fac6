package vbucket

import (
	"fmt"
	"slices"
	"strings"
)

// Server is one member of the map.
type Server struct {
	Name string `json:"name"`           // cluster (memberlist) node name, unique
	KV   string `json:"kv"`             // host:port of its memcached binary listener
	HTTP string `json:"http,omitempty"` // host:port of its HTTP listener; may be empty
}

// Map is one version of the cluster map. See the package comment for its
// invariants and for the rules on sharing one.
type Map struct {
	Rev      int64    `json:"rev"`
	Replicas int      `json:"replicas"`
	Servers  []Server `json:"servers"`
	VBuckets [][]int  `json:"vbuckets"`          // one row per vbucket: Replicas+1 entries, active first; entries index Servers; -1 = none
	Forward  [][]int  `json:"forward,omitempty"` // same shape; set only while a rebalance moves vbuckets
}

// NumVBuckets returns the number of vbuckets, the number of rows.
func (m *Map) NumVBuckets() int { return len(m.VBuckets) }

// Active returns the index in Servers of the server holding vb active, or
// -1 if none does or vb is out of range. It does not allocate.
func (m *Map) Active(vb uint16) int {
	if int(vb) >= len(m.VBuckets) || len(m.VBuckets[vb]) == 0 {
		return -1
	}
	return m.VBuckets[vb][0]
}

// IndexOf returns the index in Servers of the server with that Name, or -1.
func (m *Map) IndexOf(name string) int {
	for i := range m.Servers {
		if m.Servers[i].Name == name {
			return i
		}
	}
	return -1
}

// Validate checks the map's shape: the vbucket count is a power of two in
// [1, MaxVBuckets], Replicas is not negative, every row has Replicas+1
// entries, every entry is -1 or an index into Servers, no server appears
// twice in a row, Forward (when non-empty) has the same shape, and server
// names are unique. The error wraps ErrInvalidMap and names the first
// problem found.
func (m *Map) Validate() error {
	if err := CheckCount(len(m.VBuckets)); err != nil {
		return fmt.Errorf("%w: vbuckets: %w", ErrInvalidMap, err)
	}
	if m.Replicas < 0 {
		return fmt.Errorf("%w: replicas %d is negative", ErrInvalidMap, m.Replicas)
	}
	names := make(map[string]struct{}, len(m.Servers))
	for _, s := range m.Servers {
		if _, dup := names[s.Name]; dup {
			return fmt.Errorf("%w: server name %q appears twice", ErrInvalidMap, s.Name)
		}
		names[s.Name] = struct{}{}
	}
	if err := m.checkRows("vbuckets", m.VBuckets); err != nil {
		return err
	}
	if len(m.Forward) == 0 {
		return nil
	}
	if len(m.Forward) != len(m.VBuckets) {
		return fmt.Errorf("%w: forward has %d rows, vbuckets %d", ErrInvalidMap, len(m.Forward), len(m.VBuckets))
	}
	return m.checkRows("forward", m.Forward)
}

func (m *Map) checkRows(what string, rows [][]int) error {
	for vb, row := range rows {
		if len(row) != m.Replicas+1 {
			return fmt.Errorf("%w: %s row %d has %d entries, want %d", ErrInvalidMap, what, vb, len(row), m.Replicas+1)
		}
		for i, s := range row {
			if s < -1 || s >= len(m.Servers) {
				return fmt.Errorf("%w: %s row %d entry %d is %d, want -1 or an index below %d", ErrInvalidMap, what, vb, i, s, len(m.Servers))
			}
			if s >= 0 && slices.Contains(row[:i], s) {
				return fmt.Errorf("%w: %s row %d holds server %d twice", ErrInvalidMap, what, vb, s)
			}
		}
	}
	return nil
}

// SamePlacement reports whether m and o have equal Servers, Replicas,
// VBuckets and Forward, whatever their Revs. A nil Forward equals an empty
// one.
func (m *Map) SamePlacement(o *Map) bool {
	if m == nil || o == nil {
		return m == o
	}
	return m.Replicas == o.Replicas &&
		slices.Equal(m.Servers, o.Servers) &&
		slices.EqualFunc(m.VBuckets, o.VBuckets, slices.Equal) &&
		slices.EqualFunc(m.Forward, o.Forward, slices.Equal)
}

// Counts returns, per server index, how many vbuckets it holds active and
// how many it holds as a replica. Entries outside Servers are not counted.
func (m *Map) Counts() (active, replica []int) {
	active = make([]int, len(m.Servers))
	replica = make([]int, len(m.Servers))
	for _, row := range m.VBuckets {
		for i, s := range row {
			if s < 0 || s >= len(m.Servers) {
				continue
			}
			if i == 0 {
				active[s]++
			} else {
				replica[s]++
			}
		}
	}
	return active, replica
}

// Build returns a Map at rev over a copy of servers, sorted by Name, with n
// vbuckets placed by Place with replicas replica copies each, on at most
// partners other members per active member (0: any). The caller keeps
// servers.
func Build(rev int64, servers []Server, n, replicas, partners int) (*Map, error) {
	sorted := slices.Clone(servers)
	slices.SortFunc(sorted, func(a, b Server) int { return strings.Compare(a.Name, b.Name) })
	names := make([]string, len(sorted))
	for i, s := range sorted {
		names[i] = s.Name
	}
	rows, err := Place(names, n, replicas, partners)
	if err != nil {
		return nil, err
	}
	return &Map{Rev: rev, Replicas: replicas, Servers: sorted, VBuckets: rows}, nil
}
