//go:build !linux

package server

import "net"

// wrapConn returns nc: raw system calls are Linux-only (rawio_linux.go).
func wrapConn(nc net.Conn) net.Conn { return nc }
