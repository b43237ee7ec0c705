package main

// The discovery wire types, declared as ion's nats-discovery v0.3.0 declares them.
//
// gob matches struct fields by name and sends each type's name with its definition, so
// the type names (Request, Node, RPC, Response, GetResponse, and []main.Node for the
// node list), the field names, their Go types and their order are all part of the wire
// format. Keep this file in step with the protocol, never with convenience.

import (
	"bytes"
	"encoding/gob"
	"fmt"
)

// RPC says how to reach a node: Protocol is "grpc", "nats-grpc" or "json-rpc".
type RPC struct {
	Protocol string
	Addr     string
	Params   map[string]string
}

// Node is one registered node; its key is DC + "." + NID.
type Node struct {
	DC        string
	Service   string
	NID       string
	RPC       RPC
	ExtraInfo map[string]interface{}
}

// ID is the node's key in the registry.
func (n Node) ID() string { return n.DC + "." + n.NID }

// Request is every message a node sends to the registry (save, update, delete, get), and
// every event the registry publishes.
type Request struct {
	Action  string
	Node    Node
	Service string
	Params  map[string]interface{}
}

// Response answers save, update and delete.
type Response struct {
	Success bool
	Reason  string
}

// GetResponse answers get.
type GetResponse struct {
	Nodes []Node
}

// The actions of the protocol.
const (
	ActionSave   = "save"
	ActionUpdate = "update"
	ActionDelete = "delete"
	ActionGet    = "get"
)

func init() {
	// What a Go ion node registers before it puts lists or maps into ExtraInfo or Params;
	// without it gob refuses to send them.
	gob.Register([]interface{}{})
	gob.Register(map[string]interface{}{})
}

// encodeGob writes v with a fresh encoder, as nats-discovery does for every message: the
// bytes carry their own type definitions.
func encodeGob(v interface{}) ([]byte, error) {
	var b bytes.Buffer
	if err := gob.NewEncoder(&b).Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// mustGob is encodeGob for values this program builds itself.
func mustGob(v interface{}) []byte {
	b, err := encodeGob(v)
	if err != nil {
		panic(fmt.Sprintf("gob encoding %T: %v", v, err))
	}
	return b
}

// decodeGob reads one value into v with a fresh decoder.
func decodeGob(data []byte, v interface{}) error {
	return gob.NewDecoder(bytes.NewReader(data)).Decode(v)
}

// nodeSubject is where a node's save, update and delete go.
func nodeSubject(n Node) string {
	return "node.publish." + n.Service + "." + n.DC + "." + n.NID
}

// getSubject is where a get for service goes ("*" is sent literally).
func getSubject(service string) string { return "node.publish." + service }

// eventSubject is where the registry publishes a node's events.
func eventSubject(n Node) string {
	return "node.discovery." + n.Service + "." + n.DC + "." + n.NID
}

// watchSubject is what a watcher of service subscribes to ("*" means every service).
func watchSubject(service string) string {
	if service == "" || service == "*" {
		return "node.discovery.>"
	}
	return "node.discovery." + service + ".>"
}

// gobEncoder is a fresh encoder on w.
func gobEncoder(w *bytes.Buffer) *gob.Encoder { return gob.NewEncoder(w) }
