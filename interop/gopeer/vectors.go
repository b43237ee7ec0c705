package main

// vectors: golden gob messages written by Go's own encoder. For each vector NAME:
//   NAME.gob         the bytes of one fresh encoder in a fresh process (map entries in
//                    Go's random order)
//   NAME.json        encoding/json of the value as Go decodes NAME.gob (indented)
//   NAME.typed.json  the same as typed JSON (requests and get responses only)

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

type gobVector struct {
	name  string
	value interface{} // Request, Response or GetResponse
}

// everyType carries one value of every type a Go node may put into ExtraInfo or Params
// (each int and uint size, float32 and float64, bool, string, []uint8, []string),
// empty and nested []interface {} and map[string]interface {}, and extremes. v varies
// the values between vectors. (uintptr and slices of other scalars also cross gob, but
// are no ExtraInfo values anybody sends; decode and encode handle them all the same.)
func everyType(v int) map[string]interface{} {
	return map[string]interface{}{
		"bool":       v%2 == 0,
		"string":     fmt.Sprintf("ion ✓ %d", v),
		"string0":    "",
		"int":        -42 - v,
		"int8":       int8(-128),
		"int16":      int16(-32768 + v),
		"int32":      int32(-2147483648),
		"int64":      int64(-9223372036854775808),
		"uint":       uint(7 + v),
		"uint8":      uint8(255),
		"uint16":     uint16(65535),
		"uint32":     uint32(4294967295),
		"uint64":     uint64(18446744073709551615),
		"float32":    float32(-0.375),
		"float64":    0.1 + float64(v),
		"float64big": 6.02214076e23,
		"float64eps": 2.5e-9,
		"bytes":      []byte{0, 1, 127, 128, 255},
		"strings":    []string{"a", "", "ü"},
		"list": []interface{}{
			"x", int64(1), true, 2.5, []byte{7},
			map[string]interface{}{"deep": int8(3)},
			[]interface{}{uint16(2)},
		},
		"map": map[string]interface{}{
			"load":  0.5,
			"peers": int(12 + v),
			"tags":  []interface{}{"a", uint32(2)},
			"inner": map[string]interface{}{"ok": true, "f32": float32(1.5)},
		},
		"list0": []interface{}{},
		"map0":  map[string]interface{}{},
	}
}

// An SFU as ion registers it: no RPC params, no ExtraInfo.
func plainSFU(nid string) Node {
	return Node{DC: "dc1", Service: "rtc", NID: nid, RPC: RPC{Protocol: "nats-grpc", Addr: "nats://nats:4222"}}
}

// A node with every field set, non-ASCII identifiers included.
func fullNode() Node {
	return Node{
		DC:      "ap-south",
		Service: "rtc",
		NID:     "sfu-ñ東-3",
		RPC: RPC{
			Protocol: "nats-grpc",
			Addr:     "nats://10.1.2.3:4222",
			Params:   map[string]string{"user": "ion", "token": "s3cr3t"},
		},
		ExtraInfo: map[string]interface{}{
			"name":     "edge",
			"cpu":      0.5,
			"peers":    int64(12),
			"slots":    64,
			"draining": false,
			"cert":     []byte{0xde, 0xad, 0xbe, 0xef},
		},
	}
}

