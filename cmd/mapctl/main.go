// Command mapctl reads and changes shardmap's user -> shard assignments in
// Redis. See the README, or run mapctl --help.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/shardmap/shardmap/internal/cli"
	"github.com/shardmap/shardmap/maps"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // operational failure: Redis or HAProxy away, a timeout
	exitUsage = 2 // bad usage or input
)

func main() {
	root, a := newRoot()
	err := root.Execute()
	a.close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mapctl:", err)
	}
	os.Exit(exitCode(err))
}

// usageError marks an error as the caller's (exit 2).
type usageError = cli.UsageError

var usagef = cli.Usagef

func exitCode(err error) int {
	var u usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &u), errors.Is(err, maps.ErrInvalid):
		return exitUsage
	}
	return exitFail
}
