package cli

import (
	"io"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/term"
)

// Log formats and the environment variables that set --log-format and
// --log-level.
const (
	LogText      = "text"
	LogJSON      = "json"
	LogAuto      = "auto"
	EnvLogFormat = "SHARDMAP_LOG_FORMAT"
	EnvLogLevel  = "SHARDMAP_LOG_LEVEL"
)

// NewLogger returns a slog logger writing to w in format (LogText, LogJSON,
// or LogAuto: text when w is a terminal, JSON otherwise, such as under
// systemd or a pipe) at level ("debug", "info", "warn" or "error", any
// case). An unknown format or level is a UsageError naming the flag.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "debug":
		lv = slog.LevelDebug
	case "info":
		lv = slog.LevelInfo
	case "warn", "warning":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		return nil, Usagef("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case LogAuto:
		if isTerminal(w) {
			return slog.New(slog.NewTextHandler(w, opts)), nil
		}
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case LogText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case LogJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, Usagef("--log-format %q: want %s, %s or %s", format, LogText, LogJSON, LogAuto)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// Levels lists the values of --log-level, for its help and completion.
var Levels = []string{"debug", "info", "warn", "error"}

// LogFormats lists the values of --log-format, for its help and completion.
var LogFormats = []string{LogText, LogJSON, LogAuto}
