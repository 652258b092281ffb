package rpc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"reflect"

	"github.com/fxamacker/cbor/v2"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Codec turns arguments and results into bytes and back. A service uses one
// codec, chosen by ServerOptions.Codec; its clients must use the same one
// (ClientOptions.Codec). Every server also accepts JSON, so that `loft call`
// can call any procedure without knowing its Go types. Whatever the codec,
// a server decodes a call's arguments only into the argument type
// registered for the method called. A Codec must be safe for concurrent use.
type Codec interface {
	// Name names the codec in errors and in introspection ("cbor").
	Name() string
	// Marshal encodes v.
	Marshal(v any) ([]byte, error)
	// Unmarshal decodes data into v, a non-nil pointer.
	Unmarshal(data []byte, v any) error
}

// The built-in codecs.
var (
	// CBOR (RFC 8949) is the default codec: compact, self-describing and
	// fast. It decodes with limits (DefaultCBORLimits) so that a small
	// hostile message cannot make the server allocate without bound.
	CBOR Codec = mustCBOR(CBORLimits{})
	// JSON is encoding/json, or protojson for protobuf messages. Every
	// server accepts it in addition to its own codec.
	JSON Codec = jsonCodec{}
	// Proto encodes protobuf messages (google.golang.org/protobuf): the
	// argument and result types of a Proto service's methods must be
	// pointers to generated message types, such as *pb.AddRequest.
	Proto Codec = protoCodec{}
)

// CBORLimits bound what a CBOR decoder accepts. The zero value of a field
// means its default in DefaultCBORLimits.
type CBORLimits struct {
	// MaxArrayElements bounds the elements of one array (16 or more).
	MaxArrayElements int
	// MaxMapPairs bounds the pairs of one map, struct fields included (16 or more).
	MaxMapPairs int
	// MaxNestedLevels bounds the nesting of arrays, maps and tags (4 to 65535).
	MaxNestedLevels int
}

// DefaultCBORLimits are the limits of the CBOR codec.
var DefaultCBORLimits = CBORLimits{MaxArrayElements: 64 << 10, MaxMapPairs: 16 << 10, MaxNestedLevels: 16}

// NewCBOR returns a CBOR codec with the given decoding limits. Duplicate
// map keys are refused.
func NewCBOR(l CBORLimits) (Codec, error) {
	d := DefaultCBORLimits
	if l.MaxArrayElements != 0 {
		d.MaxArrayElements = l.MaxArrayElements
	}
	if l.MaxMapPairs != 0 {
		d.MaxMapPairs = l.MaxMapPairs
	}
	if l.MaxNestedLevels != 0 {
		d.MaxNestedLevels = l.MaxNestedLevels
	}
	dm, err := cbor.DecOptions{
		MaxArrayElements: d.MaxArrayElements,
		MaxMapPairs:      d.MaxMapPairs,
		MaxNestedLevels:  d.MaxNestedLevels,
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
	}.DecMode()
	if err != nil {
		return nil, fmt.Errorf("rpc: CBOR limits: %w", err)
	}
	em, err := cbor.EncOptions{}.UserBufferEncMode()
	if err != nil {
		return nil, err
	}
	return &cborCodec{dm: dm, em: em}, nil
}

func mustCBOR(l CBORLimits) Codec {
	c, err := NewCBOR(l)
	if err != nil {
		panic(err)
	}
	return c
}

// wireCodec is what the built-in codecs add to Codec: an id on the wire,
// encoding into the caller's buffer, and a check of registered types.
type wireCodec interface {
	wireID() byte
	marshalTo(buf *bytes.Buffer, v any) error
	checkType(t reflect.Type) error
}

func codecID(c Codec) byte {
	if w, ok := c.(wireCodec); ok {
		return w.wireID()
	}
	return codecCustom
}

func marshalTo(c Codec, buf *bytes.Buffer, v any) error {
	if w, ok := c.(wireCodec); ok {
		return w.marshalTo(buf, v)
	}
	b, err := c.Marshal(v)
	buf.Write(b)
	return err
}

