// Package pgtest gives tests on the PostgreSQL engine a schema of their
// own on the server that RSVP_TEST_POSTGRES_URL names.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Schema returns the name of a schema no one uses on url, prefix and
// random hex, and drops it when t ends: after the cleanups registered
// later, such as closing the engine that uses it.
func Schema(t testing.TB, url, prefix string) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b) // never fails, per crypto/rand
	schema := prefix + hex.EncodeToString(b)
	t.Cleanup(func() { Drop(t, url, schema) })
	return schema
}

// Drop drops schema on url and everything in it, reporting a failure on t.
func Drop(t testing.TB, url, schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Errorf("drop schema %s: %v", schema, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		t.Errorf("drop schema %s: %v", schema, err)
	}
}