func gobVectors() []gobVector {
	typedNode := Node{
		DC: "dc2", Service: "rtc", NID: "sfu-typed",
		RPC:       RPC{Protocol: "nats-grpc", Addr: "nats://127.0.0.1:4222"},
		ExtraInfo: everyType(0),
	}
	return []gobVector{
		{"request_empty", Request{}},
		{"request_save_bare", Request{Action: ActionSave, Node: plainSFU("sfu-7Hq2xZ")}},
		{"request_save_typed", Request{Action: ActionSave, Node: typedNode}},
		{"request_update_full", Request{Action: ActionUpdate, Node: fullNode()}},
		{"request_delete_bare", Request{Action: ActionDelete, Node: Node{
			DC: "dc1", Service: "room", NID: "room-p4Lm0a", RPC: RPC{Protocol: "nats-grpc", Addr: "nats://nats:4222"}}}},
		// ion's Get("*", {}) sends an empty, non-nil Params map, which gob does transmit and
		// Go decodes as {}; a codec that cannot tell nil from empty shows null. The vector
		// leaves Params nil so that both views agree.
		{"request_get_all", Request{Action: ActionGet, Service: "*"}},
		{"request_get_rtc", Request{Action: ActionGet, Service: "rtc"}},
		{"request_get_rtc_params", Request{Action: ActionGet, Service: "rtc", Params: map[string]interface{}{
			"sid": "room-7", "uid": "peer-3", "nid": "*", "content-type": "application/grpc"}}},
		{"request_get_params_typed", Request{Action: ActionGet, Service: "rtc", Params: everyType(1)}},
		{"response_ok", Response{Success: true}},
		{"response_rejected", Response{Success: false, Reason: "service \"rtc\" is not accepted here"}},
		{"response_zero", Response{}},
		{"getresponse_empty", GetResponse{}},
		{"getresponse_one", GetResponse{Nodes: []Node{plainSFU("sfu-7Hq2xZ")}}},
		{"getresponse_three", GetResponse{Nodes: []Node{
			plainSFU("sfu-7Hq2xZ"),
			fullNode(),
			{DC: "dc1", Service: "signal", NID: "signal-Q9rT1c", RPC: RPC{Protocol: "grpc", Addr: "127.0.0.1:5551"}},
		}}},
		{"getresponse_typed", GetResponse{Nodes: []Node{
			{DC: "dc2", Service: "rtc", NID: "sfu-typed-2", RPC: RPC{Protocol: "nats-grpc", Addr: "nats://127.0.0.1:4222"},
				ExtraInfo: everyType(2)},
			plainSFU("sfu-7Hq2xZ"),
		}}},
	}
}

func runVectors(args []string) int {
	dir, ok := outputDir("vectors", args)
	if !ok {
		return 2
	}
	for _, v := range gobVectors() {
		if err := writeGobVector(dir, v); err != nil {
			fatalf("%s: %v", v.name, err)
		}
	}
	fmt.Fprintf(stdout, "wrote %d gob vectors to %s\n", len(gobVectors()), dir)
	return 0
}

func writeGobVector(dir string, v gobVector) error {
	kind := map[string]string{"main.Request": "request", "main.Response": "response", "main.GetResponse": "getresponse"}[fmt.Sprintf("%T", v.value)]
	data, err := encodeFresh(kind, v.value)
	if err != nil {
		return err
	}
	// The JSON files show the value as Go decodes the bytes, which is what a decoder of
	// NAME.gob must produce; it must also be the value that was encoded.
	decoded, err := decodeMessage(kind, data, false)
	if err != nil {
		return fmt.Errorf("decoding our own bytes: %w", err)
	}
	files := map[string]interface{}{".json": decoded}
	if kind != "response" {
		typedDecoded, err := decodeMessage(kind, data, true)
		if err != nil {
			return err
		}
		typedValue, err := typedOf(kind, v.value)
		if err != nil {
			return err
		}
		a, _ := json.Marshal(typedDecoded)
		b, _ := json.Marshal(typedValue)
		if !bytes.Equal(a, b) {
			return fmt.Errorf("gob changed the value:\n  sent %s\n  got  %s", b, a)
		}
		files[".typed.json"] = typedDecoded
	}
	if err := os.WriteFile(filepath.Join(dir, v.name+".gob"), data, 0o644); err != nil {
		return err
	}
	for ext, val := range files {
		text, err := json.MarshalIndent(val, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, v.name+ext), append(text, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// encodeFresh encodes v in a new process ("gopeer encode"), so that every vector holds
// what a fresh Go process writes: gob numbers types per process, from 65 on, so in one
// process the later vectors would carry other type ids than a lone message does.
func encodeFresh(kind string, v interface{}) ([]byte, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	in := v
	args := []string{"encode", kind}
	if kind != "response" {
		if in, err = typedOf(kind, v); err != nil {
			return nil, err
		}
		args = []string{"encode", "-typed", kind}
	}
	text, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdin = bytes.NewReader(text)
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("gopeer %v: %v: %s", args, err, errOut.String())
	}
	return out, nil
}

// typedOf is the typed JSON value of what was sent.
func typedOf(kind string, v interface{}) (interface{}, error) {
	if kind == "request" {
		return typedOfRequest(v.(Request))
	}
	return typedOfGetResponse(v.(GetResponse))
}

// outputDir reads the one DIR argument of a generating command and creates it; false
// after a usage error.
func outputDir(command string, args []string) (string, bool) {
	fs := newFlags(command, "DIR")
	fs.Parse(args)
	if fs.NArg() != 1 {
		fs.Usage()
		return "", false
	}
	dir := fs.Arg(0)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fatalf("%v", err)
	}
	return dir, true
}
