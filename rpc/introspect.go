package rpc

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"
)

// ServiceInfo describes a service as one of its servers sees it: what the
// built-in method "_list" returns and what `loft ls` shows.
type ServiceInfo struct {
	Service string       `json:"service"`
	Node    string       `json:"node"`  // the server's node id
	Codec   string       `json:"codec"` // the service's codec; JSON is accepted too
	Methods []MethodInfo `json:"methods"`
}

// MethodInfo describes one procedure.
type MethodInfo struct {
	Name     string   `json:"name"`
	Request  TypeInfo `json:"request"`
	Response TypeInfo `json:"response"`
}

// TypeInfo describes an argument or result type.
type TypeInfo struct {
	// Go is the Go type, as in "calc.AddRequest".
	Go string `json:"go"`
	// JSON sketches the JSON form `loft call` takes and prints, as in
	// {"a": int, "b": int}.
	JSON string `json:"json"`
}

// Describe returns the description of the service: its methods sorted by
// name, with their argument and result types.
func (s *Server) Describe() ServiceInfo {
	ms := *s.methods.Load()
	info := ServiceInfo{Service: s.service, Node: s.node.ID(), Codec: s.opts.Codec.Name(), Methods: []MethodInfo{}}
	for _, m := range ms {
		info.Methods = append(info.Methods, MethodInfo{
			Name:     m.name,
			Request:  TypeInfo{Go: m.req.String(), JSON: jsonShape(m.req)},
			Response: TypeInfo{Go: m.resp.String(), JSON: jsonShape(m.resp)},
		})
	}
	sort.Slice(info.Methods, func(i, j int) bool { return info.Methods[i].Name < info.Methods[j].Name })
	return info
}

// Describe asks a server of the client's service for its description.
func (c *Client) Describe(ctx context.Context) (ServiceInfo, error) {
	out, err := c.CallJSON(ctx, "_list", []byte("{}"))
	if err != nil {
		return ServiceInfo{}, err
	}
	var info ServiceInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return ServiceInfo{}, localError(c.service, "_list", fmt.Errorf("decoding the description: %w", err))
	}
	return info, nil
}

var (
	timeType     = reflect.TypeFor[time.Time]()
	durationType = reflect.TypeFor[time.Duration]()
	jsonMarsh    = reflect.TypeFor[json.Marshaler]()
)

// jsonShape sketches the JSON form of t, a few levels deep.
func jsonShape(t reflect.Type) string {
	var b strings.Builder
	shape(&b, t, 0, map[reflect.Type]bool{})
	return b.String()
}

func shape(b *strings.Builder, t reflect.Type, depth int, seen map[reflect.Type]bool) {
	if t.Implements(protoMessage) {
		fmt.Fprintf(b, "%s (protobuf JSON)", t)
		return
	}
	switch {
	case t == timeType:
		b.WriteString("time (RFC 3339 string)")
		return
	case t == durationType:
		b.WriteString("duration (int nanoseconds)")
		return
	case t.Implements(jsonMarsh) || reflect.PointerTo(t).Implements(jsonMarsh):
		fmt.Fprintf(b, "%s (custom JSON)", t)
		return
	}
	if depth > 4 || seen[t] {
		b.WriteString(t.String())
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		shape(b, t.Elem(), depth, seen)
		b.WriteString(" or null")
	case reflect.Struct:
		seen[t] = true
		defer delete(seen, t)
		b.WriteString("{")
		n := 0
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name := f.Name
			if tag, ok := f.Tag.Lookup("json"); ok {
				tn, _, _ := strings.Cut(tag, ",")
				if tn == "-" {
					continue
				}
				if tn != "" {
					name = tn
				}
			}
			if n > 0 {
				b.WriteString(", ")
			}
			n++
			fmt.Fprintf(b, "%q: ", name)
			shape(b, f.Type, depth+1, seen)
		}
		b.WriteString("}")
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			b.WriteString("bytes (base64 string)")
			return
		}
		b.WriteString("[")
		shape(b, t.Elem(), depth+1, seen)
		b.WriteString(", ...]")
	case reflect.Array:
		fmt.Fprintf(b, "[%d × ", t.Len())
		shape(b, t.Elem(), depth+1, seen)
		b.WriteString("]")
	case reflect.Map:
		b.WriteString("{")
		shape(b, t.Key(), depth+1, seen)
		b.WriteString(": ")
		shape(b, t.Elem(), depth+1, seen)
		b.WriteString(", ...}")
	case reflect.Interface:
		b.WriteString("any")
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		b.WriteString("int")
	case reflect.Float32, reflect.Float64:
		b.WriteString("number")
	case reflect.Bool:
		b.WriteString("bool")
	case reflect.String:
		b.WriteString("string")
	default:
		b.WriteString(t.String())
	}
}
