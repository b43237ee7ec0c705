package main

// nrpc-vectors: golden nats-grpc frames, built field by field with protowire following
// the nrpc.proto schema (package nrpc):
//
//	Request  { oneof type { Call call = 2; Data data = 3; End end = 4; } }
//	Response { oneof type { Begin begin = 2; Data data = 3; End end = 4; } }
//	Call     { string method = 1; Metadata metadata = 2; string nid = 3; }
//	Begin    { Metadata header = 1; string nid = 2; }
//	Data     { bytes data = 1; }
//	End      { google.rpc.Status status = 1; Metadata trailer = 2; }
//	Metadata { map<string, Strings> md = 1; }   entry { string key = 1; Strings value = 2; }
//	Strings  { repeated string values = 1; }
//	google.rpc.Status { int32 code = 1; string message = 2; repeated Any details = 3; }
//
// and grpc.reflection.v1alpha:
//
//	ServerReflectionRequest  { string host = 1; oneof { ... string list_services = 7; } }
//	ServerReflectionResponse { string valid_host = 1; ServerReflectionRequest original_request = 2;
//	                           oneof { ... ListServiceResponse list_services_response = 6; ... } }
//	ListServiceResponse { repeated ServiceResponse service = 1; }   ServiceResponse { string name = 1; }
//
// Fields are written in field-number order, proto3 defaults are left out, and a message
// field is written whenever it is present, even empty (End{} is 22 00): presence is
// what tells a half-close from a cancel and a success from an error.

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"google.golang.org/protobuf/encoding/protowire"
)

// pb builds one message.
type pb []byte

func (m pb) str(num protowire.Number, s string) pb {
	if s == "" {
		return m
	}
	m = protowire.AppendTag(m, num, protowire.BytesType)
	return protowire.AppendString(m, s)
}

func (m pb) bytes(num protowire.Number, b []byte) pb {
	if len(b) == 0 {
		return m
	}
	m = protowire.AppendTag(m, num, protowire.BytesType)
	return protowire.AppendBytes(m, b)
}

// msg writes a present sub-message (nil means absent).
func (m pb) msg(num protowire.Number, sub pb) pb {
	if sub == nil {
		return m
	}
	m = protowire.AppendTag(m, num, protowire.BytesType)
	return protowire.AppendBytes(m, sub)
}

func (m pb) varint(num protowire.Number, v uint64) pb {
	if v == 0 {
		return m
	}
	m = protowire.AppendTag(m, num, protowire.VarintType)
	return protowire.AppendVarint(m, v)
}

// present is an empty but present message.
var present = pb{}

// metadata is nrpc.Metadata, keys sorted (Go marshals map entries in random order, so
// a one-entry map is the only deterministic golden form).
func metadata(md map[string][]string) pb {
	if md == nil {
		return nil
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	m := pb{}
	for _, k := range keys {
		values := pb{}
		for _, v := range md[k] {
			values = protowire.AppendTag(values, 1, protowire.BytesType)
			values = protowire.AppendString(values, v)
		}
		entry := pb{}.str(1, k).msg(2, values)
		m = m.msg(1, entry)
	}
	return m
}

func call(method string, md map[string][]string, nid string) pb {
	return pb{}.str(1, method).msg(2, metadata(md)).str(3, nid)
}

func begin(header pb, nid string) pb { return pb{}.msg(1, header).str(2, nid) }

func data(b []byte) pb { return pb{}.bytes(1, b) }

func end(status, trailer pb) pb { return pb{}.msg(1, status).msg(2, trailer) }

// rpcStatus is google.rpc.Status without details.
func rpcStatus(code uint64, message string) pb { return pb{}.varint(1, code).str(2, message) }

// The oneof arms: the same numbers in Request (call/data/end) and Response (begin/data/end).
func requestCall(c pb) pb   { return pb{}.msg(2, c) }
func requestData(d pb) pb   { return pb{}.msg(3, d) }
func requestEnd(e pb) pb    { return pb{}.msg(4, e) }
func responseBegin(b pb) pb { return pb{}.msg(2, b) }
func responseData(d pb) pb  { return pb{}.msg(3, d) }
func responseEnd(e pb) pb   { return pb{}.msg(4, e) }

type nrpcVector struct {
	name  string
	bytes pb
}

func nrpcVectors() []nrpcVector {
	kv := map[string][]string{"k": {"v"}}
	// grpc.reflection.v1alpha ServerReflectionRequest{list_services: "*"}.
	listServices := pb{}.str(7, "*")
	services := pb{}
	for _, name := range []string{"grpc.reflection.v1alpha.ServerReflection", "islb.ISLB"} {
		services = services.msg(1, pb{}.str(1, name))
	}
	// ServerReflectionResponse{original_request, list_services_response}.
	listServicesResponse := pb{}.msg(2, listServices).msg(6, services)
	// A bare gRPC message, StringValue{value: "1"}.
	one := pb{}.str(1, "1")
	return []nrpcVector{
		{"request_call", requestCall(call("/islb.ISLB/FindNode", kv, "islb-1"))},
		{"request_call_unary_go", requestCall(call("/islb.ISLB/FindNode", nil, ""))},
		{"request_call_stream_go", requestCall(call("nrpc.islb-1.islb.ISLB.WatchISLBEvent", nil, "signal-1"))},
		{"request_data", requestData(data(one))},
		{"request_end_halfclose", requestEnd(end(nil, nil))},
		{"request_end_status0", requestEnd(end(rpcStatus(0, ""), nil))},
		{"response_begin", responseBegin(begin(present, "islb-1"))},
		{"response_begin_header", responseBegin(begin(metadata(kv), "islb-1"))},
		{"response_data", responseData(data(one))},
		{"response_data_empty", responseData(data(nil))},
		{"response_end_not_found", responseEnd(end(rpcStatus(5, "not found"), nil))},
		{"response_end_ok", responseEnd(end(nil, nil))},
		{"response_end_ok_trailer", responseEnd(end(nil, metadata(map[string][]string{"t": {"1"}})))},
		{"response_end_unimplemented", responseEnd(end(rpcStatus(12, "Unimplemented"), nil))},
		{"refl_list_services_request_msg", listServices},
		{"refl_list_services_response_msg", listServicesResponse},
		{"refl_request_call", requestCall(call(
			"nrpc.islb-1.grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo", nil, "signal-1"))},
		{"refl_request_data", requestData(data(listServices))},
		{"refl_response_data", responseData(data(listServicesResponse))},
	}
}

func runNrpcVectors(args []string) int {
	dir, ok := outputDir("nrpc-vectors", args)
	if !ok {
		return 2
	}
	vs := nrpcVectors()
	for _, v := range vs {
		path := filepath.Join(dir, v.name+".hex")
		if err := os.WriteFile(path, []byte(hex.EncodeToString(v.bytes)), 0o644); err != nil {
			fatalf("%v", err)
		}
	}
	fmt.Fprintf(stdout, "wrote %d nats-grpc vectors to %s\n", len(vs), dir)
	return 0
}
