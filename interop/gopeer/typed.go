package main

// Typed JSON: Go's encoding/json of a Request or GetResponse, except that every
// interface{} value (in ExtraInfo and Params, and nested inside []interface {} and
// map[string]interface {}) is written as {"$type": T, "$value": V}, where T is the Go
// type as %T prints it ("int8", "[]uint8", "[]interface {}", ...) and V is Go's JSON of
// the value, nested interface values typed again. So the exact Go type of every value
// is part of the expected JSON, and the reverse direction can rebuild exactly those
// types.
//
// Details that follow from Go's decoding and JSON:
//   - gob never sends an empty map or slice field, so Go decodes them as nil: null.
//   - Inside an interface an empty []uint8 or []string arrives as a nil slice: null. An
//     empty []interface {} or map[string]interface {} is rebuilt here: [] and {}.
//   - []uint8 is base64, as encoding/json writes byte slices.
//   - A nil interface value is {"$type": "", "$value": null} ("" is gob's name for it;
//     "<nil>" is accepted when reading).
//   - NaN, infinities and complex numbers have no JSON form: converting them is an error.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
)

// typed is one interface{} value with its Go type.
type typed struct {
	Type  string      `json:"$type"`
	Value interface{} `json:"$value"`
}

type typedNode struct {
	DC        string
	Service   string
	NID       string
	RPC       RPC
	ExtraInfo map[string]interface{}
}

type typedRequest struct {
	Action  string
	Node    typedNode
	Service string
	Params  map[string]interface{}
}

type typedGetResponse struct {
	Nodes []typedNode
}

// ---- Go value → typed JSON value ----

func typedOfRequest(r Request) (typedRequest, error) {
	n, err := typedOfNode(r.Node)
	if err != nil {
		return typedRequest{}, err
	}
	p, err := typedMap(r.Params)
	if err != nil {
		return typedRequest{}, fmt.Errorf("Params: %w", err)
	}
	return typedRequest{Action: r.Action, Node: n, Service: r.Service, Params: p}, nil
}

func typedOfGetResponse(g GetResponse) (typedGetResponse, error) {
	var out typedGetResponse
	if g.Nodes == nil {
		return out, nil
	}
	out.Nodes = make([]typedNode, 0, len(g.Nodes))
	for i, n := range g.Nodes {
		t, err := typedOfNode(n)
		if err != nil {
			return out, fmt.Errorf("Nodes[%d]: %w", i, err)
		}
		out.Nodes = append(out.Nodes, t)
	}
	return out, nil
}

func typedOfNode(n Node) (typedNode, error) {
	x, err := typedMap(n.ExtraInfo)
	if err != nil {
		return typedNode{}, fmt.Errorf("ExtraInfo: %w", err)
	}
	return typedNode{DC: n.DC, Service: n.Service, NID: n.NID, RPC: n.RPC, ExtraInfo: x}, nil
}

// typedMap keeps a nil map nil (Go's JSON: null).
func typedMap(m map[string]interface{}) (map[string]interface{}, error) {
	if m == nil {
		return nil, nil
	}
	out := make(map[string]interface{}, len(m))
	for k, v := range m {
		t, err := typedValue(v)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", k, err)
		}
		out[k] = t
	}
	return out, nil
}

func typedValue(v interface{}) (typed, error) {
	switch x := v.(type) {
	case nil:
		return typed{"", nil}, nil
	case []interface{}:
		out := make([]interface{}, 0, len(x))
		for i, e := range x {
			t, err := typedValue(e)
			if err != nil {
				return typed{}, fmt.Errorf("[%d]: %w", i, err)
			}
			out = append(out, t)
		}
		return typed{"[]interface {}", out}, nil
	case map[string]interface{}:
		out := make(map[string]interface{}, len(x))
		for k, e := range x {
			t, err := typedValue(e)
			if err != nil {
				return typed{}, fmt.Errorf("%q: %w", k, err)
			}
			out[k] = t
		}
		return typed{"map[string]interface {}", out}, nil
	}
	if err := jsonable(reflect.ValueOf(v)); err != nil {
		return typed{}, err
	}
	return typed{fmt.Sprintf("%T", v), v}, nil
}

