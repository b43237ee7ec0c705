package main

// decode and encode: Go's own gob decoding and encoding of one message, as JSON.

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
)

const codecArgs = "request|response|getresponse"

func runDecode(args []string) int {
	fs := newFlags("decode", codecArgs+"  < msg.gob")
	typedOut := fs.Bool("typed", false, `typed JSON: every interface{} value as {"$type","$value"}`)
	fs.Parse(args)
	kind := codecKind(fs)
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fatalf("reading stdin: %v", err)
	}
	out, err := decodeMessage(kind, data, *typedOut)
	if err != nil {
		fatalf("%v", err)
	}
	b, err := json.Marshal(out)
	if err != nil {
		fatalf("json: %v", err)
	}
	stdout.Write(append(b, '\n'))
	return 0
}

func runEncode(args []string) int {
	fs := newFlags("encode", codecArgs+"  < msg.json")
	typedIn := fs.Bool("typed", false, `typed JSON: every interface{} value as {"$type","$value"}`)
	fs.Parse(args)
	kind := codecKind(fs)
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fatalf("reading stdin: %v", err)
	}
	v, err := messageOfJSON(kind, data, *typedIn)
	if err != nil {
		fatalf("%v", err)
	}
	b, err := encodeGob(v)
	if err != nil {
		fatalf("gob: %v", err)
	}
	stdout.Write(b)
	return 0
}

func codecKind(fs *flag.FlagSet) string {
	if fs.NArg() != 1 {
		fs.Usage()
		os.Exit(2)
	}
	switch k := fs.Arg(0); k {
	case "request", "response", "getresponse":
		return k
	default:
		fatalf("unknown message kind %q (want %s)", k, codecArgs)
	}
	return ""
}

// decodeMessage decodes gob bytes of kind and returns what to print as JSON.
func decodeMessage(kind string, data []byte, typedOut bool) (interface{}, error) {
	switch kind {
	case "request":
		var r Request
		if err := decodeGob(data, &r); err != nil {
			return nil, fmt.Errorf("gob: %w", err)
		}
		if typedOut {
			return typedOfRequest(r)
		}
		return r, nil
	case "getresponse":
		var g GetResponse
		if err := decodeGob(data, &g); err != nil {
			return nil, fmt.Errorf("gob: %w", err)
		}
		if typedOut {
			return typedOfGetResponse(g)
		}
		return g, nil
	default:
		var r Response
		if err := decodeGob(data, &r); err != nil {
			return nil, fmt.Errorf("gob: %w", err)
		}
		return r, nil
	}
}

// messageOfJSON builds the Go value of kind from (typed) JSON.
func messageOfJSON(kind string, data []byte, typedIn bool) (interface{}, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	switch {
	case kind == "response":
		var r Response
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, fmt.Errorf("json: %w", err)
		}
		return r, nil
	case !typedIn && kind == "request":
		var r Request
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, fmt.Errorf("json: %w", err)
		}
		return r, nil
	case !typedIn:
		var g GetResponse
		if err := json.Unmarshal(data, &g); err != nil {
			return nil, fmt.Errorf("json: %w", err)
		}
		return g, nil
	case kind == "request":
		var t typedRequest
		if err := dec.Decode(&t); err != nil {
			return nil, fmt.Errorf("json: %w", err)
		}
		return requestOfTyped(t)
	default:
		var t typedGetResponse
		if err := dec.Decode(&t); err != nil {
			return nil, fmt.Errorf("json: %w", err)
		}
		return getResponseOfTyped(t)
	}
}
