// Writes the gob vectors of a newer Go peer: the discovery types with fields islb does not
// know (interleaved with the known ones, of every wire kind: struct, map, slice, array,
// scalars), encoded by Go's encoding/gob with a fresh encoder per message as
// nats-discovery does. islb must decode the fields it knows and skip the rest, as Go does.
//
// Regenerate (from the workspace root; Go 1.19 or later, standard library only):
//
//	go run crates/gob/tests/go/newer_peer.go crates/gob/tests/vectors
package main

import (
	"bytes"
	"encoding/gob"
	"fmt"
	"os"
	"path/filepath"
)

type Hop struct {
	Via  string
	Cost [2]int32
}

type RPC struct {
	Protocol string
	Retries  int64 // unknown to islb
	Addr     string
	Params   map[string]string
	Backoff  [3]float64 // unknown: an array
}

type Node struct {
	DC        string
	Zone      string // unknown, between two known fields
	Service   string
	Weights   map[string]int64 // unknown: a map
	NID       string
	RPC       RPC
	Tags      []string // unknown: a slice
	ExtraInfo map[string]interface{}
	Checksum  [4]byte // unknown: a byte array
	Route     []Hop   // unknown: a slice of structs holding arrays
	Healthy   bool    // unknown
}

type Request struct {
	Action  string
	Trace   [2]uint64 // unknown
	Node    Node
	Service string
	Params  map[string]interface{}
	Meta    struct {
		Origin string
		Depth  int
	} // unknown: an anonymous struct
}

type GetResponse struct {
	Total int // unknown
	Nodes []Node
}

func node(nid string) Node {
	return Node{
		DC: "dc1", Zone: "eu-west-1a", Service: "rtc", NID: nid,
		Weights: map[string]int64{"cpu": 3, "net": -2},
		RPC: RPC{Protocol: "nats-grpc", Retries: 4, Addr: "nats://10.0.0.7:4222",
			Params: map[string]string{"k": "v"}, Backoff: [3]float64{0.5, 1, 2}},
		Tags:      []string{"gpu", "edge"},
		ExtraInfo: map[string]interface{}{"load": 0.25, "sessions": int64(7)},
		Checksum:  [4]byte{0xde, 0xad, 0xbe, 0xef},
		Route:     []Hop{{Via: "a", Cost: [2]int32{1, -1}}, {Via: "b"}},
		Healthy:   true,
	}
}

func write(dir, name string, v interface{}) {
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(v); err != nil {
		panic(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644); err != nil {
		panic(err)
	}
	fmt.Println("wrote", name, buf.Len(), "bytes")
}

func main() {
	dir := os.Args[1]
	req := Request{Action: "update", Trace: [2]uint64{1 << 63, 42}, Node: node("sfu-9"), Service: "rtc",
		Params: map[string]interface{}{"sid": "room-1"}}
	req.Meta.Origin = "newer-peer"
	req.Meta.Depth = 3
	write(dir, "newer_peer_request.gob", &req)
	write(dir, "newer_peer_getresponse.gob", &GetResponse{Total: 2, Nodes: []Node{node("sfu-1"), node("sfu-2")}})
}
