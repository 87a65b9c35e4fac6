//go:build !linux

package server

// Event loops are Linux-only (loop_linux.go); elsewhere every connection
// has a goroutine of its own.

type eventLoop struct{}

type loopIO struct{}

const loopPipeline = 8

func startLoops(*Server) []*eventLoop { return nil }

func (*eventLoop) add(*conn) bool { return false }

func (s *Server) wakeLoops() {}

func (*eventLoop) held() int { return 0 }

func (*eventLoop) stats() *reqStats { return nil }
