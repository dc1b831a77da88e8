package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
)

// maxNote bounds a note read from a file (strace summaries are a few KB).
const maxNote = 64 << 10

// noteCmd prints a non-result record, so that run.sh never has to quote
// JSON by hand.
func noteCmd(args []string) error {
	fs := flag.NewFlagSet("note", flag.ContinueOnError)
	var r Record
	fs.StringVar(&r.Kind, "kind", "meta", "meta | strace | skip | note")
	fs.StringVar(&r.Subject, "subject", "", "subject the record is about")
	fs.StringVar(&r.Test, "test", "", "test the record is about (skip: * for all)")
	fs.StringVar(&r.Key, "key", "", "name of a meta value")
	value := fs.String("value", "", "text of the record")
	file := fs.String("file", "", "read the text of the record from this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch r.Kind {
	case "meta", "strace", "skip", "note":
	default:
		return fmt.Errorf("-kind %q: want meta, strace, skip or note", r.Kind)
	}
	r.Text = *value
	if *file != "" {
		b, err := os.ReadFile(*file)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if len(b) > maxNote {
			b = append(b[:maxNote], "\n[truncated]\n"...)
		}
		r.Text = string(b)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Printf("%s\n", b)
	return err
}
