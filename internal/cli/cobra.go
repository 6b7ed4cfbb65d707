package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// UsageError marks an error as the caller's: bad usage, flags, input or
// configuration. Both commands exit 2 on one.
type UsageError struct{ Err error }

func (u UsageError) Error() string { return u.Err.Error() }
func (u UsageError) Unwrap() error { return u.Err }

// Usagef returns a UsageError with a formatted message.
func Usagef(format string, a ...any) error { return UsageError{fmt.Errorf(format, a...)} }

// housekeeping is the annotation of commands that need no Redis nor any
// configuration: version, help, completion.
const housekeeping = "shardmap/housekeeping"

// group is the annotation of a command that only shows its help: one with
// subcommands and no Run of its own.
const group = "shardmap/group"

// Housekeeping reports whether cmd is, or is under, a command that needs no
// Redis nor any configuration (version, help, completion and cobra's hidden
// __complete), or is a group that only shows its help: a PersistentPreRunE
// that opens connections skips those.
func Housekeeping(cmd *cobra.Command) bool {
	if cmd.Annotations[group] != "" {
		return true
	}
	for c := cmd; c != nil; c = c.Parent() {
		if c.Annotations[housekeeping] != "" || c.Name() == cobra.ShellCompRequestCmd || c.Name() == cobra.ShellCompNoDescRequestCmd {
			return true
		}
	}
	return false
}

// Conventions gives root, whose command tree is complete, what both
// shardmap commands share: SilenceUsage and SilenceErrors (main prints the
// error once, and exits 2 on a UsageError); --version (no shorthand) and a
// version subcommand printing Build.String; a flag error, an unknown
// command or a positional argument to a command that takes none is a
// UsageError naming it; cobra's help and completion (bash, zsh, fish,
// powershell) commands, created now so they carry examples and are
// Housekeeping. A command with subcommands and no Run shows its help when
// called alone.
func Conventions(root *cobra.Command) {
	name := root.Name()
	root.SilenceUsage, root.SilenceErrors = true, true
	root.Version = ReadBuild().String(name)
	root.SetVersionTemplate("{{.Version}}")
	root.Flags().Bool("version", false, "print the version and build info, and exit")
	// Now rather than at Execute, so that "-help" (the standard flag
	// package's form) can be told to be --help before parsing.
	root.InitDefaultHelpFlag()
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return UsageError{fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	root.AddCommand(&cobra.Command{
		Use:         "version",
		Short:       "Print the version and build info (VCS revision and time, modified checkout, Go version)",
		Example:     "  " + name + " version",
		Args:        NoArgs,
		Annotations: map[string]string{housekeeping: "version"},
		RunE: func(c *cobra.Command, _ []string) error {
			_, err := fmt.Fprint(c.OutOrStdout(), ReadBuild().String(name))
			return err
		},
	})
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	completionExamples := map[string]string{
		"bash":       "  source <(" + name + " completion bash)\n  " + name + " completion bash > /etc/bash_completion.d/" + name,
		"zsh":        "  " + name + " completion zsh > \"${fpath[1]}/_" + name + "\"",
		"fish":       "  " + name + " completion fish > ~/.config/fish/completions/" + name + ".fish",
		"powershell": "  " + name + " completion powershell | Out-String | Invoke-Expression",
	}
	for _, c := range root.Commands() {
		switch c.Name() {
		case "help":
			c.Example = "  " + name + " help\n  " + name + " help version"
			c.Annotations = map[string]string{housekeeping: "help"}
		case "completion":
			c.Example = "  " + name + " completion bash > /etc/bash_completion.d/" + name + "\n  " + name + " completion fish > ~/.config/fish/completions/" + name + ".fish"
			c.Annotations = map[string]string{housekeeping: "completion"}
			for _, sh := range c.Commands() {
				sh.Example = completionExamples[sh.Name()]
			}
		}
	}
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasSubCommands() {
			if c.Args == nil {
				c.Args = NoArgs
			}
			if !c.Runnable() {
				c.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
				if c.Annotations == nil {
					c.Annotations = map[string]string{}
				}
				c.Annotations[group] = "help"
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// NoArgs is cobra.NoArgs as a UsageError: an argument to a command with
// subcommands is an unknown command, to any other a stray argument.
func NoArgs(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if c.HasSubCommands() {
		hint := ""
		if s := c.SuggestionsFor(args[0]); len(s) > 0 {
			hint = " (did you mean " + strings.Join(s, " or ") + "?)"
		}
		return Usagef("unknown command %q for %q%s (see '%s --help')", args[0], c.CommandPath(), hint, c.CommandPath())
	}
	return Usagef("%s takes no arguments, got %q (see '%s --help')", c.CommandPath(), args, c.CommandPath())
}

// WalkCommands calls fn on root and every command under it that is not
// hidden.
func WalkCommands(root *cobra.Command, fn func(*cobra.Command)) {
	if root.Hidden {
		return
	}
	fn(root)
	for _, c := range root.Commands() {
		WalkCommands(c, fn)
	}
}
