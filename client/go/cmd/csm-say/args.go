package main

import (
	"flag"
	"fmt"
	"runtime/debug"
	"strings"
)

// parseInterleaved parses flags wherever they appear, before or after the text
// ("csm-say hello -o a.wav" honours -o), which Go's flag package alone does not: it stops at
// the first non-flag argument. Everything after a "--" is text, even when it starts with "-".
// It returns the text arguments in order.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var text []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(text, rest...), nil
		}
		i := 0
		for i < len(rest) && !isFlag(rest[i]) {
			i++
		}
		text = append(text, rest[:i]...)
		if i == len(rest) {
			return text, nil
		}
		args = rest[i:]
	}
}

// isFlag: "-x" and "--x" are flags, "-" (stdin) and plain words are not. "--" is handled by
// fs.Parse, which ends flag parsing there.
func isFlag(arg string) bool {
	return len(arg) > 1 && strings.HasPrefix(arg, "-")
}

// version describes this build: the module version ("(devel)" for a build from a checkout)
// and, when built inside a git checkout, the commit it was built from.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "csm-say (Go) unknown version"
	}
	v := "csm-say (Go) " + info.Main.Version
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			v += fmt.Sprintf(", commit %.12s", s.Value)
		case "vcs.modified":
			if s.Value == "true" {
				v += " (modified)"
			}
		}
	}
	return v + ", " + info.GoVersion
}
