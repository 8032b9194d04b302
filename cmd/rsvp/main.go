// Command rsvp sends requests, awaits replies and runs workers on an rsvp
// engine. Run 'rsvp help' for its commands.
package main

import (
	"os"

	"github.com/rsvp-go/rsvp/internal/cli"
)

func main() {
	// The first SIGINT or SIGTERM starts a graceful stop; a second ends
	// the command at once (cli.Main).
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
