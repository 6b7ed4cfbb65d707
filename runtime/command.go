package runtime

import (
	"errors"
	"strings"
)

// CommandError names the Runtime API command whose sending or reply failed,
// so that callers can count failures by command (metrics) without parsing
// error text. It wraps the error as it was before: its text is unchanged and
// every errors.Is check on the sentinels above still holds.
//
// Cmd is one of a small fixed set: show_info, show_backend, show_map,
// show_stat, show_servers, add_map, set_map, del_map, clear_map, prepare,
// commit, prompt (opening the long-lived connection), add_server,
// set_server, del_server, or other. Errors that no command caused (a word
// refused by CheckWord, the write guard, a context cancelled while waiting
// for another map write) are not CommandErrors.
type CommandError struct {
	Cmd string
	Err error
}

func (e *CommandError) Error() string { return e.Err.Error() }
func (e *CommandError) Unwrap() error { return e.Err }

// CommandOf returns the command err came from ("" when it carries none).
func CommandOf(err error) string {
	var ce *CommandError
	if errors.As(err, &ce) {
		return ce.Cmd
	}
	return ""
}

// withCmd wraps err in a CommandError for cmd (a command line or a name
// from the set above), unless it already carries one.
func withCmd(cmd string, err error) error {
	if err == nil {
		return nil
	}
	var ce *CommandError
	if errors.As(err, &ce) {
		return err
	}
	return &CommandError{Cmd: commandName(cmd), Err: err}
}

// commandName maps a command line (or an already short name) to its name
// in CommandError's set.
func commandName(cmd string) string {
	line, _, _ := strings.Cut(cmd, "\n")
	f := strings.Fields(line)
	if len(f) == 1 {
		switch f[0] {
		case "show_info", "show_backend", "show_map", "show_stat", "show_servers", "add_map", "set_map", "del_map",
			"clear_map", "prepare", "commit", "prompt", "add_server", "set_server", "del_server":
			return f[0]
		}
	}
	switch {
	case len(f) == 0:
		return "other"
	case f[0] == "prompt":
		return "prompt"
	case f[0] == "prepare" && len(f) > 1 && f[1] == "map":
		return "prepare"
	case f[0] == "commit" && len(f) > 1 && f[1] == "map":
		return "commit"
	case len(f) > 1 && f[1] == "map" && (f[0] == "show" || f[0] == "add" || f[0] == "set" || f[0] == "del" || f[0] == "clear"):
		return f[0] + "_map"
	case len(f) > 1 && f[1] == "server" && (f[0] == "add" || f[0] == "set" || f[0] == "del"):
		return f[0] + "_server"
	case len(f) > 1 && f[0] == "show" && (f[1] == "info" || f[1] == "backend" || f[1] == "stat" || f[1] == "servers"):
		return "show_" + f[1]
	}
	return "other"
}