// jsonable refuses what Go's JSON cannot write, with a clear message.
func jsonable(v reflect.Value) error {
	switch v.Kind() {
	case reflect.Float32, reflect.Float64:
		if f := v.Float(); math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("%s %v has no JSON form", v.Type(), f)
		}
	case reflect.Complex64, reflect.Complex128:
		return fmt.Errorf("%s has no JSON form", v.Type())
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			if err := jsonable(v.Index(i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// ---- typed JSON value → Go value ----

func requestOfTyped(t typedRequest) (Request, error) {
	n, err := nodeOfTyped(t.Node)
	if err != nil {
		return Request{}, err
	}
	p, err := untypedMap(t.Params)
	if err != nil {
		return Request{}, fmt.Errorf("Params: %w", err)
	}
	return Request{Action: t.Action, Node: n, Service: t.Service, Params: p}, nil
}

func getResponseOfTyped(t typedGetResponse) (GetResponse, error) {
	var out GetResponse
	if t.Nodes == nil {
		return out, nil
	}
	out.Nodes = make([]Node, 0, len(t.Nodes))
	for i, tn := range t.Nodes {
		n, err := nodeOfTyped(tn)
		if err != nil {
			return out, fmt.Errorf("Nodes[%d]: %w", i, err)
		}
		out.Nodes = append(out.Nodes, n)
	}
	return out, nil
}

func nodeOfTyped(t typedNode) (Node, error) {
	x, err := untypedMap(t.ExtraInfo)
	if err != nil {
		return Node{}, fmt.Errorf("ExtraInfo: %w", err)
	}
	return Node{DC: t.DC, Service: t.Service, NID: t.NID, RPC: t.RPC, ExtraInfo: x}, nil
}

func untypedMap(m map[string]interface{}) (map[string]interface{}, error) {
	if m == nil {
		return nil, nil
	}
	out := make(map[string]interface{}, len(m))
	for k, w := range m {
		v, err := untypedValue(w)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", k, err)
		}
		out[k] = v
	}
	return out, nil
}

// scalarTypes are the Go types a typed value may name besides the container types,
// with the slice of each (gob registers all of them itself).
var scalarTypes = map[string]reflect.Type{
	"bool":    reflect.TypeOf(false),
	"string":  reflect.TypeOf(""),
	"int":     reflect.TypeOf(int(0)),
	"int8":    reflect.TypeOf(int8(0)),
	"int16":   reflect.TypeOf(int16(0)),
	"int32":   reflect.TypeOf(int32(0)),
	"int64":   reflect.TypeOf(int64(0)),
	"uint":    reflect.TypeOf(uint(0)),
	"uint8":   reflect.TypeOf(uint8(0)),
	"uint16":  reflect.TypeOf(uint16(0)),
	"uint32":  reflect.TypeOf(uint32(0)),
	"uint64":  reflect.TypeOf(uint64(0)),
	"uintptr": reflect.TypeOf(uintptr(0)),
	"float32": reflect.TypeOf(float32(0)),
	"float64": reflect.TypeOf(float64(0)),
}

// untypedValue rebuilds the Go value of one {"$type","$value"} object.
func untypedValue(w interface{}) (interface{}, error) {
	obj, ok := w.(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf(`expected {"$type": ..., "$value": ...}, got %s`, jsonText(w))
	}
	name, ok := obj["$type"].(string)
	if !ok {
		return nil, fmt.Errorf(`no string "$type" in %s`, jsonText(w))
	}
	val := obj["$value"]
	switch name {
	case "", "<nil>":
		if val != nil {
			return nil, fmt.Errorf("a nil interface has no value: %s", jsonText(w))
		}
		return nil, nil
	case "[]uint8":
		if val == nil {
			return []byte(nil), nil
		}
		s, ok := val.(string)
		if !ok {
			return nil, fmt.Errorf("[]uint8 wants base64 text, got %s", jsonText(val))
		}
		return base64.StdEncoding.DecodeString(s)
	case "[]interface {}":
		if val == nil {
			return []interface{}(nil), nil
		}
		items, ok := val.([]interface{})
		if !ok {
			return nil, fmt.Errorf("[]interface {} wants an array, got %s", jsonText(val))
		}
		out := make([]interface{}, 0, len(items))
		for i, e := range items {
			v, err := untypedValue(e)
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			out = append(out, v)
		}
		return out, nil
	case "map[string]interface {}":
		if val == nil {
			return map[string]interface{}(nil), nil
		}
		m, ok := val.(map[string]interface{})
		if !ok {
			return nil, fmt.Errorf("map[string]interface {} wants an object, got %s", jsonText(val))
		}
		out, err := untypedMap(m)
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = map[string]interface{}{}
		}
		return out, nil
	}
	if t, ok := scalarTypes[name]; ok {
		v, err := scalar(t, val)
		if err != nil {
			return nil, err
		}
		return v.Interface(), nil
	}
	if len(name) > 2 && name[:2] == "[]" {
		if t, ok := scalarTypes[name[2:]]; ok {
			st := reflect.SliceOf(t)
			if val == nil {
				return reflect.Zero(st).Interface(), nil
			}
			items, ok := val.([]interface{})
			if !ok {
				return nil, fmt.Errorf("%s wants an array, got %s", name, jsonText(val))
			}
			out := reflect.MakeSlice(st, 0, len(items))
			for i, e := range items {
				v, err := scalar(t, e)
				if err != nil {
					return nil, fmt.Errorf("%s[%d]: %w", name, i, err)
				}
				out = reflect.Append(out, v)
			}
			return out.Interface(), nil
		}
	}
	return nil, fmt.Errorf("unsupported $type %q", name)
}

// scalar converts one JSON value (numbers as json.Number) to Go type t, refusing values
// out of t's range.
func scalar(t reflect.Type, val interface{}) (reflect.Value, error) {
	out := reflect.New(t).Elem()
	switch t.Kind() {
	case reflect.Bool:
		b, ok := val.(bool)
		if !ok {
			return out, fmt.Errorf("bool wants true or false, got %s", jsonText(val))
		}
		out.SetBool(b)
		return out, nil
	case reflect.String:
		s, ok := val.(string)
		if !ok {
			return out, fmt.Errorf("string wants a string, got %s", jsonText(val))
		}
		out.SetString(s)
		return out, nil
	}
	num, ok := val.(json.Number)
	if !ok {
		return out, fmt.Errorf("%s wants a number, got %s", t, jsonText(val))
	}
	s := string(num)
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		i, err := strconv.ParseInt(s, 10, t.Bits())
		if err != nil {
			return out, fmt.Errorf("%s: %w", t, err)
		}
		out.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		u, err := strconv.ParseUint(s, 10, t.Bits())
		if err != nil {
			return out, fmt.Errorf("%s: %w", t, err)
		}
		out.SetUint(u)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(s, t.Bits())
		if err != nil {
			return out, fmt.Errorf("%s: %w", t, err)
		}
		out.SetFloat(f)
	default:
		return out, fmt.Errorf("unsupported type %s", t)
	}
	return out, nil
}

func jsonText(v interface{}) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%v", v)
	}
	return string(b)
}
