package suite

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
)

// goBench is one line of go test -bench output.
type goBench struct {
	Pkg, Name string
	Metrics   []string // "value unit" pairs after the iteration count
}

// parseGoTest reads go test -bench output: "pkg: ..." lines name the
// package of the Benchmark lines that follow. Other lines are skipped.
func parseGoTest(data []byte) []goBench {
	var out []goBench
	pkg := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		b := goBench{Pkg: pkg, Name: f[0]}
		for i := 2; i+1 < len(f); i += 2 {
			b.Metrics = append(b.Metrics, f[i]+" "+f[i+1])
		}
		out = append(out, b)
	}
	return out
}

func readGoTest(path string) ([]goBench, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("-gotest: %w", err)
	}
	return parseGoTest(data), nil
}
