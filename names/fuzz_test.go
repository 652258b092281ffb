package names

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// validFileName reports whether s can be one path component created by
// the registry: not empty, at most NAME_MAX bytes, no '/' or NUL, and not
// starting with '.' (so never ".", ".." or a temporary file).
func validFileName(s string) bool {
	return s != "" && len(s) <= maxFileName && !strings.ContainsAny(s, "/\x00") && s[0] != '.'
}

func TestEncodeNameExamples(t *testing.T) {
	for name, want := range map[string]string{
		"jobs":     "jobs",
		"a.b":      "a.b",
		".":        "%2E",
		"..":       "%2E.",
		".x":       "%2Ex",
		"a/b":      "a%2Fb",
		"a b":      "a%20b",
		"~":        "%7E",
		"%":        "%25",
		"é":        "%C3%A9",
		"Jobs_1-2": "Jobs_1-2",
	} {
		if got := encodeName(name); got != want {
			t.Errorf("encodeName(%q) = %q, want %q", name, got, want)
		}
		if got, ok := decodeName(want); !ok || got != name {
			t.Errorf("decodeName(%q) = %q, %v", want, got, ok)
		}
	}
	long := strings.Repeat("/", 100)
	if enc := encodeName(long); !strings.HasPrefix(enc, hashedPrefix) || len(enc) != 65 {
		t.Errorf("encodeName(100 slashes) = %q, want hashed", enc)
	}
	if enc := encodeName(strings.Repeat("/", 85)); enc != strings.Repeat("%2F", 85) {
		t.Errorf("encodeName(85 slashes) = %q, want escaped (255 bytes)", enc)
	}
	for _, bad := range []string{"", "%2e", "%41", "%4", "%", ".x", "~abc", "a%2", "%FF", "a/b"} {
		if got, ok := decodeName(bad); ok {
			t.Errorf("decodeName(%q) = %q, accepted a non-canonical form", bad, got)
		}
	}
}

// FuzzNameEncoding: every valid name encodes to one safe file name that
// decodes back to it (or is a hash), and every file name that decodes
// is the encoding of what it decodes to (so decoding is injective).
func FuzzNameEncoding(f *testing.F) {
	for _, s := range []string{"jobs", ".", "..", ".x", "a/b", "%41", "~", "日本", "\x00",
		strings.Repeat("é", 127), strings.Repeat("/", 85), strings.Repeat("/", 86), "%2E.", "~" + strings.Repeat("0", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if checkName(s) == nil {
			enc := encodeName(s)
			if !validFileName(enc) {
				t.Fatalf("encodeName(%q) = %q: not a safe file name", s, enc)
			}
			if strings.HasPrefix(enc, hashedPrefix) {
				if escapedLen(s) <= maxFileName {
					t.Fatalf("encodeName(%q) hashed a name that fits", s)
				}
			} else if dec, ok := decodeName(enc); !ok || dec != s {
				t.Fatalf("decodeName(encodeName(%q)) = %q, %v", s, dec, ok)
			}
		} else if utf8.ValidString(s) && s != "" && len(s) <= MaxNameLen {
			t.Fatalf("checkName(%q) refused a valid name", s)
		}
		if dec, ok := decodeName(s); ok {
			if encodeName(dec) != s || checkName(dec) != nil {
				t.Fatalf("decodeName(%q) = %q, which encodes to %q", s, dec, encodeName(dec))
			}
		}
		if checkID(s) == nil && !validFileName(s+fileExt) {
			t.Fatalf("node ID %q makes an unsafe file name", s)
		}
	})
}

// FuzzParseFiles feeds arbitrary bytes to the node and binding file
// parsers, and to a registry as the content of such files: nothing panics,
// and nothing unlocked is ever returned as live.
func FuzzParseFiles(f *testing.F) {
	nf, _ := json.Marshal(nodeFile{NodeInfo: NodeInfo{ID: "n1", PID: 42, Host: "h", Addrs: []string{"unix:///x"},
		Started: time.Unix(1, 0).UTC()}, Token: "tok"})
	hf, _ := json.Marshal(holderFile{Name: "jobs", Node: "n1", Token: "tok", Meta: map[string]string{"kind": "channel"}})
	for _, b := range [][]byte{nf, hf, nil, []byte("null"), []byte("{}"), []byte(`{"id":1}`),
		[]byte(`{"meta":{"a":1}}`), []byte(`{"started":"yesterday"}`), []byte("\xff\xfe"), []byte(`{"name":"jobs","node":"n1","token":"tok","meta":null}`)} {
		f.Add(b)
	}
	reg, err := Open(f.TempDir() + "/loft")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if n, err := parseNodeFile(data); err == nil {
			if checkID(n.ID) != nil || n.Token == "" {
				t.Fatalf("parseNodeFile accepted %+v", n)
			}
		}
		if h, err := parseHolderFile(data); err == nil {
			if checkID(h.Node) != nil || checkName(h.Name) != nil || h.Token == "" {
				t.Fatalf("parseHolderFile accepted %+v", h)
			}
		}
		// The same bytes as an unlocked node file and as a binding.
		write := func(p string) {
			if err := writeFileAtomic(p, "n1"+fileExt, data); err != nil {
				t.Fatal(err)
			}
		}
		if err := ensureSubdir(reg.Dir(), "names/jobs"); err != nil {
			t.Fatal(err)
		}
		write(reg.Dir() + "/nodes")
		write(reg.Dir() + "/names/jobs")
		if hs, err := reg.Lookup("jobs"); err != nil || len(hs) != 0 {
			t.Fatalf("Lookup = %+v, %v", hs, err)
		}
		if l, err := reg.List(); err != nil || len(l) != 0 {
			t.Fatalf("List = %+v, %v", l, err)
		}
		if ns, err := reg.Nodes(); err != nil || len(ns) != 0 {
			t.Fatalf("Nodes = %+v, %v", ns, err)
		}
	})
}
