package server

import (
	"strconv"
	"testing"

	"vbcache/protocol"
)

// TestTotals: Totals agrees with STAT, and Ops counts every data command
// whatever its outcome.
func TestTotals(t *testing.T) {
	srv, addr := testServer(t, nil)
	c := dial(t, addr)
	c.do(frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 0))
	c.do(frame(protocol.OpGet, "k", "", nil, 1, 0))
	c.do(frame(protocol.OpGet, "nope", "", nil, 1, 0))
	c.do(frame(protocol.OpDelete, "nope", "", nil, 1, 0))
	c.do(frame(protocol.OpIncrement, "n", "", arithExtras(1, 0, 0), 1, 0))
	c.do(frame(protocol.OpTouch, "k", "", u32(0), 1, 0))
	c.do(frame(protocol.OpNoop, "", "", nil, 1, 0)) // not a data command

	got := srv.Totals()
	want := Totals{
		UptimeSeconds: got.UptimeSeconds, CmdGet: 2, GetHits: 1, GetMisses: 1, CmdSet: 1,
		Ops: 6, CurrItems: 2, Bytes: got.Bytes, LimitMaxBytes: 64 << 20, CurrConnections: 1,
	}
	if got != want {
		t.Errorf("Totals() = %+v\nwant        %+v", got, want)
	}
	stats := readStats(t, c, "")
	for name, v := range map[string]uint64{
		"cmd_get": got.CmdGet, "get_hits": got.GetHits, "cmd_set": got.CmdSet, "curr_items": got.CurrItems,
		"bytes": got.Bytes, "curr_connections": uint64(got.CurrConnections),
	} {
		if stats[name] != strconv.FormatUint(v, 10) {
			t.Errorf("STAT %s = %s, Totals says %d", name, stats[name], v)
		}
	}
}
