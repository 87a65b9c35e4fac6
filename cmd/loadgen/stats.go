package main

import (
	"context"
	"fmt"
	"time"

	"vbcache/protocol"
)

// stat is one STAT name and value.
type stat struct {
	Name, Value string
}

// fetchStats sends STAT (no group) to addr on a connection of its own and
// returns the statistics in the order the server sent them.
func fetchStats(ctx context.Context, addr string, timeout time.Duration) ([]stat, error) {
	var req []byte
	req = protocol.AppendHeader(req, protocol.MagicRequest, protocol.OpStat, 0, 0, protocol.DataTypeRaw, 0, 0, 1, 0)
	var stats []stat
	err := exchange(ctx, addr, timeout, req, func(resp *protocol.Request) (bool, error) {
		if resp.Opcode != protocol.OpStat {
			return false, fmt.Errorf("STAT: got a %v response", resp.Opcode)
		}
		if st := resp.Status(); st != protocol.StatusOK {
			return false, fmt.Errorf("STAT: status 0x%02x (%s)", uint16(st), st.Message())
		}
		if len(resp.Key) == 0 {
			return true, nil // the empty stat ends the list
		}
		stats = append(stats, stat{Name: string(resp.Key), Value: string(resp.Value)})
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	return stats, nil
}
