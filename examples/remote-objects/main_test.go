package main

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestMain lets the test binary play the server process: client starts
// its own executable with the argument "server".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "server" {
		if err := server(context.Background()); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestExample runs the example: a callback and a pipelined chain through
// the generated proxies, between this process and a server child.
func TestExample(t *testing.T) {
	t.Setenv("LOFT_RUNTIME_DIR", "") // client sets its own
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := client(ctx); err != nil {
		t.Fatal(err)
	}
}
