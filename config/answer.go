package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// An auth backend (an HTTP hook, a directory) answers with the settings of
// the user it accepts: the keys of a [[users]] entry without name and
// passwords. They are validated here, by the same code as the file
// (validator.userSettings), after a round trip through the same TOML
// decoding, so an answer can carry exactly what a [[users]] entry can and
// a key added to [[users]] is a key of the answers without more code.

// answerKeys are the keys an answer may hold.
var answerKeys = func() map[string]bool {
	keys := tomlKeys(reflect.TypeOf(fileUser{}), "")
	// The name and the password are what the backend was asked about.
	// Quotas are answer keys too: they need [accounting] on this host,
	// like a [[users]] quota, and count this host's traffic only.
	for _, k := range []string{"name", "password", "password_hash"} {
		delete(keys, k)
	}
	return keys
}()

// AnswerKeys lists the keys an auth backend's answer may hold, sorted.
func AnswerKeys() []string {
	out := make([]string, 0, len(answerKeys))
	for k := range answerKeys {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// UserFromAnswer validates the settings a backend answered for the user
// name, by the rules of a [[users]] entry in c. Values may be those of
// encoding/json (with UseNumber), of TOML, or []string (the values of a
// directory attribute, converted by the key's type). Each error is a *Error whose
// Key is "egress.KEY".
func (c *Config) UserFromAnswer(name string, fields map[string]any) (User, error) {
	v := &validator{}
	clean := make(map[string]any, len(fields))
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		val := fields[k]
		if !answerKeys[k] {
			v.add("egress."+k, fmt.Sprint(val), "unknown key; valid: "+strings.Join(AnswerKeys(), ", "))
			continue
		}
		switch x := val.(type) {
		case nil:
			continue // JSON null: as if absent
		case json.Number:
			val = jsonNumber(x)
		case []string:
			// Directory attribute values: typed by the key.
			var err error
			if val, err = fromStrings(k, x); err != nil {
				v.errs = append(v.errs, err)
				continue
			}
			if val == nil {
				continue
			}
		}
		clean[k] = val
	}
	if len(v.errs) > 0 {
		return User{}, errors.Join(v.errs...)
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(clean); err != nil {
		return User{}, &Error{Key: "egress", Value: fmt.Sprint(fields), Reason: err.Error()}
	}
	var fu fileUser
	if _, err := toml.Decode(buf.String(), &fu); err != nil {
		// The decoder names the key ("last key \"mark\"") and the
		// type it wanted.
		return User{}, &Error{Key: "egress", Value: strings.TrimSpace(buf.String()), Reason: err.Error()}
	}
	key := func(k string) string { return "egress." + k }
	u := v.userSettings(key, fu, c)
	u.Name = name
	if len(v.errs) > 0 {
		return User{}, errors.Join(v.errs...)
	}
	return u, nil
}

// jsonNumber is n as an int64 when it is a whole number, else a float64
// (which no key accepts, so the decoding names the key).
func jsonNumber(n json.Number) any {
	if i, err := n.Int64(); err == nil {
		return i
	}
	f, err := n.Float64()
	if err != nil || math.IsInf(f, 0) {
		return string(n)
	}
	return f
}

// fromStrings types the string values of a directory attribute by the
// key's field in [[users]]: a list key (interfaces, source_ips) takes every
// value, an integer key one value parsed as a number, any other key one
// string. No value is nil: the key is absent.
func fromStrings(k string, vs []string) (any, error) {
	kind := answerKinds[k]
	bad := func(reason string) error {
		return &Error{Key: "egress." + k, Value: strings.Join(vs, ","), Reason: reason}
	}
	switch {
	case len(vs) == 0:
		return nil, nil
	case kind == reflect.Slice:
		return vs, nil
	case len(vs) > 1:
		return nil, bad("one value expected")
	}
	switch kind {
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(strings.TrimSpace(vs[0]), 10, 64)
		if err != nil {
			return nil, bad("not an integer")
		}
		return n, nil
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.ToLower(strings.TrimSpace(vs[0])))
		if err != nil {
			return nil, bad("not true or false")
		}
		return b, nil
	}
	return vs[0], nil
}

// answerKinds is the Go kind of each answer key's field in fileUser.
var answerKinds = func() map[string]reflect.Kind {
	out := map[string]reflect.Kind{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			if f.Anonymous && f.Tag.Get("toml") == "" {
				walk(f.Type)
				continue
			}
			if name := f.Tag.Get("toml"); answerKeys[name] {
				out[name] = f.Type.Kind()
			}
		}
	}
	walk(reflect.TypeOf(fileUser{}))
	return out
}()