func checkType(c Codec, t reflect.Type) error {
	if w, ok := c.(wireCodec); ok {
		return w.checkType(t)
	}
	return nil
}

// checkPlain refuses types no data codec can carry.
func checkPlain(t reflect.Type) error {
	switch t.Kind() {
	case reflect.Chan, reflect.Func, reflect.UnsafePointer, reflect.Uintptr:
		return fmt.Errorf("rpc: %s cannot travel in a call", t)
	}
	return nil
}

type cborCodec struct {
	dm cbor.DecMode
	em cbor.UserBufferEncMode
}

func (*cborCodec) Name() string                         { return "cbor" }
func (c *cborCodec) Marshal(v any) ([]byte, error)      { return c.em.Marshal(v) }
func (c *cborCodec) Unmarshal(data []byte, v any) error { return c.dm.Unmarshal(data, v) }
func (*cborCodec) wireID() byte                         { return codecCBOR }
func (c *cborCodec) marshalTo(buf *bytes.Buffer, v any) error {
	return c.em.MarshalToBuffer(v, buf)
}
func (*cborCodec) checkType(t reflect.Type) error { return checkPlain(t) }

type jsonCodec struct{}

func (jsonCodec) Name() string { return "json" }

func (jsonCodec) Marshal(v any) ([]byte, error) {
	if m, ok := v.(proto.Message); ok {
		return protojson.Marshal(m)
	}
	return json.Marshal(v)
}

// Unmarshal refuses unknown fields and trailing data: a typo in a field
// name given to `loft call` is an error, not a zero value.
func (jsonCodec) Unmarshal(data []byte, v any) error {
	if m, err := protoTarget(v); err == nil {
		return protojson.Unmarshal(data, m)
	}
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if _, err := d.Token(); err != io.EOF {
		return fmt.Errorf("rpc: trailing data after the JSON value")
	}
	return nil
}

func (jsonCodec) wireID() byte { return codecJSON }

func (j jsonCodec) marshalTo(buf *bytes.Buffer, v any) error {
	b, err := j.Marshal(v)
	buf.Write(b)
	return err
}

func (jsonCodec) checkType(t reflect.Type) error { return checkPlain(t) }

type protoCodec struct{}

func (protoCodec) Name() string { return "proto" }

func (protoCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("rpc: proto codec: %T is not a proto.Message", v)
	}
	return proto.Marshal(m)
}

func (protoCodec) Unmarshal(data []byte, v any) error {
	m, err := protoTarget(v)
	if err != nil {
		return err
	}
	return proto.Unmarshal(data, m)
}

func (protoCodec) wireID() byte { return codecProto }

func (protoCodec) marshalTo(buf *bytes.Buffer, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("rpc: proto codec: %T is not a proto.Message", v)
	}
	b, err := proto.MarshalOptions{}.MarshalAppend(buf.AvailableBuffer(), m)
	if err != nil {
		return err
	}
	buf.Write(b)
	return nil
}

var protoMessage = reflect.TypeFor[proto.Message]()

func (protoCodec) checkType(t reflect.Type) error {
	if t.Kind() != reflect.Pointer || !t.Implements(protoMessage) {
		return fmt.Errorf("rpc: the proto codec carries pointers to protobuf messages, not %s", t)
	}
	return nil
}

// protoTarget returns the message v points to: v is a proto.Message, or a
// pointer to a (possibly nil) pointer to a message, which is allocated.
func protoTarget(v any) (proto.Message, error) {
	if m, ok := v.(proto.Message); ok {
		return m, nil
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer && !rv.IsNil() && rv.Elem().Kind() == reflect.Pointer && rv.Elem().Type().Implements(protoMessage) {
		el := rv.Elem()
		if el.IsNil() {
			el.Set(reflect.New(el.Type().Elem()))
		}
		return el.Interface().(proto.Message), nil
	}
	return nil, fmt.Errorf("rpc: %T is not a proto.Message or a pointer to one", v)
}
