package rsvppg

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrationFiles are the schema migrations, NNNN_name.sql, applied in order.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

// migrations are the embedded migrations, sorted by version. A file whose
// name does not start with a number panics at init: that is a build error.
var migrations = mustLoadMigrations(migrationFiles)

func mustLoadMigrations(fsys fs.FS) []migration {
	ms, err := loadMigrations(fsys)
	if err != nil {
		panic(err)
	}
	return ms
}

func loadMigrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, name := range names {
		base := path.Base(name)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("rsvppg: migration %s: name must be NNNN_description.sql", name)
		}
		sql, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: base, sql: string(sql)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("rsvppg: migration %s: versions must run 1, 2, 3, ... without gaps", m.name)
		}
	}
	if len(ms) != SchemaVersion {
		return nil, fmt.Errorf("rsvppg: %d migrations embedded, but SchemaVersion is %d", len(ms), SchemaVersion)
	}
	return ms, nil
}

// SchemaVersion is the schema version this code writes and reads: the
// number of the last embedded migration.
const SchemaVersion = 4

// ErrSchemaTooNew: the schema was migrated by a newer rsvp than this one.
var ErrSchemaTooNew = errors.New("rsvppg: schema is newer than this rsvp")

// ErrSchemaNotReady: Options.SkipMigrate is set, and the schema is missing
// or older than SchemaVersion.
var ErrSchemaNotReady = errors.New("rsvppg: schema not migrated")

// Migrate creates or upgrades the schema opts.Schema in the database at url
// and returns. Open does the same, so calling Migrate is only needed where
// the application's own database user may not change the schema: run it
// once with a privileged user (rsvp migrate) before the applications start.
// Concurrent calls, in any processes, are safe: they take turns under an
// advisory lock, and all but the first find nothing to do.
func Migrate(ctx context.Context, url string, opts Options) error {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return fmt.Errorf("rsvppg: %w", err)
	}
	ctx, cancel := withDefaultTimeout(ctx, opts.Timeout)
	defer cancel()
	cfg, err := poolConfig(url, opts, false)
	if err != nil {
		return err
	}
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("rsvppg: connect to %s: %w", Redact(url), err)
	}
	defer pool.Close()
	return migrate(ctx, pool, opts.Schema)
}

// migrate brings schema up to SchemaVersion. A schema at SchemaVersion
// costs one query; one behind is upgraded in a single transaction under an
// advisory lock; one ahead is refused with ErrSchemaTooNew.
func migrate(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	v, err := schemaVersion(ctx, pool, schema)
	if err == nil && v == SchemaVersion {
		return nil
	}
	if err != nil {
		return err
	}
	if v > SchemaVersion {
		return tooNew(schema, v)
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return migrateTx(ctx, tx, schema, SchemaVersion) })
}

// checkSchema fails unless schema is at SchemaVersion; it changes nothing.
func checkSchema(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	v, err := schemaVersion(ctx, pool, schema)
	switch {
	case err != nil:
		return err
	case v == 0:
		return fmt.Errorf("%w: the database has no rsvp schema %q (Migrate, or rsvp migrate, creates it)", ErrSchemaNotReady, schema)
	case v < SchemaVersion:
		return fmt.Errorf("%w: schema %q is at version %d, this rsvp reads version %d (Migrate, or rsvp migrate, upgrades it)",
			ErrSchemaNotReady, schema, v, SchemaVersion)
	case v > SchemaVersion:
		return tooNew(schema, v)
	}
	return nil
}

func tooNew(schema string, v int) error {
	return fmt.Errorf("%w: schema %q is at version %d, this rsvp knows versions up to %d; upgrade rsvp, or use another schema (Options.Schema, or schema=NAME in a postgres:// URL)",
		ErrSchemaTooNew, schema, v, SchemaVersion)
}

// schemaVersion returns the version recorded in schema, 0 if there is none.
func schemaVersion(ctx context.Context, pool *pgxpool.Pool, schema string) (int, error) {
	var table *string
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1)::text", ident(schema)+".schema_version").Scan(&table); err != nil {
		return 0, fmt.Errorf("rsvppg: read schema version of %q: %w", schema, err)
	}
	if table == nil {
		return 0, nil
	}
	var v int
	if err := pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+ident(schema)+".schema_version").Scan(&v); err != nil {
		return 0, fmt.Errorf("rsvppg: read schema version of %q: %w", schema, err)
	}
	return v, nil
}

// migrateTx applies the missing migrations up to version target in tx,
// holding an advisory lock on the schema name until tx ends. (target is
// below SchemaVersion only in tests, which make schemas of older versions.)
func migrateTx(ctx context.Context, tx pgx.Tx, schema string, target int) error {
	s := ident(schema)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("migrate", schema)); err != nil {
		return fmt.Errorf("rsvppg: lock schema %q for migration: %w", schema, err)
	}
	setup := "CREATE SCHEMA IF NOT EXISTS " + s + ";" +
		"CREATE TABLE IF NOT EXISTS " + s + ".schema_version (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());" +
		"SET LOCAL search_path TO " + s
	if _, err := tx.Exec(ctx, setup); err != nil {
		return fmt.Errorf("rsvppg: create schema %q: %w", schema, err)
	}
	var v int
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+s+".schema_version").Scan(&v); err != nil {
		return fmt.Errorf("rsvppg: read schema version of %q: %w", schema, err)
	}
	if v > SchemaVersion {
		return tooNew(schema, v)
	}
	for _, m := range migrations[min(v, target):target] {
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return fmt.Errorf("rsvppg: migrate schema %q to version %d (%s): %w", schema, m.version, m.name, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+s+".schema_version (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
			return fmt.Errorf("rsvppg: record schema version %d of %q: %w", m.version, schema, err)
		}
	}
	return nil
}

// lockKey is the advisory lock key for purpose in schema.
func lockKey(purpose, schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("rsvp:" + purpose + ":" + schema))
	return int64(h.Sum64())
}

// ident quotes a schema or channel name for SQL.
func ident(name string) string { return pgx.Identifier{name}.Sanitize() }
