package config

import (
	"cmp"
	"errors"
	"fmt"
	"reflect"
	"strings"
)

// Expand replaces references to environment variables in s, as the
// OpenTelemetry Collector's configuration does: ${env:NAME} and ${NAME}
// are NAME's value, $$ is a literal $, and any other $ stays as it is (a
// secret holding a $ is kept whole). A variable that is unset or empty is
// an error, not an empty string: an empty API key fails later and less
// clearly.
func Expand(s string, getenv func(string) string) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	for {
		i := strings.IndexByte(s, '$')
		if i < 0 || i == len(s)-1 {
			b.WriteString(s)
			return b.String(), nil
		}
		b.WriteString(s[:i])
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			s = s[i+2:]
			continue
		case '{':
		default:
			b.WriteByte('$')
			s = s[i+1:]
			continue
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", fmt.Errorf("%q: ${ without a closing }", s[i:])
		}
		ref := s[i+2 : i+end]
		name, ok := strings.CutPrefix(ref, "env:")
		if !ok && strings.Contains(ref, ":") {
			return "", fmt.Errorf("${%s}: only ${env:NAME} and ${NAME} are supported", ref)
		}
		if !validName(name) {
			return "", fmt.Errorf("${%s}: %q is not a variable name (letters, digits, _; not starting with a digit)", ref, name)
		}
		v := getenv(name)
		if v == "" {
			return "", fmt.Errorf("${%s}: variable %s is not set", ref, name)
		}
		b.WriteString(v)
		s = s[i+end+1:]
	}
}

func validName(n string) bool {
	if n == "" || (n[0] >= '0' && n[0] <= '9') {
		return false
	}
	for _, c := range n {
		if c != '_' && !(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z') && !(c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// expandFields expands every string of v (a pointer to a struct): string
// fields, lists of strings, maps to strings, and the structs and maps of
// structs within, naming the field of each error with where.
func expandFields(where string, v reflect.Value, getenv func(string) string) error {
	var errs []error
	switch v.Kind() {
	case reflect.Pointer:
		return expandFields(where, v.Elem(), getenv)
	case reflect.Struct:
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			at := where + "." + cmp.Or(name, f.Name)
			if f.Anonymous {
				at = where // an embedded struct's keys are its container's
			}
			errs = append(errs, expandFields(at, v.Field(i), getenv))
		}
	case reflect.String:
		s, err := Expand(v.String(), getenv)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		v.SetString(s)
	case reflect.Slice:
		for i := range v.Len() {
			errs = append(errs, expandFields(fmt.Sprintf("%s[%d]", where, i), v.Index(i), getenv))
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			e := reflect.New(v.Type().Elem()).Elem()
			e.Set(v.MapIndex(k))
			errs = append(errs, expandFields(fmt.Sprintf("%s.%v", where, k), e, getenv))
			v.SetMapIndex(k, e)
		}
	}
	return errors.Join(errs...)
}
