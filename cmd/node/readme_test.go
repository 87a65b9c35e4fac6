package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite README.md's table of flags from the flag set")

const (
	readme     = "../../README.md"
	tableBegin = "<!-- flags: generated from the flag set by `go test ./cmd/node -run TestREADMEFlags -update`; the test fails when they differ -->\n"
	tableEnd   = "<!-- end of flags -->\n"
)

// flagTable renders the flag set as README.md's Markdown table: flag,
// environment variable, default, meaning (the usage -h prints).
func flagTable(fs *flag.FlagSet) string {
	var b strings.Builder
	b.WriteString("| flag | environment | default | meaning |\n|---|---|---|---|\n")
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		env := envName(f.Name)
		usage = strings.TrimSuffix(usage, envUsage(env))
		name, envCell, def := "`-"+f.Name+"`", "", ""
		if arg != "" {
			name = "`-" + f.Name + " " + arg + "`"
		}
		if env != "" {
			envCell = "`" + env + "`"
		}
		if f.DefValue != "" && f.DefValue != "false" {
			def = "`" + f.DefValue + "`"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", name, envCell, def, strings.ReplaceAll(usage, "|", `\|`))
	})
	return b.String()
}

// TestREADMEFlags: README.md's table of flags is the one the flag set
// generates, so it cannot drift from -h.
func TestREADMEFlags(t *testing.T) {
	text, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(text)
	begin, end := strings.Index(doc, tableBegin), strings.Index(doc, tableEnd)
	if begin < 0 || end < begin {
		t.Fatalf("README.md lacks the lines\n%s...\n%s", tableBegin, tableEnd)
	}
	have := doc[begin+len(tableBegin) : end]
	want := flagTable(newFlagSet(new(options), io.Discard))
	if have == want {
		return
	}
	if *update {
		doc = doc[:begin+len(tableBegin)] + want + doc[end:]
		if err := os.WriteFile(readme, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log("README.md's table of flags rewritten")
		return
	}
	t.Errorf("README.md's table of flags differs from the flag set; run go test ./cmd/node -run TestREADMEFlags -update\nhave:\n%s\nwant:\n%s", have, want)
}
