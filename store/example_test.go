package store_test

import (
	"fmt"

	"vbcache/store"
)

func ExampleStore() {
	s, err := store.New(store.Config{MemoryLimit: 16 << 20})
	if err != nil {
		panic(err)
	}
	defer s.Close()

	cas, _ := s.Set(store.ModeSet, []byte("greeting"), []byte("hello"), 42, 0, 0, 0)
	s.Set(store.ModeAppend, []byte("greeting"), []byte(", world"), 0, 0, 0, 0)

	// Get appends to dst, so a caller can reuse one buffer for many reads.
	buf := make([]byte, 0, 64)
	buf, meta, ok := s.Get([]byte("greeting"), buf[:0])
	fmt.Println(string(buf), meta.Flags, ok, meta.CAS > cas)

	// A CAS that no longer matches is refused.
	_, err = s.Set(store.ModeSet, []byte("greeting"), []byte("bye"), 0, 0, 0, cas)
	fmt.Println(err)

	n, _, _ := s.Arith([]byte("hits"), true, 1, 10, 0, true, 0)
	fmt.Println(n)
	n, _, _ = s.Arith([]byte("hits"), true, 5, 0, 0, false, 0)
	fmt.Println(n)
	// Output:
	// hello, world 42 true true
	// store: key exists
	// 10
	// 15
}
