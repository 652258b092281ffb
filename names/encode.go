package names

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Limits on names and node IDs.
const (
	// MaxNameLen is the longest name, in bytes, that Bind and Lookup accept.
	MaxNameLen = 255
	// MaxIDLen is the longest node ID, in bytes, that Register accepts.
	MaxIDLen = 128

	// maxFileName is NAME_MAX on Linux: the longest single path component.
	maxFileName = 255
	// hashedPrefix starts the directory name of a name whose escaped form is
	// longer than maxFileName. The escaped form never contains '~' literally.
	hashedPrefix = "~"
)

const upperHex = "0123456789ABCDEF"

// checkID reports whether id can be used as a node ID: 1 to MaxIDLen bytes
// of [A-Za-z0-9._-], not starting with '.' (dot files are the registry's
// own temporary files, and "." and ".." are not file names).
func checkID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty node ID", ErrInvalidName)
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("%w: node ID of %d bytes is longer than %d", ErrInvalidName, len(id), MaxIDLen)
	}
	if id[0] == '.' {
		return fmt.Errorf("%w: node ID %q starts with '.'", ErrInvalidName, id)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isPlain(c) && c != '.' {
			return fmt.Errorf("%w: node ID %q: use only letters, digits, '.', '_' and '-'", ErrInvalidName, id)
		}
	}
	return nil
}

// checkName reports whether name can be bound: valid UTF-8 of 1 to
// MaxNameLen bytes. Any such name is accepted, including '/' and spaces.
func checkName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty name", ErrInvalidName)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: name of %d bytes is longer than %d", ErrInvalidName, len(name), MaxNameLen)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: name %q is not valid UTF-8", ErrInvalidName, name)
	}
	return nil
}

// isPlain reports whether c is kept as is by encodeName (anywhere in the name).
func isPlain(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

// encodeName maps a valid name (see checkName) to the one directory name
// under names/ that holds its bindings. Letters, digits, '_', '-' and '.'
// (except in first position) are kept; every other byte becomes %XX with
// upper-case hex. If the result would be longer than NAME_MAX, the
// directory is "~" followed by the hex SHA-256 of the name instead; such
// a directory cannot be decoded, and the name is read from its entries.
func encodeName(name string) string {
	if escapedLen(name) > maxFileName {
		sum := sha256.Sum256([]byte(name))
		return hashedPrefix + hex.EncodeToString(sum[:])
	}
	var b strings.Builder
	b.Grow(len(name))
	for i := 0; i < len(name); i++ {
		c := name[i]
		if isPlain(c) || c == '.' && i > 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(upperHex[c>>4])
		b.WriteByte(upperHex[c&15])
	}
	return b.String()
}

// escapedLen is the length of the escaped form of name.
func escapedLen(name string) int {
	n := 0
	for i := 0; i < len(name); i++ {
		if c := name[i]; isPlain(c) || c == '.' && i > 0 {
			n++
		} else {
			n += 3
		}
	}
	return n
}

// decodeName inverts encodeName for escaped (not hashed) directory names.
// It accepts only the canonical form, so distinct directory names never
// decode to the same name. ok is false for hashed names and for anything
// encodeName cannot have produced.
func decodeName(enc string) (name string, ok bool) {
	if enc == "" || len(enc) > maxFileName || strings.HasPrefix(enc, hashedPrefix) {
		return "", false
	}
	b := make([]byte, 0, len(enc))
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		if c != '%' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(enc) {
			return "", false
		}
		hi, lo := unhex(enc[i+1]), unhex(enc[i+2])
		if hi < 0 || lo < 0 {
			return "", false
		}
		b = append(b, byte(hi<<4|lo))
		i += 2
	}
	name = string(b)
	if checkName(name) != nil || encodeName(name) != enc {
		return "", false
	}
	return name, true
}

// unhex decodes one upper-case hex digit, or returns -1.
func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
