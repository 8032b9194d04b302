package cli

import (
	"cmp"
	"context"
	"fmt"

	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

const migrateUsage = `Usage: rsvp migrate --engine postgres://...

Create or upgrade rsvp's tables in a PostgreSQL database (schema "rsvp",
or that of the URL's schema=NAME parameter) and exit. The other rsvp
commands that open a PostgreSQL engine do this themselves, but for 'rsvp
queues' and 'rsvp requests', which only read and refuse a schema missing
or older than this rsvp. Run it on its own to migrate ahead of a
deployment, with privileges the applications need not have. Concurrent
runs are safe (an advisory lock serialises them). A schema made by a
newer rsvp is refused.

Example:
  rsvp migrate --engine 'postgres://admin@db.internal:5432/shop'
`

func runMigrate(ctx context.Context, e *env, cmd *command, args []string) error {
	flags := e.newFlagSet(cmd)
	pos, err := e.parse(flags, cmd, args)
	if err != nil {
		return err
	}
	if err := exactArgs(pos); err != nil {
		return err
	}
	spec, err := engineFlag(flags)
	if err != nil {
		return err
	}
	if spec.pg == "" {
		return usagef("engine %s is not a PostgreSQL database: only postgres://... engines have tables to migrate", spec.raw)
	}
	if err := rsvppg.Migrate(ctx, spec.pg, spec.pgOptions(nil)); err != nil {
		return fmt.Errorf("migrate %s: %w", spec.raw, err)
	}
	fmt.Fprintf(e.stdout, "rsvp migrate: schema %s of %s is at version %d\n", cmp.Or(spec.schema, "rsvp"), spec.raw, rsvppg.SchemaVersion)
	return nil
}
