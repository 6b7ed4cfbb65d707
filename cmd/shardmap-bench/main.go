// Command shardmap-bench runs shardmap's benchmark scenarios on loopback and
// writes docs/BENCHMARKS.md with its charts (make bench). The logic is in
// package bench/suite.
package main

import (
	"os"

	"github.com/shardmap/shardmap/bench/suite"
)

func main() { os.Exit(suite.Main(os.Args[1:], os.Stdout, os.Stderr)) }
