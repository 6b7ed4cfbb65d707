package cli

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// Version, when set at link time (go build -ldflags "-X
// github.com/shardmap/shardmap/internal/cli.Version=v1.2.3"), is the version
// both commands report instead of the module version Go recorded.
var Version string

// Build is what a binary knows about its own build.
type Build struct {
	Version   string `json:"version"`            // Version if set, else the main module's version ("(devel)" when Go had none)
	Revision  string `json:"revision,omitempty"` // VCS revision, "" when not built from a checkout
	Time      string `json:"time,omitempty"`     // VCS commit time (RFC 3339), "" when unknown
	Modified  bool   `json:"modified"`           // the checkout had uncommitted changes
	GoVersion string `json:"go_version"`         // toolchain that built the binary
}

// ReadBuild returns the running binary's build info, from
// runtime/debug.ReadBuildInfo and Version.
func ReadBuild() Build {
	bi, _ := debug.ReadBuildInfo()
	return buildFrom(bi, Version)
}

// buildFrom reads bi (nil when the binary carries none) with override, the
// link-time version, taking precedence over the module's.
func buildFrom(bi *debug.BuildInfo, override string) Build {
	b := Build{Version: "(devel)", GoVersion: "unknown"}
	if bi != nil {
		if v := bi.Main.Version; v != "" {
			b.Version = v
		}
		if bi.GoVersion != "" {
			b.GoVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.time":
				b.Time = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if override != "" {
		b.Version = override
	}
	return b
}

// String is the text --version and the version command print for the
// command name: the version on the first line, then one "key: value" line
// each for the revision (with "(modified)" for a dirty checkout), the
// commit time and the Go version; unknown ones are left out.
func (b Build) String(name string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s %s\n", name, b.Version)
	if b.Revision != "" {
		dirty := ""
		if b.Modified {
			dirty = " (modified)"
		}
		fmt.Fprintf(&sb, "  revision: %s%s\n", b.Revision, dirty)
	}
	if b.Time != "" {
		fmt.Fprintf(&sb, "  time:     %s\n", b.Time)
	}
	fmt.Fprintf(&sb, "  go:       %s\n", b.GoVersion)
	return sb.String()
}
